// Compiles an ISA-generic body once per ISA (no include guard: include it once per body).
//
//   #define AECOMP_MK_BODY "my_loaders.inc"   // code written against V, Tile, accumulate, ...
//   #include "microkernel_foreach.h"
//
// puts the body in namespaces aecomp::cpu::mk::avx512, ::avx2 (each under its `#pragma GCC
// target`) and ::generic, after that namespace's struct V and the framework body. The body
// file must not include headers (include them before) and should define only inline
// functions, templates and types (it is compiled in every translation unit that includes it).
// Every function in it gets its ISA's target, so intrinsics wrapped by V inline correctly.
#ifndef AECOMP_MK_BODY
#error "define AECOMP_MK_BODY before including microkernel_foreach.h"
#endif

#if AECOMP_MK_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c,bmi,bmi2")
namespace aecomp {
namespace cpu {
namespace mk {
namespace avx512 {
#include AECOMP_MK_BODY
}  // namespace avx512
}  // namespace mk
}  // namespace cpu
}  // namespace aecomp
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi,bmi2")
namespace aecomp {
namespace cpu {
namespace mk {
namespace avx2 {
#include AECOMP_MK_BODY
}  // namespace avx2
}  // namespace mk
}  // namespace cpu
}  // namespace aecomp
#pragma GCC pop_options
#endif

namespace aecomp {
namespace cpu {
namespace mk {
namespace generic {
#include AECOMP_MK_BODY
}  // namespace generic
}  // namespace mk
}  // namespace cpu
}  // namespace aecomp

#undef AECOMP_MK_BODY
