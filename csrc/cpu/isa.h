// Which instruction-set level the CPU kernels run: decided ONCE per process, capped by the
// environment variable AECOMP_CPU_ISA, and the one place every ISA-dispatched function asks.
//
// ---------------------------------------------------------------------------- the levels
// Ordered; each includes the ones below it:
//   generic  baseline x86-64 (or any CPU): plain C++ loops
//   avx2     AVX2 + FMA (+ F16C, BMI1/2)
//   avx512   AVX-512 F/BW/DQ/VL (+ the avx2 level)
//   amx      AMX tiles (TILE + BF16 + INT8) usable by this process's OS (+ the avx512 level)
// hardware_isa_level() is the highest level this CPU (and OS) supports. isa_level() is that,
// capped by AECOMP_CPU_ISA (never raised above the hardware): AECOMP_CPU_ISA=avx2 on an
// AVX-512 machine runs the AVX2 code of every kernel, so one machine tests every path and a
// user can rule out a level. Names are case-insensitive ("AVX2" = "avx2"); unset means no
// cap. Any other value ("avx-2", "", "avx2 ": no trimming) is refused: isa_level() throws c10::ValueError with one line naming
// the variable, the value and the accepted names (every kernel call then raises the same).
//
// Features inside a level (isa_has): an extension a kernel may use only when the CPU has it
// AND the cap allows its level, so a cap never lets a higher level's instruction through:
//   Avx512Vnni, Avx512Bf16   need level >= avx512 (vpdpbusd; vdpbf16ps)
//   AmxTile, AmxInt8, AmxBf16   need level >= amx
// (e.g. AECOMP_CPU_ISA=avx512 on a Sapphire Rapids machine: VNNI yes, AMX no, as on Zen 4.)
//
// ---------------------------------------------------------------------------- counting
// Every dispatched call records the level of the code it ran: isa_count(level) (one relaxed
// atomic add, called where the dispatch picks the variant, not per element). isa_runs(level)
// reads it, isa_reset_counts() zeroes all. Python: aecomp._C._cpu_isa_runs() -> {name: n},
// aecomp._C._cpu_isa_reset(); `aecomp info` prints the level. A test runs every op under each
// cap and checks that only that level's counter moved (tests/test_cpu_isa.py).
//
// ---------------------------------------------------------------------------- using it
//   #include "isa.h"
//   using aecomp::cpu::IsaLevel;
//   if (aecomp::cpu::isa_has(aecomp::cpu::IsaFeature::AmxBf16)) { ...; isa_count(IsaLevel::Amx); }
//   else if (aecomp::cpu::isa_level() >= IsaLevel::Avx512) { ...; isa_count(IsaLevel::Avx512); }
// Decide once (at the first call, e.g. a function-local static) and keep the answer: the level
// never changes within a process. Code that is compiled per level with the microkernel
// framework dispatches through AECOMP_MK_DISPATCH (microkernel.h), which counts for you.
// Torch-free header (the definitions in isa.cpp use c10 only for the error).
#pragma once

#include <cstdint>

namespace aecomp {
namespace cpu {

enum class IsaLevel : int { Generic = 0, Avx2 = 1, Avx512 = 2, Amx = 3 };
constexpr int kIsaLevels = 4;

enum class IsaFeature : int { Avx512Vnni, Avx512Bf16, AmxTile, AmxInt8, AmxBf16 };

// The level every dispatched kernel uses (hardware capped by AECOMP_CPU_ISA). Throws
// c10::ValueError (one line) when AECOMP_CPU_ISA holds an unknown name.
IsaLevel isa_level();
// The highest level this CPU and OS support, ignoring AECOMP_CPU_ISA. Never throws.
IsaLevel hardware_isa_level();
// True when the CPU has `f` and isa_level() is at least the level `f` belongs to.
bool isa_has(IsaFeature f);
// True when the CPU has `f`, whatever the cap (for `aecomp info`).
bool isa_hardware_has(IsaFeature f);

// "generic" | "avx2" | "avx512" | "amx"
const char* isa_level_name(IsaLevel level);
// Parses a level name, case-insensitively; false when `text` is not one (no exception).
bool parse_isa_level(const char* text, IsaLevel* out);

// Records that a dispatched function ran code of `level`; read back by isa_runs.
void isa_count(IsaLevel level);
uint64_t isa_runs(IsaLevel level);
void isa_reset_counts();

// (IsaLevel compares with < and >= directly: a scoped enum's built-in ordering is the level's.)
inline IsaLevel min_level(IsaLevel a, IsaLevel b) { return a < b ? a : b; }

}  // namespace cpu
}  // namespace aecomp
