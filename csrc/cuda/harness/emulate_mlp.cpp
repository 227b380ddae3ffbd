// Runs the real source of csrc/cuda/mlp.cu (the fused chain forward and the fused loss entry)
// on the CPU emulator of emulator.h and checks it against a float64 reference. Built and run by
// tests/test_cuda_mlp.py; by hand:
//
//   g++ -std=c++17 -O1 -DAECOMP_EMULATE -I/usr/local/cuda/include
//       csrc/cuda/harness/emulate_mlp.cpp -o /tmp/emu_mlp  &&  /tmp/emu_mlp [--early] [--seed N]
//
// Chain: layer i of the kernel is compared with act_i(h_i W_i^T + b_i) computed in float64 from
// the kernel's own y_{i-1} (what it stored, the input the contract says layer i sees), rounded
// once to T; tolerance: 1 unit in the last place of T (float32: 4 ulp, the fp32 sum order is
// free). The whole chain is also compared with an unrounded float64 chain from x (float32 only,
// 1e-4 relative). Loss entry: gz exactly as the reference rounded to T from the same float
// formula, db against the float64 sum of the stored gz (1e-5 of the sum of |gz| + one T ulp).
// Buffers end at PROT_NONE pages; outputs start as NaN.
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../mlp.cu"
#include "../device_info.cu"

using namespace aecomp_cuda;

namespace {

int g_failures = 0, g_checks = 0;
std::mt19937 g_rng(1234);

void* guarded(size_t bytes) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  bytes = (bytes + 15) / 16 * 16 + 16;
  const size_t data_pages = (bytes + page - 1) / page;
  void* base = mmap(nullptr, (data_pages + 1) * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) std::exit(2);
  unsigned char* guard = static_cast<unsigned char*>(base) + data_pages * page;
  mprotect(guard, page, PROT_NONE);
  return guard - bytes;
}
// aligned: 16-byte aligned start (what the tensor-core chain needs); otherwise one element past
// a 16-byte boundary (misaligned for every dtype).
bool g_aligned = false;
template <typename T>
T* alloc(size_t n) {
  T* p = static_cast<T*>(guarded(sizeof(T) * (n + 1)));
  for (size_t i = 0; i < n + 1; ++i) p[i] = Num<T>::from_f(NAN);
  return g_aligned ? p : p + 1;
}
template <typename T>
double f(T v) {
  return Num<T>::to_f(v);
}
template <typename T>
double rnd(double v) {
  return f<T>(Num<T>::from_f(static_cast<float>(v)));
}
template <typename T>
double ulp() {
  return std::is_same<T, float>::value ? 4 * 1.2e-7 : std::is_same<T, __half>::value ? 1.0 / 1024 : 1.0 / 128;
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
bool close(double got, double want, double rel, double abs_tol) {
  return !std::isnan(got) && std::fabs(got - want) <= rel * std::fabs(want) + abs_tol;
}
void report(bool ok, const std::string& what, size_t i, double got, double want) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    std::printf("FAIL %s: element %zu = %.8g, expected %.8g\n", what.c_str(), i, got, want);
  }
}

// x layout: 0 contiguous, 1 padded rows (stride K + 3), 2 column-major.
template <typename T>
void chain_case(int M, std::vector<int> widths, std::vector<int> acts, bool bias, int xlayout) {
  const int L = static_cast<int>(acts.size());
  std::string name = std::string(tname<T>()) + " M=" + std::to_string(M) + " widths=";
  for (int w : widths) name += std::to_string(w) + "-";
  name += " acts=";
  for (int a : acts) name += std::to_string(a);
  name += bias ? " bias" : " nobias";
  name += " x" + std::to_string(xlayout);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  const int K0 = widths[0];
  int64_t s0 = K0, s1 = 1;
  if (xlayout == 1) s0 = K0 + 3;
  if (xlayout == 2) s0 = 1, s1 = M;
  if (xlayout == 3) s0 = K0 + 8;
  const size_t xspan = M > 0 ? static_cast<size_t>((M - 1) * s0 + (K0 - 1) * s1 + 1) : 1;
  T* x = alloc<T>(xspan);
  std::vector<std::vector<double>> h(1, std::vector<double>(static_cast<size_t>(M) * K0));
  for (int m = 0; m < M; ++m)
    for (int k = 0; k < K0; ++k) {
      x[m * s0 + k * s1] = Num<T>::from_f(u(g_rng));
      h[0][static_cast<size_t>(m) * K0 + k] = f<T>(x[m * s0 + k * s1]);
    }
  std::vector<T*> w(L), b(L), out(L);
  std::vector<const void*> wv(L), bv(L);
  std::vector<void*> ov(L);
  for (int i = 0; i < L; ++i) {
    const int N = widths[i + 1], K = widths[i];
    const float sc = 1.5f / std::sqrt(static_cast<float>(K));
    w[i] = alloc<T>(static_cast<size_t>(N) * K);
    for (int e = 0; e < N * K; ++e) w[i][e] = Num<T>::from_f(sc * u(g_rng));
    b[i] = bias ? alloc<T>(N) : nullptr;
    if (bias)
      for (int n = 0; n < N; ++n) b[i][n] = Num<T>::from_f(0.5f * u(g_rng));
    out[i] = alloc<T>(static_cast<size_t>(M) * N);
    wv[i] = w[i], bv[i] = b[i], ov[i] = out[i];
  }
  const long long mma0 = aecomp_emu::stats().mma;
  const cudaError_t e = mlp_chain_forward(dtype<T>(), M, L, widths.data(), Mat{x, s0, s1}, wv.data(), bv.data(),
                                          acts.data(), ov.data(), nullptr);
  bool want_tc = !std::is_same<T, float>::value && g_aligned && s1 == 1 && s0 % 8 == 0 && M > 0;
  for (int wd : widths) want_tc = want_tc && wd % 8 == 0;
  const bool used_tc = aecomp_emu::stats().mma > mma0;
  ++g_checks;
  if (want_tc != used_tc) {
    ++g_failures;
    std::printf("FAIL %s: ran on the %s chain, expected the %s chain\n", name.c_str(), used_tc ? "tensor-core" : "SIMT",
                want_tc ? "tensor-core" : "SIMT");
  }
  name += used_tc ? " [tc]" : " [simt]";
  ++g_checks;
  if (e != cudaSuccess) {
    ++g_failures;
    std::printf("FAIL %s: launch returned %d\n", name.c_str(), static_cast<int>(e));
    return;
  }
  std::vector<double> exact = h[0];  // unrounded float64 chain
  for (int i = 0; i < L; ++i) {
    const int N = widths[i + 1], K = widths[i];
    std::vector<double> in(static_cast<size_t>(M) * K);
    for (size_t j = 0; j < in.size(); ++j) in[j] = i == 0 ? h[0][j] : f<T>(out[i - 1][j]);
    std::vector<double> nxt(static_cast<size_t>(M) * N);
    bool ok = true, ok_exact = true;
    size_t bad = 0;
    double got_bad = 0, want_bad = 0;
    for (int m = 0; m < M && ok; ++m)
      for (int n = 0; n < N; ++n) {
        double z = bias ? f<T>(b[i][n]) : 0.0, ze = z;
        for (int k = 0; k < K; ++k) {
          z += in[static_cast<size_t>(m) * K + k] * f<T>(w[i][n * K + k]);
          ze += exact[static_cast<size_t>(m) * K + k] * f<T>(w[i][n * K + k]);
        }
        const double want = rnd<T>(act_ref(acts[i], z));
        const double got = f<T>(out[i][static_cast<size_t>(m) * N + n]);
        nxt[static_cast<size_t>(m) * N + n] = act_ref(acts[i], ze);
        if (!close(got, want, ulp<T>(), 1e-6)) {
          ok = false, bad = static_cast<size_t>(m) * N + n, got_bad = got, want_bad = want;
          break;
        }
        if (std::is_same<T, float>::value && !close(got, nxt[static_cast<size_t>(m) * N + n], 1e-4, 1e-5))
          ok_exact = false;
      }
    report(ok, name + " layer " + std::to_string(i), bad, got_bad, want_bad);
    report(ok_exact, name + " layer " + std::to_string(i) + " vs float64 chain", 0, 0, 0);
    exact.swap(nxt);
  }
}

// reduction: 0 none (elementwise grad), 1 mean, 2 sum.
template <typename T>
void entry_case(int M, int N, int act, int reduction, bool want_db) {
  const std::string name = std::string(tname<T>()) + " loss entry M=" + std::to_string(M) + " N=" + std::to_string(N) +
                           " act=" + std::to_string(act) + " red=" + std::to_string(reduction) +
                           (want_db ? " db" : "");
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  const size_t n = static_cast<size_t>(M) * N;
  T* y = alloc<T>(n);
  T* t = alloc<T>(n);
  const bool scalar = reduction != RED_NONE;
  T* g = alloc<T>(scalar ? 1 : n);
  for (size_t i = 0; i < n; ++i) {
    float yv = u(g_rng);
    if (act == ACT_SIGMOID) yv = 0.5f + 0.5f * yv;
    if (act == ACT_RELU && yv < 0.f) yv = (i % 3 == 0) ? 0.f : -yv;
    y[i] = Num<T>::from_f(yv);
    t[i] = Num<T>::from_f(u(g_rng));
  }
  for (size_t i = 0; i < (scalar ? 1 : n); ++i) g[i] = Num<T>::from_f(scalar ? 0.75f : u(g_rng));
  const float scale = reduction == RED_MEAN ? 2.f / static_cast<float>(n > 0 ? n : 1) : 2.f;
  T* gz = alloc<T>(n);
  T* db = want_db ? alloc<T>(N) : nullptr;
  const size_t ws_bytes = mlp_loss_entry_workspace(M, N);
  void* ws = ws_bytes ? guarded(ws_bytes) : nullptr;
  const cudaError_t e =
      mlp_loss_entry(dtype<T>(), M, N, y, t, g, scalar, scale, act, gz, db, ws, ws_bytes, nullptr);
  ++g_checks;
  if (e != cudaSuccess) {
    ++g_failures;
    std::printf("FAIL %s: launch returned %d\n", name.c_str(), static_cast<int>(e));
    return;
  }
  std::vector<double> colsum(N, 0.0), colabs(N, 0.0);
  bool ok = true;
  size_t bad = 0;
  double gb = 0, wb = 0;
  for (size_t i = 0; i < n; ++i) {
    const double yv = f<T>(y[i]), gv = f<T>(g[scalar ? 0 : i]);
    double d = static_cast<double>(scale) * gv * (yv - f<T>(t[i]));
    if (act == ACT_RELU) d = yv > 0 ? d : 0;
    if (act == ACT_SIGMOID) d *= yv * (1 - yv);
    const double want = rnd<T>(d), got = f<T>(gz[i]);
    // the kernel's fp32 products may round differently from float64: one T ulp
    if (!close(got, want, std::is_same<T, float>::value ? 1e-6 : ulp<T>(), 1e-30)) {
      if (ok) bad = i, gb = got, wb = want;
      ok = false;
    }
    colsum[i % N] += got;
    colabs[i % N] += std::fabs(got);
  }
  report(ok, name + " gz", bad, gb, wb);
  if (want_db) {
    ok = true;
    for (int c = 0; c < N; ++c) {
      const double got = f<T>(db[c]);
      // fp32 partial sums in the kernel's order: the rounding error is bounded relative to the sum of
      // |gz| (not to the result, which cancels), plus one T ulp of the final rounding
      if (!close(got, colsum[c], ulp<T>(), 1e-5 * colabs[c] + 1e-6)) {
        if (ok) bad = c, gb = got, wb = colsum[c];
        ok = false;
      }
    }
    report(ok, name + " db", bad, gb, wb);
  }
}

template <typename T>
void suite() {
  const std::vector<std::vector<int>> chains = {
      {5, 17, 3}, {20, 9, 20}, {50, 16, 8, 16, 50}, {3, 256, 200, 7}, {300, 16, 270}};
  const std::vector<int> batches = {1, 7, 33};
  int v = 0;
  for (const auto& wd : chains)
    for (int M : batches) {
      const int L = static_cast<int>(wd.size()) - 1;
      std::vector<int> acts(L);
      for (int i = 0; i < L; ++i) acts[i] = (v + i) % 3;  // relu / none / sigmoid, rotating
      if ((wd[1] == 256 || wd[0] == 300) && M > 7) continue;  // the widest chains: twice per dtype
      chain_case<T>(M, wd, acts, v % 2 == 0, v % 3);
      ++v;
    }
  // tensor-core chain (16-bit T): widths % 8 == 0, aligned rows; K not a multiple of 32, a
  // width over the 128-column pass, several row blocks, and the scaled autoencoder
  g_aligned = true;
  chain_case<T>(7, {24, 16, 8, 40}, {ACT_RELU, ACT_NONE, ACT_SIGMOID}, true, 0);
  chain_case<T>(70, {40, 136, 8, 24}, {ACT_SIGMOID, ACT_RELU, ACT_NONE}, false, 3);
  chain_case<T>(1, {264, 256, 8}, {ACT_NONE, ACT_RELU}, true, 0);
  chain_case<T>(33, {200, 128, 64, 32, 64, 128, 200}, {ACT_RELU, ACT_RELU, ACT_NONE, ACT_RELU, ACT_RELU, ACT_SIGMOID},
                true, 0);
  chain_case<T>(9, {16, 16}, {ACT_RELU}, true, 2);  // column-major x: SIMT
  g_aligned = false;
  for (int M : {1, 7, 33, 1500})
    for (int N : {3, 20, 50}) entry_case<T>(M, N, (M + N) % 3, (M * 7 + N) % 3, N != 20);
  entry_case<T>(0, 5, ACT_RELU, RED_SUM, true);
}

// One process trains the default Autoencoder (784-128-64-32-64-128-784: widest inner layer 128,
// 65536 B of shared memory on the bf16 tensor-core chain) and then a default VAE, whose decoder
// 32-256-784 needs 98304 B of the same kernel. The emulator models the per-(kernel, device)
// opt-in attribute (R1 in emulator.h), so an opt-in that is not raised for the wider chain fails
// the second launch with cudaErrorInvalidValue, as on the GPU. Then both again, on a second
// device, and the first again (a smaller need after a larger one).
void replay_default_models() {
  const std::vector<int> ae = {784, 128, 64, 32, 64, 128, 784};
  const std::vector<int> ae_acts = {ACT_RELU, ACT_RELU, ACT_NONE, ACT_RELU, ACT_RELU, ACT_SIGMOID};
  const std::vector<int> vae_dec = {32, 256, 784};
  const std::vector<int> vae_acts = {ACT_RELU, ACT_SIGMOID};
  const bool was = g_aligned;
  g_aligned = true;
  for (int dev : {0, 1}) {
    cudaError_t e = aecomp_emu::set_device(dev);
    ++g_checks;
    if (e != cudaSuccess) ++g_failures, std::printf("FAIL set_device(%d): %d\n", dev, static_cast<int>(e));
    chain_case<__nv_bfloat16>(5, ae, ae_acts, true, 0);
    chain_case<__nv_bfloat16>(5, vae_dec, vae_acts, true, 0);
    chain_case<float>(3, {20, 250, 20}, {ACT_RELU, ACT_NONE}, true, 0);  // SIMT chain: 49856 B, an opt-in
    chain_case<float>(3, {20, 256, 20}, {ACT_RELU, ACT_NONE}, true, 0);  // 50624 B: a larger one
    chain_case<__nv_bfloat16>(5, ae, ae_acts, true, 0);
  }
  aecomp_emu::set_device(0);
  g_aligned = was;
  ++g_checks;
  if (aecomp_emu::peek_at_last_error() != cudaSuccess) {
    ++g_failures;
    std::printf("FAIL the runtime's last error is left set: %d\n", static_cast<int>(aecomp_emu::peek_at_last_error()));
  }
}

// relu(NaN) is NaN in the chain epilogues too: a NaN in row 2 of x is NaN in row 2 of every
// layer's output (relu, none, relu), on the SIMT and the tensor-core chain; other rows are finite.
template <typename T>
void chain_relu_keeps_nan(bool aligned) {
  const bool was = g_aligned;
  g_aligned = aligned;
  const int M = 5, L = 3;
  const int widths[L + 1] = {16, 32, 16, 8};
  const int acts[L] = {ACT_RELU, ACT_NONE, ACT_RELU};
  T* x = alloc<T>(M * 16);
  for (int i = 0; i < M * 16; ++i) x[i] = Num<T>::from_f(0.25f * static_cast<float>(i % 7) - 0.5f);
  x[2 * 16 + 3] = Num<T>::from_f(NAN);
  std::vector<const void*> wv(L), bv(L, nullptr);
  std::vector<void*> ov(L);
  std::vector<T*> out(L);
  for (int i = 0; i < L; ++i) {
    T* w = alloc<T>(widths[i + 1] * widths[i]);
    for (int e = 0; e < widths[i + 1] * widths[i]; ++e) w[e] = Num<T>::from_f(e % 3 == 0 ? -0.25f : 0.125f);
    wv[i] = w;
    out[i] = alloc<T>(M * widths[i + 1]);
    ov[i] = out[i];
  }
  const cudaError_t e = mlp_chain_forward(dtype<T>(), M, L, widths, Mat{x, 16, 1}, wv.data(), bv.data(), acts,
                                          ov.data(), nullptr);
  bool ok = e == cudaSuccess;
  for (int i = 0; i < L && ok; ++i)
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < widths[i + 1]; ++n) ok = ok && (std::isnan(f<T>(out[i][m * widths[i + 1] + n])) == (m == 2));
  report(ok, std::string("chain relu keeps NaN ") + tname<T>() + (aligned ? " aligned" : " misaligned"), 0, 0, 0);
  g_aligned = was;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--early")) aecomp_emu::config().late_copies = false;
    if (!std::strcmp(argv[i], "--seed") && i + 1 < argc) g_rng.seed(static_cast<unsigned>(std::atoll(argv[++i])));
  }
  {  // fusable limits
    const int ok[] = {900, 256, 1, 256, 900}, wide[] = {4, 257, 4}, zero[] = {0, 4}, ends[] = {5000, 6000};
    ++g_checks;
    if (!mlp_chain_fusable(4, ok) || !mlp_chain_fusable(1, ends) || mlp_chain_fusable(2, wide) ||
        mlp_chain_fusable(1, zero) || mlp_chain_fusable(CHAIN_MAX_LAYERS + 1, ok)) {
      ++g_failures;
      std::printf("FAIL mlp_chain_fusable limits\n");
    }
  }
  replay_default_models();
  chain_relu_keeps_nan<float>(false);
  chain_relu_keeps_nan<__nv_bfloat16>(false);
  chain_relu_keeps_nan<__nv_bfloat16>(true);  // tensor-core chain
  chain_relu_keeps_nan<__half>(true);
  suite<float>();
  suite<__nv_bfloat16>();
  suite<__half>();
  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures ? 1 : 0;
}
