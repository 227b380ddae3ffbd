// Runs the real CUDA kernel source (linear_act.cu, mse.cu) on the CPU emulator of emulator.h
// and checks every result against a float64 reference. Built and run by
// tests/test_cuda_compile.py; by hand:
//
//   g++ -std=c++17 -O1 -DAECOMP_EMULATE -I/usr/local/cuda/include
//       csrc/cuda/harness/emulate_kernels.cpp -o /tmp/emu  &&  /tmp/emu [--early] [--quick] [--seed N]
//
// Test data are small multiples of 1/4 (and gate values whose derivatives are exact in bf16),
// so every product and every fp32 partial sum is exact whatever the summation order: the
// kernels must then reproduce the reference rounded once to the output dtype, bit for bit
// (only the forward sigmoid is compared with a tolerance). A wrong fragment layout, a lost
// edge element or a stage read before it landed cannot hide behind a tolerance.
//
// Every input and output buffer ends at a PROT_NONE page, so a read or write past the end of
// an operand crashes the harness; outputs start as NaN so an element never written shows.
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../linear_act.cu"
#include "../mse.cu"
#include "../device_info.cu"

using namespace aecomp_cuda;

namespace {

int g_failures = 0;
int g_checks = 0;
std::mt19937 g_rng(1234);

// ---------------------------------------------------------------- guarded memory
void* guarded(size_t bytes) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  bytes = (bytes + 15) / 16 * 16;
  const size_t data_pages = (bytes + page - 1) / page;
  const size_t len = (data_pages + 1) * page;
  void* base = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) {
    std::perror("mmap");
    std::exit(2);
  }
  unsigned char* guard = static_cast<unsigned char*>(base) + data_pages * page;
  mprotect(guard, page, PROT_NONE);
  return guard - bytes;  // 16-byte aligned, at most 15 bytes of slack before the guard page
}

template <typename T>
float to_f(T v) {
  return Num<T>::to_f(v);
}
template <typename T>
T from_f(float v) {
  return Num<T>::from_f(v);
}
template <typename T>
double round_to(double v) {  // what a kernel that computed v exactly stores
  return static_cast<double>(to_f<T>(from_f<T>(static_cast<float>(v))));
}

template <typename T>
T* fill_nan(T* p, size_t n) {
  for (size_t i = 0; i < n; ++i) p[i] = from_f<T>(NAN);
  return p;
}

// A host matrix view with arbitrary strides inside a guarded allocation.
enum class Layout { Contig, Padded8, Padded3, Round8, ColMajor, Offset1 };
const char* layout_name(Layout l) {
  switch (l) {
    case Layout::Contig: return "contig";
    case Layout::Padded8: return "pad8";
    case Layout::Padded3: return "pad3";
    case Layout::Round8: return "round8";
    case Layout::ColMajor: return "colmajor";
    default: return "offset1";
  }
}

template <typename T>
struct HMat {
  T* ptr = nullptr;
  int rows = 0, cols = 0;
  int64_t s0 = 0, s1 = 0;
  T& at(int r, int c) { return ptr[r * s0 + c * s1]; }
  double get(int r, int c) const { return to_f<T>(ptr[r * s0 + c * s1]); }
  Mat mat() const { return Mat{ptr, s0, s1}; }
};

// vals: the value set to draw from.
template <typename T>
HMat<T> make_mat(int rows, int cols, Layout l, const std::vector<float>& vals) {
  HMat<T> m;
  m.rows = rows, m.cols = cols;
  int64_t off = 0;
  switch (l) {
    case Layout::Contig: m.s0 = cols, m.s1 = 1; break;
    case Layout::Padded8: m.s0 = cols + 8, m.s1 = 1; break;
    case Layout::Padded3: m.s0 = cols + 3, m.s1 = 1; break;
    case Layout::Round8: m.s0 = (cols + 7) / 8 * 8, m.s1 = 1; break;
    case Layout::ColMajor: m.s0 = 1, m.s1 = rows; break;
    case Layout::Offset1: m.s0 = cols, m.s1 = 1, off = 1; break;
  }
  const int64_t span = rows > 0 && cols > 0 ? (rows - 1) * m.s0 + (cols - 1) * m.s1 + 1 : 0;
  T* base = static_cast<T*>(guarded(static_cast<size_t>(span + off + 1) * sizeof(T)));
  fill_nan(base, static_cast<size_t>(span + off + 1));
  m.ptr = base + off;
  std::uniform_int_distribution<size_t> pick(0, vals.size() - 1);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) m.at(r, c) = from_f<T>(vals[pick(g_rng)]);
  return m;
}

const std::vector<float> kVals = {-1.f, -0.5f, -0.25f, 0.f, 0.25f, 0.5f, 1.f};
// Output values for the gate: relu' = [not y <= 0] and sigmoid' = y (1 - y) are exact in bf16/fp16.
const std::vector<float> kYVals = {-0.5f, 0.f, 0.25f, 0.5f, 1.f};

template <typename T>
void check(const std::string& what, const T* got, const std::vector<double>& want, bool exact, double tol) {
  ++g_checks;
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = to_f<T>(got[i]);
    const double w = exact ? round_to<T>(want[i]) : want[i];
    const bool ok = exact ? (g == w) : (std::fabs(g - w) <= tol * (1.0 + std::fabs(w)));
    if (!ok || std::isnan(g)) {
      std::printf("FAIL %s: element %zu = %.8g, expected %.8g\n", what.c_str(), i, g, w);
      ++g_failures;
      return;
    }
  }
}

template <typename T>
const char* tname() {
  return std::is_same<T, float>::value ? "f32" : std::is_same<T, __half>::value ? "f16" : "bf16";
}
template <typename T>
DType dtype() {
  return std::is_same<T, float>::value ? DType::F32 : std::is_same<T, __half>::value ? DType::F16 : DType::BF16;
}

double act_ref(int act, double z) {
  if (act == ACT_RELU) return z > 0 ? z : 0;
  if (act == ACT_SIGMOID) return 1.0 / (1.0 + std::exp(-z));
  return z;
}
double gate_ref(int act, double g, double y) {
  if (act == ACT_RELU) return y <= 0 ? 0 : g;  // torch's threshold_backward (a NaN y passes g)
  if (act == ACT_SIGMOID) return g * y * (1 - y);
  return g;
}

// Whether the tensor-core kernel must take these operands (the contract in aecomp_cuda.h).
template <typename T>
bool row_aligned_spec(const HMat<T>& m) {
  return m.s1 == 1 && m.s0 % 8 == 0 && reinterpret_cast<uintptr_t>(m.ptr) % 16 == 0;
}
template <typename T>
bool expect_tc(std::initializer_list<const HMat<T>*> ops) {
  if (std::is_same<T, float>::value || aecomp_emu::config().cc_major < 8 || std::getenv("AECOMP_CUDA_GEMM")) return false;
  for (const HMat<T>* m : ops)
    if (!row_aligned_spec(*m)) return false;
  return true;
}
void check_path(const std::string& what, long long mma_before, bool want_tc, bool ran) {
  if (!ran) return;
  ++g_checks;
  const bool used_tc = aecomp_emu::stats().mma > mma_before;
  if (used_tc != want_tc) {
    std::printf("FAIL %s: ran on the %s kernel, expected the %s kernel\n", what.c_str(), used_tc ? "tensor-core" : "SIMT",
                want_tc ? "tensor-core" : "SIMT");
    ++g_failures;
  }
}

// One linear_act case: forward, dgrad, and wgrad with each of (dW, db), (dW), (db).
template <typename T>
void linear_case(int M, int N, int K, int act, bool bias, Layout lx, Layout lw, Layout lg) {
  char buf[200];
  std::snprintf(buf, sizeof buf, "%s M=%d N=%d K=%d act=%d bias=%d x:%s w:%s g:%s sm=%d%s", tname<T>(), M, N, K, act,
                bias, layout_name(lx), layout_name(lw), layout_name(lg), aecomp_emu::config().sm_count,
                std::getenv("AECOMP_CUDA_GEMM") ? " simt" : "");
  const std::string name = buf;
  HMat<T> x = make_mat<T>(M, K, lx, kVals), w = make_mat<T>(N, K, lw, kVals);
  HMat<T> b = make_mat<T>(1, N, Layout::Contig, kVals);
  HMat<T> g = make_mat<T>(M, N, lg, kVals), y = make_mat<T>(M, N, lg, kYVals);

  // forward
  {
    T* out = fill_nan(static_cast<T*>(guarded(sizeof(T) * (static_cast<size_t>(M) * N + 1))), static_cast<size_t>(M) * N);
    const long long mma0 = aecomp_emu::stats().mma;
    const cudaError_t e = linear_act_forward(dtype<T>(), M, N, K, x.mat(), w.mat(), bias ? b.ptr : nullptr, act, out, nullptr);
    check_path("forward path " + name, mma0, expect_tc<T>({&x, &w}), M > 0 && N > 0 && K > 0);
    std::vector<double> want(static_cast<size_t>(M) * N);
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < N; ++n) {
        double z = bias ? b.get(0, n) : 0;
        for (int k = 0; k < K; ++k) z += x.get(m, k) * w.get(n, k);
        want[static_cast<size_t>(m) * N + n] = act_ref(act, z);
      }
    if (e != cudaSuccess) {
      std::printf("FAIL forward %s: error %d\n", name.c_str(), static_cast<int>(e));
      ++g_failures;
    } else {
      const double tol = std::is_same<T, float>::value ? 1e-6 : 8e-3;
      check<T>("forward " + name, out, want, act != ACT_SIGMOID, tol);
    }
  }
  std::vector<double> gz(static_cast<size_t>(M) * N);
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) gz[static_cast<size_t>(m) * N + n] = gate_ref(act, g.get(m, n), y.get(m, n));
  // dgrad
  {
    T* dx = fill_nan(static_cast<T*>(guarded(sizeof(T) * (static_cast<size_t>(M) * K + 1))), static_cast<size_t>(M) * K);
    const long long mma0 = aecomp_emu::stats().mma;
    const cudaError_t e = linear_act_dgrad(dtype<T>(), M, N, K, g.mat(), y.mat(), w.mat(), act, dx, nullptr);
    check_path("dgrad path " + name, mma0, act == ACT_NONE ? expect_tc<T>({&g, &w}) : expect_tc<T>({&g, &y, &w}),
               M > 0 && N > 0 && K > 0);
    std::vector<double> want(static_cast<size_t>(M) * K, 0.0);
    for (int m = 0; m < M; ++m)
      for (int k = 0; k < K; ++k) {
        double s = 0;
        for (int n = 0; n < N; ++n) s += gz[static_cast<size_t>(m) * N + n] * w.get(n, k);
        want[static_cast<size_t>(m) * K + k] = s;
      }
    if (e != cudaSuccess) {
      std::printf("FAIL dgrad %s: error %d\n", name.c_str(), static_cast<int>(e));
      ++g_failures;
    } else {
      check<T>("dgrad " + name, dx, want, true, 0);
    }
  }
  // wgrad
  std::vector<double> want_w(static_cast<size_t>(N) * K, 0.0), want_b(static_cast<size_t>(N), 0.0);
  for (int n = 0; n < N; ++n) {
    for (int m = 0; m < M; ++m) want_b[static_cast<size_t>(n)] += gz[static_cast<size_t>(m) * N + n];
    for (int k = 0; k < K; ++k) {
      double s = 0;
      for (int m = 0; m < M; ++m) s += gz[static_cast<size_t>(m) * N + n] * x.get(m, k);
      want_w[static_cast<size_t>(n) * K + k] = s;
    }
  }
  const bool needs[3][2] = {{true, true}, {true, false}, {false, true}};
  for (const auto& nd : needs) {
    const bool need_w = nd[0], need_b = nd[1];
    T* dw = need_w ? fill_nan(static_cast<T*>(guarded(sizeof(T) * (static_cast<size_t>(N) * K + 1))),
                              static_cast<size_t>(N) * K)
                   : nullptr;
    T* db = need_b ? fill_nan(static_cast<T*>(guarded(sizeof(T) * (static_cast<size_t>(N) + 1))), static_cast<size_t>(N))
                   : nullptr;
    const size_t ws_bytes =
        linear_act_wgrad_workspace(dtype<T>(), M, N, K, g.mat(), y.mat(), x.mat(), act, need_w, need_b);
    void* ws = ws_bytes ? fill_nan(static_cast<float*>(guarded(ws_bytes)), ws_bytes / 4) : nullptr;
    const long long mma0 = aecomp_emu::stats().mma;
    const cudaError_t e =
        linear_act_wgrad(dtype<T>(), M, N, K, g.mat(), y.mat(), x.mat(), act, dw, db, ws, ws_bytes, nullptr);
    check_path("wgrad path " + name, mma0, act == ACT_NONE ? expect_tc<T>({&g, &x}) : expect_tc<T>({&g, &y, &x}),
               need_w && M > 0 && N > 0 && K > 0);
    const std::string tag = std::string(need_w ? "W" : "") + (need_b ? "b" : "") + " ws=" + std::to_string(ws_bytes);
    if (e != cudaSuccess) {
      std::printf("FAIL wgrad[%s] %s: error %d\n", tag.c_str(), name.c_str(), static_cast<int>(e));
      ++g_failures;
      continue;
    }
    if (need_w) check<T>("wgrad[" + tag + "] dW " + name, dw, want_w, true, 0);
    if (need_b) check<T>("wgrad[" + tag + "] db " + name, db, want_b, true, 0);
  }
}

// ---------------------------------------------------------------- mse
template <typename T>
void mse_case(int64_t n, int offset, int reduction) {
  char buf[120];
  std::snprintf(buf, sizeof buf, "mse %s n=%lld off=%d red=%d sm=%d", tname<T>(), static_cast<long long>(n), offset,
                reduction, aecomp_emu::config().sm_count);
  const std::string name = buf;
  auto make = [&](const std::vector<float>& vals) {
    T* p = static_cast<T*>(guarded(sizeof(T) * static_cast<size_t>(n + offset + 1))) + offset;
    std::uniform_int_distribution<size_t> pick(0, vals.size() - 1);
    for (int64_t i = 0; i < n; ++i) p[i] = from_f<T>(vals[pick(g_rng)]);
    return p;
  };
  T* a = make(kVals);
  T* b = make(kVals);
  std::vector<double> d(static_cast<size_t>(n));
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    d[static_cast<size_t>(i)] = static_cast<double>(to_f<T>(a[i])) - to_f<T>(b[i]);
    sum += d[static_cast<size_t>(i)] * d[static_cast<size_t>(i)];
  }
  const bool is_f32 = std::is_same<T, float>::value;
  if (reduction == RED_NONE) {
    T* out = fill_nan(static_cast<T*>(guarded(sizeof(T) * static_cast<size_t>(n + offset + 1))) + offset, static_cast<size_t>(n));
    const cudaError_t e = mse_forward(dtype<T>(), n, a, b, reduction, out, nullptr, 0, nullptr);
    std::vector<double> want(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) want[static_cast<size_t>(i)] = d[static_cast<size_t>(i)] * d[static_cast<size_t>(i)];
    if (e != cudaSuccess) {
      std::printf("FAIL %s: error %d\n", name.c_str(), static_cast<int>(e));
      ++g_failures;
    } else {
      check<T>("forward " + name, out, want, true, 0);
    }
  } else {
    const size_t ws_bytes = mse_workspace(n);
    float* ws = fill_nan(static_cast<float*>(guarded(ws_bytes)), ws_bytes / 4);
    T* out = fill_nan(static_cast<T*>(guarded(sizeof(T))), 1);
    const cudaError_t e = mse_forward(dtype<T>(), n, a, b, reduction, out, ws, ws_bytes, nullptr);
    // sums of multiples of 1/16 are exact in fp32; the mean divides once in fp32
    const double want = reduction == RED_MEAN ? static_cast<double>(static_cast<float>(sum) / static_cast<float>(n)) : sum;
    if (e != cudaSuccess) {
      std::printf("FAIL %s: error %d\n", name.c_str(), static_cast<int>(e));
      ++g_failures;
    } else {
      check<T>("forward " + name, out, {want}, true, 0);
    }
  }
  // backward; for mean/sum the upstream gradient is a scalar
  const bool scalar = reduction != RED_NONE;
  T* g = make(scalar ? std::vector<float>{0.5f} : kVals);
  T* ga = fill_nan(static_cast<T*>(guarded(sizeof(T) * static_cast<size_t>(n + offset + 1))) + offset, static_cast<size_t>(n));
  T* gb = fill_nan(static_cast<T*>(guarded(sizeof(T) * static_cast<size_t>(n + 1))), static_cast<size_t>(n));
  const cudaError_t e = mse_backward(dtype<T>(), n, g, scalar, a, b, reduction, ga, gb, nullptr);
  const double s = reduction == RED_MEAN ? static_cast<double>(static_cast<float>(2.0 / static_cast<double>(n))) : 2.0;
  std::vector<double> wa(static_cast<size_t>(n)), wb(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const double gi = to_f<T>(scalar ? g[0] : g[i]);
    wa[static_cast<size_t>(i)] = s * d[static_cast<size_t>(i)] * gi;
    wb[static_cast<size_t>(i)] = -wa[static_cast<size_t>(i)];
  }
  if (e != cudaSuccess) {
    std::printf("FAIL backward %s: error %d\n", name.c_str(), static_cast<int>(e));
    ++g_failures;
  } else {
    const double tol = is_f32 ? 1e-6 : 8e-3;  // 2/n is rounded to fp32 first
    check<T>("backward da " + name, ga, wa, reduction != RED_MEAN, tol);
    check<T>("backward db " + name, gb, wb, reduction != RED_MEAN, tol);
  }
}

template <typename T>
void linear_suite(bool quick) {
  const int acts[3] = {ACT_NONE, ACT_RELU, ACT_SIGMOID};
  auto& cfg = aecomp_emu::config();
  // Tensor-core path, small tiles, edges in every dimension, all gates.
  cfg.sm_count = 4;
  for (int act : acts) linear_case<T>(37, 24, 40, act, true, Layout::Contig, Layout::Contig, Layout::Contig);
  // K not a multiple of 8 elements in W's rows -> SIMT for x/W; g stays aligned.
  linear_case<T>(19, 16, 13, ACT_RELU, false, Layout::Contig, Layout::Contig, Layout::Contig);
  // Rows padded to a multiple of 8 elements: tensor cores with partial 16-byte chunks at the
  // end of every row (K = 13, N = 10), which must read only the valid bytes.
  linear_case<T>(29, 10, 13, ACT_RELU, true, Layout::Round8, Layout::Round8, Layout::Round8);
  // Padded (aligned) rows stay on tensor cores; odd padding / column-major / offset go SIMT.
  linear_case<T>(33, 40, 48, ACT_SIGMOID, true, Layout::Padded8, Layout::Padded8, Layout::Padded8);
  linear_case<T>(21, 10, 24, ACT_RELU, true, Layout::Padded3, Layout::ColMajor, Layout::Offset1);
  linear_case<T>(9, 16, 16, ACT_NONE, true, Layout::Offset1, Layout::Contig, Layout::ColMajor);
  // Large tiles (9 tiles >= 4 SMs) and split-K wgrad (few tiles, long batch).
  linear_case<T>(260, 136, 72, ACT_RELU, true, Layout::Contig, Layout::Contig, Layout::Contig);
  linear_case<T>(700, 24, 16, ACT_SIGMOID, true, Layout::Contig, Layout::Contig, Layout::Contig);
  if (!quick) {
    // split-K on the large tiles, db via the split path, more k-steps than stages
    linear_case<T>(600, 136, 136, ACT_SIGMOID, true, Layout::Contig, Layout::Contig, Layout::Contig);
    cfg.sm_count = 1;
    linear_case<T>(1100, 136, 40, ACT_NONE, true, Layout::Contig, Layout::Contig, Layout::Contig);
    cfg.sm_count = 4;
    linear_case<T>(70, 72, 264, ACT_RELU, false, Layout::Contig, Layout::Contig, Layout::Contig);
    // degenerate sizes
    linear_case<T>(1, 1, 1, ACT_RELU, true, Layout::Contig, Layout::Contig, Layout::Contig);
    linear_case<T>(5, 8, 0, ACT_SIGMOID, true, Layout::Contig, Layout::Contig, Layout::Contig);
    linear_case<T>(0, 8, 8, ACT_RELU, true, Layout::Contig, Layout::Contig, Layout::Contig);
  }
}

// relu(NaN) is NaN (torch, the CPU and Triton kernels keep it): one NaN in x makes its row of y
// NaN through every epilogue (tensor-core and SIMT), the other rows stay exact.
template <typename T>
void relu_keeps_nan() {
  const int M = 3, N = 16, K = 24;
  for (const char* gemm : {"", "simt"}) {
    if (*gemm) setenv("AECOMP_CUDA_GEMM", gemm, 1);
    HMat<T> x = make_mat<T>(M, K, Layout::Contig, kVals), w = make_mat<T>(N, K, Layout::Contig, kVals);
    x.at(1, 5) = from_f<T>(NAN);
    T* y = fill_nan(static_cast<T*>(guarded(sizeof(T) * (M * N + 1))), M * N);
    for (int i = 0; i < M * N; ++i) y[i] = from_f<T>(7.f);
    const cudaError_t e = linear_act_forward(dtype<T>(), M, N, K, x.mat(), w.mat(), nullptr, ACT_RELU, y, nullptr);
    ++g_checks;
    bool ok = e == cudaSuccess;
    for (int m = 0; m < M && ok; ++m)
      for (int n = 0; n < N; ++n) {
        double z = 0;
        for (int k = 0; k < K; ++k) z += x.get(m, k) * w.get(n, k);
        const double got = to_f<T>(y[m * N + n]);
        if (m == 1 ? !std::isnan(got) : got != round_to<T>(act_ref(ACT_RELU, z))) ok = false;
      }
    if (!ok) {
      std::printf("FAIL relu keeps NaN %s%s: a NaN input did not give NaN (or another row changed)\n", tname<T>(),
                  *gemm ? " simt" : "");
      ++g_failures;
    }
    if (*gemm) unsetenv("AECOMP_CUDA_GEMM");
  }
}

// The mean/sum gives the same bits whatever the pointers' alignment (mse.cu's claim): the same
// random (inexact) values at a 16-byte aligned address and 1 or 3 elements past one.
void mse_bits_independent_of_alignment(int64_t n) {
  using T = float;
  // Squares 2^24 at every 4th element and 1 elsewhere: a 1 added to a running sum of 2^24 is
  // lost (half an ulp, ties to even) while 1s summed together first are kept, so any change of
  // which elements a thread sums, or in what order, changes the bits.
  std::vector<T> va(static_cast<size_t>(n)), vb(static_cast<size_t>(n), from_f<T>(0.f));
  for (int64_t i = 0; i < n; ++i) va[i] = from_f<T>(i % 4 == 0 ? 4096.f : 1.f);
  uint32_t bits[3] = {0, 0, 0};
  const int offsets[3] = {0, 1, 3};
  for (int j = 0; j < 3; ++j) {
    T* a = static_cast<T*>(guarded(sizeof(T) * static_cast<size_t>(n + 4))) + offsets[j];
    T* b = static_cast<T*>(guarded(sizeof(T) * static_cast<size_t>(n + 4))) + (offsets[j] ? 4 - offsets[j] : 0);
    std::memcpy(a, va.data(), sizeof(T) * static_cast<size_t>(n));
    std::memcpy(b, vb.data(), sizeof(T) * static_cast<size_t>(n));
    const size_t ws_bytes = mse_workspace(n);
    float* ws = static_cast<float*>(guarded(ws_bytes));
    float* out = static_cast<float*>(guarded(sizeof(float)));
    if (mse_forward(DType::F32, n, a, b, RED_SUM, out, ws, ws_bytes, nullptr) != cudaSuccess) bits[j] = 0xdeadbeef;
    else std::memcpy(&bits[j], out, 4);
  }
  ++g_checks;
  if (bits[0] != bits[1] || bits[0] != bits[2]) {
    std::printf("FAIL mse sum n=%lld: bits differ with alignment: %08x %08x %08x\n", static_cast<long long>(n), bits[0],
                bits[1], bits[2]);
    ++g_failures;
  }
}

void print_smem_table() {
  std::printf("shared memory per tensor-core kernel (bytes, bf16/fp16):\n");
  std::printf("  TcLarge fwd %zu  dgrad %zu (gated %zu)  wgrad %zu (gated %zu)\n",
              tc_smem_bytes<__half, TcLarge, Major::Red, Major::Red, false>(),
              tc_smem_bytes<__half, TcLarge, Major::Red, Major::Out, false>(),
              tc_smem_bytes<__half, TcLarge, Major::Red, Major::Out, true>(),
              tc_smem_bytes<__half, TcLarge, Major::Out, Major::Out, false>(),
              tc_smem_bytes<__half, TcLarge, Major::Out, Major::Out, true>());
  std::printf("  TcSmall fwd %zu  dgrad %zu (gated %zu)  wgrad %zu (gated %zu)\n",
              tc_smem_bytes<__half, TcSmall, Major::Red, Major::Red, false>(),
              tc_smem_bytes<__half, TcSmall, Major::Red, Major::Out, false>(),
              tc_smem_bytes<__half, TcSmall, Major::Red, Major::Out, true>(),
              tc_smem_bytes<__half, TcSmall, Major::Out, Major::Out, false>(),
              tc_smem_bytes<__half, TcSmall, Major::Out, Major::Out, true>());
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--early") == 0) aecomp_emu::config().late_copies = false;
    if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    if (std::strcmp(argv[i], "--seed") == 0 && i + 1 < argc) g_rng.seed(static_cast<unsigned>(std::strtoul(argv[++i], nullptr, 10)));
    if (std::strcmp(argv[i], "--smem") == 0) {
      print_smem_table();
      return 0;
    }
  }
  std::printf("cp.async copies land %s\n", aecomp_emu::config().late_copies ? "late (at wait_group)" : "early (at issue)");
  linear_suite<__nv_bfloat16>(quick);
  linear_suite<__half>(quick);
  linear_suite<float>(true);
  // bf16 through the SIMT kernel, forced the way the GPU tests force it
  setenv("AECOMP_CUDA_GEMM", "simt", 1);
  aecomp_emu::config().sm_count = 4;
  linear_case<__nv_bfloat16>(37, 24, 40, ACT_SIGMOID, true, Layout::Contig, Layout::Contig, Layout::Contig);
  linear_case<__nv_bfloat16>(260, 136, 72, ACT_RELU, true, Layout::Contig, Layout::Contig, Layout::Contig);
  unsetenv("AECOMP_CUDA_GEMM");
  relu_keeps_nan<float>();
  relu_keeps_nan<__nv_bfloat16>();
  relu_keeps_nan<__half>();
  // an sm_75 device: no tensor cores, everything on the SIMT kernel
  aecomp_emu::config().cc_major = 7;
  linear_case<__half>(37, 24, 40, ACT_RELU, true, Layout::Contig, Layout::Contig, Layout::Contig);
  aecomp_emu::config().cc_major = 9;

  for (int red : {RED_NONE, RED_MEAN, RED_SUM}) {
    for (int64_t n : {1LL, 7LL, 1000LL, 4099LL}) {
      mse_case<float>(n, 0, red);
      mse_case<__nv_bfloat16>(n, 0, red);
      mse_case<__half>(n, 1, red);
    }
  }
  aecomp_emu::config().sm_count = 1;
  mse_case<__nv_bfloat16>(70001, 0, RED_MEAN);
  mse_case<float>(70001, 3, RED_SUM);
  aecomp_emu::config().sm_count = 4;
  mse_bits_independent_of_alignment(70001);
  mse_bits_independent_of_alignment(4099);

  print_smem_table();
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
