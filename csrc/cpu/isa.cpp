// The CPU's instruction-set level, capped by AECOMP_CPU_ISA, decided once (see isa.h).
#include "isa.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <cctype>
#include <cstdlib>
#include <string>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define AECOMP_ISA_X86 1
#else
#define AECOMP_ISA_X86 0
#endif

namespace aecomp {
namespace cpu {
namespace {

struct Hardware {
  IsaLevel level = IsaLevel::Generic;
  bool vnni = false, bf16 = false, amx_tile = false, amx_int8 = false, amx_bf16 = false;
};

// __builtin_cpu_supports also checks that the OS saves the registers (XCR0): AVX-512 state for
// the avx512 features, the tile state for AMX (Linux >= 5.16).
Hardware detect() {
  Hardware h;
#if AECOMP_ISA_X86
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c") && __builtin_cpu_supports("bmi") &&
                    __builtin_cpu_supports("bmi2");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  h.vnni = avx512 && __builtin_cpu_supports("avx512vnni");
  h.bf16 = avx512 && __builtin_cpu_supports("avx512bf16");
  h.amx_tile = avx512 && __builtin_cpu_supports("amx-tile");
  h.amx_int8 = h.amx_tile && __builtin_cpu_supports("amx-int8");
  h.amx_bf16 = h.amx_tile && __builtin_cpu_supports("amx-bf16");
  h.level = h.amx_int8 && h.amx_bf16 ? IsaLevel::Amx
            : avx512                 ? IsaLevel::Avx512
            : avx2                   ? IsaLevel::Avx2
                                     : IsaLevel::Generic;
#endif
  return h;
}

const Hardware& hardware() {
  static const Hardware h = detect();
  return h;
}

struct Choice {
  IsaLevel level = IsaLevel::Generic;
  std::string error;  // non-empty: AECOMP_CPU_ISA was refused
};

Choice choose() {
  Choice c;
  c.level = hardware().level;
  const char* cap = std::getenv("AECOMP_CPU_ISA");
  if (cap == nullptr) return c;
  IsaLevel want;
  if (!parse_isa_level(cap, &want)) {
    c.error = std::string("AECOMP_CPU_ISA='") + cap +
              "' is not an instruction-set level; use one of generic, avx2, avx512, amx (any case), or unset it";
    return c;
  }
  c.level = min_level(c.level, want);
  return c;
}

const Choice& choice() {
  static const Choice c = choose();
  return c;
}

std::atomic<uint64_t> g_runs[kIsaLevels];

}  // namespace

bool parse_isa_level(const char* text, IsaLevel* out) {
  std::string s(text);
  for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  for (int i = 0; i < kIsaLevels; ++i) {
    if (s == isa_level_name(static_cast<IsaLevel>(i))) {
      *out = static_cast<IsaLevel>(i);
      return true;
    }
  }
  return false;
}

IsaLevel isa_level() {
  const Choice& c = choice();
  TORCH_CHECK_VALUE(c.error.empty(), c.error);
  return c.level;
}

IsaLevel hardware_isa_level() { return hardware().level; }

bool isa_hardware_has(IsaFeature f) {
  const Hardware& h = hardware();
  switch (f) {
    case IsaFeature::Avx512Vnni: return h.vnni;
    case IsaFeature::Avx512Bf16: return h.bf16;
    case IsaFeature::AmxTile: return h.amx_tile;
    case IsaFeature::AmxInt8: return h.amx_int8;
    case IsaFeature::AmxBf16: return h.amx_bf16;
  }
  return false;
}

bool isa_has(IsaFeature f) {
  const IsaLevel need = (f == IsaFeature::Avx512Vnni || f == IsaFeature::Avx512Bf16) ? IsaLevel::Avx512 : IsaLevel::Amx;
  return isa_hardware_has(f) && isa_level() >= need;
}

const char* isa_level_name(IsaLevel level) {
  switch (level) {
    case IsaLevel::Amx: return "amx";
    case IsaLevel::Avx512: return "avx512";
    case IsaLevel::Avx2: return "avx2";
    default: return "generic";
  }
}

void isa_count(IsaLevel level) { g_runs[static_cast<int>(level)].fetch_add(1, std::memory_order_relaxed); }

uint64_t isa_runs(IsaLevel level) { return g_runs[static_cast<int>(level)].load(std::memory_order_relaxed); }

void isa_reset_counts() {
  for (auto& r : g_runs) r.store(0, std::memory_order_relaxed);
}

}  // namespace cpu
}  // namespace aecomp
