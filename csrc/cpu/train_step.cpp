// The microkernel path of the CPU backend at the tensor level, and the fused training step.
//
// mk_forward / mk_dgrad / mk_wgrad wrap the raw kernels of dense_gemm.h (float32) for
// linear_act.cpp and mlp.cpp, which call them below the crossover (use_microkernel) and ATen's
// sgemm above it.
//
// mlp_mse_train_step: one whole training step of a chain autoencoder in ONE call, the
// optimizer fused into the backward:
//   forward   h_{i+1} = act_i(h_i W_i^T + b_i)                  (BiasActStore epilogue)
//   loss      L = mean/sum (h_L - t)^2, gz_{L-1} = s (h_L - t) act'(h_L)   (one pass)
//   layer k from the top:
//     dgrad   gz_{k-1} = (gz_k @ W_k) * act_{k-1}'(h_k)            (uses W_k before its update)
//     wgrad   dW_k = gz_k^T h_k, db_k = sum_rows gz_k, and in the same epilogue the optimizer
//             step on W_k's tile (Adam/AdamW/SGD, dense_gemm.h), then on b_k.
// No gradient tensor is written. The optimizer state (exp_avg, exp_avg_sq, step /
// momentum_buffer) is torch.optim's own tensors, updated in place; the step counters are
// incremented here and the bias corrections computed in double like torch.optim.Adam.
// Where the crossover says ATen, that layer's GEMMs use ATen and its update runs as one
// element-wise pass on the gradient (optim_update); the math is the same.
// Every argument and every parameter's update is checked before anything changes (an error
// leaves parameters, state, step counts and version counters as they were). Parameters that
// share memory (one used by two layers) are refused: each slot is updated as its gradient
// completes, so a shared one would get two partial steps. An empty batch steps the optimizer
// with zero gradients, as torch.optim does with the zero gradients torch computes for it.
#include <ATen/ATen.h>
#include <torch/extension.h>

#include <cmath>
#include <vector>

#include "../aecomp.h"
#include "dense.h"
#include "dense_gemm.h"
#include "epilogue.h"
#include "microkernel.h"
#include "train_step.h"

namespace aecomp {
namespace cpu {

using at::Tensor;

static GemmPath g_gemm_path = GemmPath::Auto;
void set_gemm_path(GemmPath p) { g_gemm_path = p; }
GemmPath gemm_path() { return g_gemm_path; }

bool use_microkernel(int64_t M, int64_t N, int64_t K) {
  switch (g_gemm_path) {
    case GemmPath::Microkernel: return true;
    case GemmPath::Aten: return false;
    default: break;
  }
  // Crossover (benchmarks/bench_gemm_crossover.py, one thread, AVX-512 Zen 4, thread CPU time):
  // the microkernels are at 0.9-1.25x ATen's sgemm on every shape measured up to 768^3 and on
  // the skinny shapes of these layers at any batch (4096 x 784 x 128: 1.23x); square 1024^3 and
  // 1536^3 were 0.97-0.98x (noise level), so ATen keeps the large square shapes.
  const int64_t small = std::min(M, std::min(N, K));
  return small <= 256 || M * N * K <= (int64_t(1) << 29);
}

static Tensor rows_contig(const Tensor& t) {
  return (t.dim() == 2 && t.stride(1) == 1 && t.stride(0) >= t.size(1)) ? t : t.contiguous();
}

Tensor mk_forward(const Tensor& x2d, const Tensor& w, const Tensor& b, Act act) {
  const Tensor x = rows_contig(x2d), wc = rows_contig(w);
  const int64_t M = x.size(0), K = x.size(1), N = wc.size(0);
  Tensor packed = at::empty({mk::packed_bt_size(N, K)}, wc.options());
  mk::pack_weight(wc.data_ptr<float>(), N, K, wc.stride(0), packed.data_ptr<float>());
  Tensor y = at::empty({M, N}, x.options());
  const Tensor bc = b.defined() ? b.contiguous() : Tensor();
  mk::dense_fwd(x.data_ptr<float>(), x.stride(0), packed.data_ptr<float>(), bc.defined() ? bc.data_ptr<float>() : nullptr,
                y.data_ptr<float>(), N, M, N, K, static_cast<int>(act));
  return y;
}

Tensor mk_dgrad(const Tensor& gz_in, const Tensor& w_in, const Tensor& y_below, Act act_below) {
  const Tensor gz = rows_contig(gz_in), w = rows_contig(w_in);
  const int64_t M = gz.size(0), N_out = w.size(0), K_in = w.size(1);
  Tensor out = at::empty({M, K_in}, gz.options());
  Tensor y = y_below.defined() ? rows_contig(y_below) : Tensor();
  mk::dense_dgrad(gz.data_ptr<float>(), gz.stride(0), w.data_ptr<float>(), w.stride(0),
                  y.defined() ? y.data_ptr<float>() : nullptr, y.defined() ? y.stride(0) : 0,
                  y.defined() ? static_cast<int>(act_below) : -1, out.data_ptr<float>(), K_in, M, N_out, K_in);
  return out;
}

Tensor mk_wgrad(const Tensor& gz_in, const Tensor& h_in, Tensor* gb) {
  const Tensor gz = rows_contig(gz_in), h = rows_contig(h_in);
  const int64_t M = gz.size(0), N_out = gz.size(1), K_in = h.size(1);
  Tensor dw = at::empty({N_out, K_in}, gz.options());
  std::vector<double> db(gb ? N_out : 0);
  mk::dense_wgrad(gz.data_ptr<float>(), gz.stride(0), h.data_ptr<float>(), h.stride(0), M, N_out, K_in,
                  dw.data_ptr<float>(), K_in, gb ? db.data() : nullptr, nullptr, nullptr, nullptr, nullptr);
  if (gb) {
    *gb = at::empty({N_out}, gz.options());
    float* p = gb->data_ptr<float>();
    for (int64_t j = 0; j < N_out; ++j) p[j] = static_cast<float>(db[j]);
  }
  return dw;
}

// ------------------------------------------------------------------ the fused training step

namespace {

// Per param-group hyper-parameters, as the Python side packs them (aecomp/train/fused.py).
enum HyperIdx : int { kKind, kLr, kBeta1, kBeta2, kEps, kWd, kDecoupled, kMomentum, kDampening, kNesterov, kH };

}  // namespace

static void check_state(const char* what, size_t i, const std::optional<Tensor>& st, const Tensor& p) {
  TORCH_CHECK_VALUE(st.has_value() && st->defined(), "aecomp::mlp_mse_train_step: ", what, "[", i,
                    "] is missing for a parameter that is updated");
  TORCH_CHECK_VALUE(st->sizes() == p.sizes() && st->scalar_type() == at::kFloat && st->is_contiguous() &&
                        st->device().is_cpu(),
                    "aecomp::mlp_mse_train_step: ", what, "[", i, "] has shape ", shape_str(*st),
                    "; it must be a contiguous float32 CPU tensor shaped like its parameter ", shape_str(p));
}

// Checks parameter i's update and gathers its pointers and hyper-parameters, changing NOTHING:
// every parameter is planned (and so checked) before any is touched (begin_update).
ParamUpdate plan_update(size_t i, const Tensor& p, const std::vector<double>& hyper, int64_t group,
                        const std::vector<std::optional<Tensor>>& state1, const std::vector<std::optional<Tensor>>& state2,
                        const std::vector<std::optional<Tensor>>& steps, bool first) {
  ParamUpdate u;
  if (group < 0) return u;
  TORCH_CHECK_VALUE((group + 1) * kH <= static_cast<int64_t>(hyper.size()),
                    "aecomp::mlp_mse_train_step: group index ", group, " out of range");
  TORCH_CHECK_VALUE(p.is_contiguous(), "aecomp::mlp_mse_train_step: parameter ", i, " is not contiguous");
  const double* h = hyper.data() + group * kH;
  u.active = true;
  u.param = &p;
  u.p = p.data_ptr<float>();
  mk::OptimArgs& o = u.opt;
  o.kind = static_cast<int>(h[kKind]);
  TORCH_CHECK_VALUE(o.kind == mk::OptimArgs::Adam || o.kind == mk::OptimArgs::Sgd,
                    "aecomp::mlp_mse_train_step: group ", group, " has optimizer kind ", h[kKind],
                    "; expected 1 (Adam) or 2 (SGD)");
  o.lr = static_cast<float>(h[kLr]);
  o.weight_decay = static_cast<float>(h[kWd]);
  if (o.kind == mk::OptimArgs::Adam) {
    check_state("exp_avg", i, state1[i], p);
    check_state("exp_avg_sq", i, state2[i], p);
    u.m = state1[i]->data_ptr<float>();
    u.s = state2[i]->data_ptr<float>();
    TORCH_CHECK_VALUE(steps[i].has_value() && steps[i]->defined() && steps[i]->numel() == 1 &&
                          steps[i]->device().is_cpu(),
                      "aecomp::mlp_mse_train_step: step[", i, "] must be a one-element CPU tensor");
    u.step = *steps[i];
    TORCH_CHECK_VALUE(u.step.scalar_type() == at::kFloat || u.step.scalar_type() == at::kDouble,
                      "aecomp::mlp_mse_train_step: step[", i, "] must be float32 or float64, got ",
                      u.step.scalar_type());
    u.beta1 = h[kBeta1];
    u.beta2 = h[kBeta2];
    o.beta1 = static_cast<float>(u.beta1);
    o.beta2 = static_cast<float>(u.beta2);
    o.eps = static_cast<float>(h[kEps]);
    o.decoupled = h[kDecoupled] != 0.0;
  } else {
    o.momentum = static_cast<float>(h[kMomentum]);
    o.dampening = static_cast<float>(h[kDampening]);
    o.nesterov = h[kNesterov] != 0.0;
    o.first = first;
    if (o.momentum != 0.0f) {
      check_state("momentum_buffer", i, state1[i], p);
      u.m = state1[i]->data_ptr<float>();
    }
  }
  return u;
}

// The step's side effects before the update itself: the version counter (the parameter is
// written in place, like an optimizer's p.add_()) and Adam's step count with the bias
// corrections it gives (in double, like torch.optim.Adam).
void begin_update(ParamUpdate& u, const std::vector<double>& hyper, int64_t group) {
  if (!u.active) return;
  u.param->unsafeGetTensorImpl()->bump_version();
  if (u.opt.kind != mk::OptimArgs::Adam) return;
  double t;
  if (u.step.scalar_type() == at::kFloat) {
    float* sp = u.step.data_ptr<float>();
    *sp += 1.0f;
    t = *sp;
  } else {
    double* sp = u.step.data_ptr<double>();
    *sp += 1.0;
    t = *sp;
  }
  const double lr = hyper[group * kH + kLr];
  u.opt.step_size = static_cast<float>(lr / (1.0 - std::pow(u.beta1, t)));
  u.opt.bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(u.beta2, t)));
}

// Bytes [begin, end) of a tensor's elements (contiguous, as the fused step requires).
static std::pair<uintptr_t, uintptr_t> byte_range(const Tensor& t) {
  const auto b = reinterpret_cast<uintptr_t>(t.data_ptr());
  return {b, b + static_cast<uintptr_t>(t.numel()) * t.element_size()};
}

// A parameter that two slots share (one layer used twice, a weight tied between layers) has
// one gradient, the sum over its uses, and one update. The fused optimizer updates each slot
// as soon as that slot's gradient is complete (and the dgrad of a lower layer reads W before
// its update), so it cannot accumulate: refuse, naming both slots.
namespace {
void check_no_shared_parameters(const char* op, const std::vector<const Tensor*>& params,
                                const std::vector<ParamUpdate>& up, size_t L) {
  auto name = [&](size_t i) {
    return (i < L ? "weights[" + std::to_string(i) : "biases[" + std::to_string(i - L)) + "]";
  };
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i] == nullptr || params[i]->numel() == 0) continue;
    const auto ri = byte_range(*params[i]);
    for (size_t j = i + 1; j < params.size(); ++j) {
      if (params[j] == nullptr || params[j]->numel() == 0 || !(up[i].active || up[j].active)) continue;
      const auto rj = byte_range(*params[j]);
      TORCH_CHECK_VALUE(ri.second <= rj.first || rj.second <= ri.first, op, ": ", name(i),
                        " and ", name(j),
                        " share memory (one parameter used by two layers); the fused optimizer updates each "
                        "slot as its gradient completes and cannot sum a shared parameter's gradients. "
                        "aecomp.train.FusedStep takes its plain path for such models");
    }
  }
}
}  // namespace

std::vector<ParamUpdate> plan_updates(const char* op, const std::vector<Tensor>& weights,
                                      const std::vector<std::optional<Tensor>>& biases,
                                      const std::vector<double>& hyper, const std::vector<int64_t>& group_of,
                                      const std::vector<std::optional<Tensor>>& state1,
                                      const std::vector<std::optional<Tensor>>& state2,
                                      const std::vector<std::optional<Tensor>>& steps, const std::vector<bool>& first) {
  const size_t L = weights.size();
  std::vector<ParamUpdate> up(2 * L);
  std::vector<const Tensor*> params(2 * L, nullptr);
  for (size_t i = 0; i < L; ++i) {
    params[i] = &weights[i];
    up[i] = plan_update(i, weights[i], hyper, group_of[i], state1, state2, steps, first[i]);
  }
  for (size_t i = 0; i < L; ++i) {
    if (!biases[i].has_value()) continue;
    params[L + i] = &*biases[i];
    up[L + i] = plan_update(L + i, *biases[i], hyper, group_of[L + i], state1, state2, steps, first[L + i]);
  }
  check_no_shared_parameters(op, params, up, L);
  return up;
}

std::tuple<std::vector<Act>, Reduction> check_step_args(
    const char* op, const Tensor& x_in, const std::vector<Tensor>& weights,
    const std::vector<std::optional<Tensor>>& biases, const std::string& activations, const Tensor& target_in,
    const std::string& reduction, const std::vector<int64_t>& group_of, const std::vector<std::optional<Tensor>>& state1,
    const std::vector<std::optional<Tensor>>& state2, const std::vector<std::optional<Tensor>>& steps,
    const std::vector<bool>& first) {
  c10::List<std::optional<Tensor>> bl;
  for (const auto& b : biases) bl.push_back(b);
  check_mlp(op, x_in, weights, bl, /*gpu=*/false);
  TORCH_CHECK_VALUE(target_in.scalar_type() == at::kFloat && target_in.device().is_cpu(), op,
                    ": target must be a float32 CPU tensor; got ", target_in.scalar_type(), " on ", target_in.device());
  const size_t L = weights.size();
  std::vector<Act> acts = parse_activations(op, activations, L);
  const Reduction red = parse_reduction(op, reduction);
  TORCH_CHECK_VALUE(red != Reduction::None, op, ": reduction must be 'mean' or 'sum'");
  TORCH_CHECK_VALUE(group_of.size() == 2 * L && state1.size() == 2 * L && state2.size() == 2 * L &&
                        steps.size() == 2 * L && first.size() == 2 * L,
                    op, ": expected 2 * ", L, " entries in group_of/state1/state2/steps/first");
  TORCH_CHECK_VALUE(x_in.scalar_type() == at::kFloat && x_in.device().is_cpu(), op,
                    ": the fused step runs float32 CPU tensors; got x of dtype ", x_in.scalar_type(), " on ",
                    x_in.device());
  for (size_t i = 0; i < L; ++i)
    TORCH_CHECK_VALUE(weights[i].scalar_type() == at::kFloat, op, ": weights[", i, "] is not float32");

  return {std::move(acts), red};
}

namespace {

Tensor mlp_mse_train_step(const Tensor& x_in, const std::vector<Tensor>& weights,
                          const std::vector<std::optional<Tensor>>& biases, const std::string& activations,
                          const Tensor& target_in, const std::string& reduction, const std::vector<double>& hyper,
                          const std::vector<int64_t>& group_of, const std::vector<std::optional<Tensor>>& state1,
                          const std::vector<std::optional<Tensor>>& state2,
                          const std::vector<std::optional<Tensor>>& steps, const std::vector<bool>& first) {
  const char* op = "aecomp::mlp_mse_train_step";
  at::NoGradGuard no_grad;
  at::AutoDispatchBelowADInplaceOrView guard;
  const size_t L = weights.size();
  const auto [acts, red] = check_step_args(op, x_in, weights, biases, activations, target_in, reduction, group_of,
                                           state1, state2, steps, first);

  const Tensor x = rows_contig(flatten_rows(x_in));
  const Tensor t = flatten_rows(target_in).contiguous();
  TORCH_CHECK_VALUE(t.sizes() == at::IntArrayRef({x.size(0), weights.back().size(0)}), op, ": target has shape ",
                    shape_str(target_in), " but the chain output is [", x.size(0), ", ", weights.back().size(0), "]");
  const int64_t M = x.size(0);

  // updates, in parameter order W_0..W_{L-1}, b_0..b_{L-1}: all checked first, then begun
  std::vector<ParamUpdate> up = plan_updates(op, weights, biases, hyper, group_of, state1, state2, steps, first);

  // forward
  std::vector<Tensor> hs;  // h_0 = x, h_{i+1} = y_i
  hs.reserve(L + 1);
  hs.push_back(x);
  for (size_t i = 0; i < L; ++i) {
    const Tensor b = biases[i].has_value() ? *biases[i] : Tensor();
    const Tensor& w = weights[i];
    if (use_microkernel(M, w.size(0), w.size(1)))
      hs.push_back(mk_forward(hs[i], w, b, acts[i]));
    else
      hs.push_back(dense_forward(hs[i], w, b, acts[i]));
  }
  const Tensor& y = hs[L];
  const int64_t n = y.numel();
  const double total = n ? sq_err_sum_f32(y.data_ptr<float>(), t.data_ptr<float>(), n) : 0.0;
  const double denom = red == Reduction::Mean ? static_cast<double>(n) : 1.0;
  Tensor loss = at::scalar_tensor(total / denom, x.options());
  if (M == 0) {
    if (red == Reduction::Mean) loss.fill_(std::nan(""));
  }

  for (size_t i = 0; i < 2 * L; ++i) begin_update(up[i], hyper, group_of[i]);
  if (M == 0) {
    // An empty batch: every gradient is zero, and torch.optim still steps (the moments decay,
    // weight decay and momentum apply), so the update runs with a zero gradient.
    for (size_t i = 0; i < 2 * L; ++i) {
      if (!up[i].active) continue;
      const std::vector<float> zero(static_cast<size_t>(up[i].param->numel()), 0.0f);
      mk::optim_update(up[i].opt, up[i].p, up[i].m, up[i].s, zero.data(), up[i].param->numel());
    }
    return loss;
  }

  // the loss entry
  const double scale = 2.0 / std::max<double>(denom, 1.0);
  Tensor gz = at::empty_like(y);
  {
    const float one = 1.0f;
    loss_act_grad_f32(y.data_ptr<float>(), t.data_ptr<float>(), &one, 0, static_cast<float>(scale),
                      gz.data_ptr<float>(), nullptr, M, y.size(1), static_cast<int>(acts[L - 1]));
  }

  // the backward, top layer first; each layer's parameters updated as soon as its gradient is done
  std::vector<bool> below(L + 1, false);  // below[k]: some layer under k updates a parameter
  for (size_t i = 0; i < L; ++i) below[i + 1] = below[i] || up[i].active || up[L + i].active;
  for (size_t k = L; k-- > 0;) {
    const Tensor& w = weights[k];
    const int64_t N_out = w.size(0), K_in = w.size(1);
    const bool mk_path = use_microkernel(M, N_out, K_in);
    Tensor gz_below;
    if (k > 0 && below[k]) {
      gz_below = mk_path ? mk_dgrad(gz, w, hs[k], acts[k - 1])
                         : act_grad_pass(at::mm(gz, w), hs[k], acts[k - 1], nullptr, /*in_place=*/true);
    }
    ParamUpdate& uw = up[k];
    ParamUpdate& ub = up[L + k];
    if (uw.active || ub.active) {
      std::vector<double> db(ub.active ? N_out : 0);
      if (mk_path && uw.active) {
        mk::dense_wgrad(gz.data_ptr<float>(), N_out, hs[k].data_ptr<float>(), hs[k].stride(0), M, N_out, K_in, nullptr, 0,
                        ub.active ? db.data() : nullptr, &uw.opt, uw.p, uw.m, uw.s);
      } else {
        if (uw.active) {
          Tensor dw = at::mm(gz.t(), hs[k]).contiguous();
          mk::optim_update(uw.opt, uw.p, uw.m, uw.s, dw.data_ptr<float>(), dw.numel());
        }
        if (ub.active) {
          const float* g = gz.data_ptr<float>();
          for (int64_t r = 0; r < M; ++r)
            for (int64_t j = 0; j < N_out; ++j) db[j] += static_cast<double>(g[r * N_out + j]);
        }
      }
      if (ub.active) {
        std::vector<float> dbf(N_out);
        for (int64_t j = 0; j < N_out; ++j) dbf[j] = static_cast<float>(db[j]);
        mk::optim_update(ub.opt, ub.p, ub.m, ub.s, dbf.data(), N_out);
      }
    }
    if (!gz_below.defined()) break;
    gz = gz_below;
  }
  return loss;
}

// Test and benchmark entry points of the raw kernels (always the microkernel path).
Tensor mk_linear_fwd_py(const Tensor& x, const Tensor& w, const std::optional<Tensor>& b, const std::string& act) {
  const Act a = parse_activation("aecomp::_mk_linear_fwd", act);
  check_linear_act("aecomp::_mk_linear_fwd", x, w, b, false);
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat, "aecomp::_mk_linear_fwd: float32 only");
  return mk_forward(flatten_rows(x), w, b.has_value() ? *b : Tensor(), a);
}

// A float32 CPU matrix [rows, cols] (rows or cols < 0: any), for the raw entry points below.
void check_mk_matrix(const char* op, const char* arg, const Tensor& t, int64_t rows, int64_t cols) {
  TORCH_CHECK_VALUE(t.dim() == 2 && (rows < 0 || t.size(0) == rows) && (cols < 0 || t.size(1) == cols), op, ": ",
                    arg, " must be 2-D [", rows < 0 ? std::string("*") : std::to_string(rows), ", ",
                    cols < 0 ? std::string("*") : std::to_string(cols), "], got ", shape_str(t));
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, op, ": ", arg, " must be float32, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", arg, " is on ", t.device(), "; these kernels take CPU tensors");
}

// out = (gz [M, N] @ w [N, K]) * act'(y_below [M, K])
Tensor mk_dgrad_py(const Tensor& gz, const Tensor& w, const std::optional<Tensor>& y_below, const std::string& act) {
  const char* op = "aecomp::_mk_dgrad";
  const Act a = parse_activation(op, act);
  check_mk_matrix(op, "gz", gz, -1, -1);
  check_mk_matrix(op, "w", w, gz.size(1), -1);
  if (y_below.has_value()) check_mk_matrix(op, "y_below", *y_below, gz.size(0), w.size(1));
  return mk_dgrad(gz, w, y_below.has_value() ? *y_below : Tensor(), a);
}

// dW = gz [M, N]^T @ h [M, K], db = sum_rows gz
std::tuple<Tensor, Tensor> mk_wgrad_py(const Tensor& gz, const Tensor& h) {
  const char* op = "aecomp::_mk_wgrad";
  check_mk_matrix(op, "gz", gz, -1, -1);
  check_mk_matrix(op, "h", h, gz.size(0), -1);
  Tensor gb;
  Tensor dw = mk_wgrad(gz, h, &gb);
  return {dw, gb};
}

void set_gemm_path_py(const std::string& p) {
  if (p == "auto") set_gemm_path(GemmPath::Auto);
  else if (p == "mk") set_gemm_path(GemmPath::Microkernel);
  else if (p == "aten") set_gemm_path(GemmPath::Aten);
  else TORCH_CHECK_VALUE(false, "aecomp._C._set_cpu_gemm: path must be 'auto', 'mk' or 'aten'; got '", p, "'");
}

std::string get_gemm_path_py() {
  switch (gemm_path()) {
    case GemmPath::Microkernel: return "mk";
    case GemmPath::Aten: return "aten";
    default: return "auto";
  }
}

}  // namespace

void def_train_step(pybind11::module& mod) {
  mod.def("mlp_mse_train_step", &mlp_mse_train_step,
          "one training step of a chain autoencoder with the optimizer fused into the backward (CPU, float32)",
          pybind11::arg("x"), pybind11::arg("weights"), pybind11::arg("biases"), pybind11::arg("activations"),
          pybind11::arg("target"), pybind11::arg("reduction"), pybind11::arg("hyper"), pybind11::arg("group_of"),
          pybind11::arg("state1"), pybind11::arg("state2"), pybind11::arg("steps"), pybind11::arg("first"));
  mod.def("_mk_linear_fwd", &mk_linear_fwd_py);
  mod.def("_mk_dgrad", &mk_dgrad_py);
  mod.def("_mk_wgrad", &mk_wgrad_py);
  mod.def("_set_cpu_gemm", &set_gemm_path_py);
  mod.def("_get_cpu_gemm", &get_gemm_path_py);
  mod.def("_cpu_isa", [] { return std::string(mk::isa_name(mk::active_isa())); });
}

}  // namespace cpu
}  // namespace aecomp
