// Op schemas, shared input checks, autograd, and the pybind11 module `aecomp._C`.
//
// Every op is defined once here with TORCH_LIBRARY(aecomp, m); the device kernels register
// themselves per dispatch key (cpu/*.cpp for CPU, cuda/*.cpp for CUDA); autograd is one
// torch::autograd::Function per op registered for the Autograd key, so it serves every
// device. Fake (meta) implementations for torch.compile live in aecomp/ops/_fake.py.
#include "aecomp.h"
#include "cpu/isa.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <sstream>

namespace aecomp {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using at::Tensor;

// ---------------------------------------------------------------- shared helpers

Act parse_activation(const char* op, c10::string_view a) {
  if (a == "none") return Act::None;
  if (a == "relu") return Act::ReLU;
  if (a == "sigmoid") return Act::Sigmoid;
  TORCH_CHECK_VALUE(false, op, ": unknown activation '", std::string(a),
                    "'; expected one of 'none', 'relu', 'sigmoid'");
}

const char* act_name(Act a) {
  switch (a) {
    case Act::ReLU: return "relu";
    case Act::Sigmoid: return "sigmoid";
    default: return "none";
  }
}

Reduction parse_reduction(const char* op, c10::string_view r) {
  if (r == "mean") return Reduction::Mean;
  if (r == "sum") return Reduction::Sum;
  if (r == "none") return Reduction::None;
  TORCH_CHECK_VALUE(false, op, ": unknown reduction '", std::string(r),
                    "'; expected one of 'mean', 'sum', 'none'");
}

std::string shape_str(const Tensor& t) {
  std::ostringstream s;
  s << "[";
  for (int64_t i = 0; i < t.dim(); ++i) s << (i ? ", " : "") << t.size(i);
  s << "]";
  return s.str();
}

// "torch.float32", as Python prints a dtype, so messages read the same from every backend.
static std::string dtype_str(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kHalf: return "torch.float16";
    case at::kLong: return "torch.int64";
    case at::kInt: return "torch.int32";
    case at::kBool: return "torch.bool";
    default: return std::string("torch.") + c10::toString(t.scalar_type());
  }
}

// CPU kernels: float32 and float64 (float64 is there for gradcheck). CUDA kernels: float32,
// bfloat16 and float16, accumulating in float32.
static bool dtype_ok(const Tensor& t, bool gpu) {
  auto d = t.scalar_type();
  if (d == at::kFloat) return true;
  if (d == at::kDouble) return !gpu;
  if (d == at::kBFloat16 || d == at::kHalf) return gpu;
  return false;
}

static void check_dtype(const char* op, const char* arg, const Tensor& t, bool gpu) {
  TORCH_CHECK_TYPE(dtype_ok(t, gpu), op, ": ", arg, " has dtype ", dtype_str(t), " (shape ", shape_str(t),
                   ") but the ", gpu ? "CUDA" : "CPU", " kernels take ",
                   gpu ? "float32, bfloat16 and float16" : "float32 and float64",
                   " (backend='reference' takes any floating dtype)");
}

void check_linear_act(const char* op, const Tensor& x, const Tensor& weight,
                      const std::optional<Tensor>& bias, bool gpu) {
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must have at least 1 dimension [..., in_features], got shape ",
                    shape_str(x));
  TORCH_CHECK_VALUE(weight.dim() == 2, op, ": weight must be 2-D [out_features, in_features], got shape ",
                    shape_str(weight));
  TORCH_CHECK_VALUE(x.size(-1) == weight.size(1), op, ": x.shape[-1] = ", x.size(-1),
                    " does not match weight.shape[1] = ", weight.size(1), " (x: ", shape_str(x),
                    ", weight: ", shape_str(weight), ")");
  check_dtype(op, "x", x, gpu);
  TORCH_CHECK_TYPE(weight.scalar_type() == x.scalar_type(), op, ": weight has dtype ", dtype_str(weight),
                   " but x has dtype ", dtype_str(x), " (x: ", shape_str(x), ", weight: ", shape_str(weight),
                   ")");
  TORCH_CHECK_VALUE(weight.device() == x.device(), op, ": weight is on ", weight.device(), " but x is on ",
                    x.device(), " (x: ", shape_str(x), ", weight: ", shape_str(weight), ")");
  if (bias.has_value() && bias->defined()) {
    const Tensor& b = *bias;
    TORCH_CHECK_VALUE(b.dim() == 1 && b.size(0) == weight.size(0), op, ": bias must have shape [",
                      weight.size(0), "] (weight.shape[0]), got ", shape_str(b), " (weight: ",
                      shape_str(weight), ")");
    TORCH_CHECK_TYPE(b.scalar_type() == x.scalar_type(), op, ": bias has dtype ", dtype_str(b),
                     " but x has dtype ", dtype_str(x), " (bias: ", shape_str(b), ")");
    TORCH_CHECK_VALUE(b.device() == x.device(), op, ": bias is on ", b.device(), " but x is on ", x.device(),
                      " (bias: ", shape_str(b), ")");
  }
}

void check_mse(const char* op, const Tensor& input, const Tensor& target, bool gpu) {
  TORCH_CHECK_VALUE(input.sizes() == target.sizes(), op, ": input and target must have the same shape, got input ",
                    shape_str(input), " and target ", shape_str(target));
  check_dtype(op, "input", input, gpu);
  TORCH_CHECK_TYPE(target.scalar_type() == input.scalar_type(), op, ": target has dtype ",
                   dtype_str(target), " but input has dtype ", dtype_str(input), " (shape ",
                   shape_str(input), ")");
  TORCH_CHECK_VALUE(target.device() == input.device(), op, ": target is on ", target.device(),
                    " but input is on ", input.device(), " (shape ", shape_str(input), ")");
}

std::vector<Act> parse_activations(const char* op, c10::string_view activations, size_t n_layers) {
  std::vector<Act> acts;
  std::string text(activations);
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    acts.push_back(parse_activation(op, c10::string_view(text).substr(start, end - start)));
    start = end + 1;
  }
  TORCH_CHECK_VALUE(acts.size() == n_layers, op, ": got ", n_layers, " weights but ", acts.size(),
                    " activations ('", text, "'); give one activation per layer");
  return acts;
}

void check_mlp(const char* op, const Tensor& x, at::TensorList weights,
               const c10::List<std::optional<Tensor>>& biases, bool gpu) {
  TORCH_CHECK_VALUE(!weights.empty(), op, ": weights must be a non-empty list of [out, in] tensors");
  TORCH_CHECK_VALUE(biases.size() == weights.size(), op, ": got ", weights.size(), " weights but ", biases.size(),
                    " biases (use None for a layer without bias)");
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must have at least 1 dimension [..., in_features], got shape ",
                    shape_str(x));
  int64_t width = x.size(-1);
  for (size_t i = 0; i < weights.size(); ++i) {
    const Tensor& w = weights[i];
    TORCH_CHECK_VALUE(w.dim() == 2, op, ": weights[", i, "] must be 2-D [out, in], got shape ", shape_str(w));
    TORCH_CHECK_VALUE(w.size(1) == width, op, ": weights[", i, "].shape[1] = ", w.size(1), " does not match ",
                      i == 0 ? std::string("x.shape[-1]") : "weights[" + std::to_string(i - 1) + "].shape[0]",
                      " = ", width, " (weights[", i, "]: ", shape_str(w), ", x: ", shape_str(x), ")");
    if (i == 0) check_dtype(op, "x", x, gpu);
    TORCH_CHECK_TYPE(w.scalar_type() == x.scalar_type(), op, ": weights[", i, "] has dtype ", dtype_str(w),
                     " but x has dtype ", dtype_str(x), " (weights[", i, "]: ", shape_str(w), ")");
    TORCH_CHECK_VALUE(w.device() == x.device(), op, ": weights[", i, "] is on ", w.device(), " but x is on ",
                      x.device(), " (weights[", i, "]: ", shape_str(w), ")");
    const std::optional<Tensor> b = biases.get(i);
    if (b.has_value() && b->defined()) {
      TORCH_CHECK_VALUE(b->dim() == 1 && b->size(0) == w.size(0), op, ": biases[", i, "] must have shape [",
                        w.size(0), "] (weights[", i, "].shape[0]), got ", shape_str(*b));
      TORCH_CHECK_TYPE(b->scalar_type() == x.scalar_type(), op, ": biases[", i, "] has dtype ", dtype_str(*b),
                       " but x has dtype ", dtype_str(x));
      TORCH_CHECK_VALUE(b->device() == x.device(), op, ": biases[", i, "] is on ", b->device(), " but x is on ",
                        x.device());
    }
    width = w.size(0);
  }
}

// x, weight as linear_act; y (the saved output) and grad_y shaped like the op's output, with
// x's dtype and device.
void check_linear_act_backward(const char* op, const Tensor& grad_y, const Tensor& x, const Tensor& weight,
                               const Tensor& y, bool gpu) {
  check_linear_act(op, x, weight, std::nullopt, gpu);
  const std::vector<int64_t> y_shape = out_shape(x, weight.size(0));
  TORCH_CHECK_VALUE(y.sizes() == at::IntArrayRef(y_shape), op, ": y has shape ", shape_str(y), " but x ",
                    shape_str(x), " and weight ", shape_str(weight), " give outputs of shape ",
                    at::IntArrayRef(y_shape));
  TORCH_CHECK_VALUE(grad_y.sizes() == y.sizes(), op, ": grad_y has shape ", shape_str(grad_y), " but y has shape ",
                    shape_str(y));
  TORCH_CHECK_TYPE(grad_y.scalar_type() == x.scalar_type() && y.scalar_type() == x.scalar_type(), op,
                   ": grad_y (", dtype_str(grad_y), ") and y (", dtype_str(y), ") must have x's dtype ",
                   dtype_str(x), " (x: ", shape_str(x), ")");
  TORCH_CHECK_VALUE(grad_y.device() == x.device() && y.device() == x.device(), op, ": grad_y is on ",
                    grad_y.device(), " and y on ", y.device(), " but x is on ", x.device());
}

// input, target as mse_loss; grad: one value (mean, sum) or input's shape (none), input's dtype
// and device.
void check_mse_backward(const char* op, const Tensor& grad, const Tensor& input, const Tensor& target,
                        Reduction red, bool gpu) {
  check_mse(op, input, target, gpu);
  if (red == Reduction::None) {
    TORCH_CHECK_VALUE(grad.sizes() == input.sizes(), op, ": grad has shape ", shape_str(grad),
                      " but input has shape ", shape_str(input), " (reduction='none')");
  } else {
    TORCH_CHECK_VALUE(grad.numel() == 1, op, ": grad of a reduced loss must hold one value, got shape ",
                      shape_str(grad), " (input: ", shape_str(input), ")");
  }
  TORCH_CHECK_TYPE(grad.scalar_type() == input.scalar_type(), op, ": grad has dtype ", dtype_str(grad),
                   " but input has dtype ", dtype_str(input), " (shape ", shape_str(input), ")");
  TORCH_CHECK_VALUE(grad.device() == input.device(), op, ": grad is on ", grad.device(), " but input is on ",
                    input.device(), " (shape ", shape_str(input), ")");
}

int64_t leading_rows(const Tensor& x) {
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) rows *= x.size(d);
  return rows;
}

// A tensor the shape of the chain's output, [..., d_L] after x's leading dims (or, with
// allow_flat, flattened [M, d_L], M = the rows of x), with x's dtype and device.
static void check_like_chain_output(const char* op, const char* arg, const Tensor& t, const Tensor& x,
                                    at::TensorList weights, bool allow_flat) {
  const int64_t n = weights.back().size(0);
  const std::vector<int64_t> full = out_shape(x, n);
  const bool flat = allow_flat && t.dim() == 2 && t.size(0) == leading_rows(x) && t.size(1) == n;
  TORCH_CHECK_VALUE(t.sizes() == at::IntArrayRef(full) || flat, op, ": ", arg, " has shape ", shape_str(t),
                    " but the chain's output is ", at::IntArrayRef(full), " (x: ", shape_str(x), ", weights[",
                    weights.size() - 1, "]: ", shape_str(weights.back()), ")");
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), op, ": ", arg, " has dtype ", dtype_str(t),
                   " but x has dtype ", dtype_str(x), " (", arg, ": ", shape_str(t), ")");
  TORCH_CHECK_VALUE(t.device() == x.device(), op, ": ", arg, " is on ", t.device(), " but x is on ", x.device(),
                    " (", arg, ": ", shape_str(t), ")");
}

void check_mlp_target(const char* op, const Tensor& x, at::TensorList weights, const Tensor& target) {
  check_like_chain_output(op, "target", target, x, weights, /*allow_flat=*/false);
}

// x, weights as mlp (no biases); outputs[i] the saved output of layer i, [M, d_{i+1}] (rows of
// x); one need_bias flag per layer.
static void check_chain_saved(const char* op, const Tensor& x, at::TensorList weights, at::TensorList outputs,
                              at::IntArrayRef need_bias, bool gpu) {
  TORCH_CHECK_VALUE(outputs.size() == weights.size() && need_bias.size() == weights.size(), op, ": got ",
                    weights.size(), " weights, ", outputs.size(), " saved outputs and ", need_bias.size(),
                    " need_bias flags; they must match");
  c10::List<std::optional<Tensor>> none;
  for (size_t i = 0; i < weights.size(); ++i) none.push_back(std::nullopt);
  check_mlp(op, x, weights, none, gpu);
  const int64_t rows = leading_rows(x);
  for (size_t i = 0; i < outputs.size(); ++i) {
    const Tensor& y = outputs[i];
    TORCH_CHECK_VALUE(y.dim() == 2 && y.size(0) == rows && y.size(1) == weights[i].size(0), op, ": outputs[", i,
                      "] has shape ", shape_str(y), " but x ", shape_str(x), " and weights[", i, "] ",
                      shape_str(weights[i]), " give [", rows, ", ", weights[i].size(0), "]");
    TORCH_CHECK_TYPE(y.scalar_type() == x.scalar_type(), op, ": outputs[", i, "] has dtype ", dtype_str(y),
                     " but x has dtype ", dtype_str(x));
    TORCH_CHECK_VALUE(y.device() == x.device(), op, ": outputs[", i, "] is on ", y.device(), " but x is on ",
                      x.device());
  }
}

void check_mlp_backward(const char* op, const Tensor& grad, const Tensor& x, at::TensorList weights,
                        at::TensorList outputs, at::IntArrayRef need_bias, bool gpu) {
  check_chain_saved(op, x, weights, outputs, need_bias, gpu);
  check_like_chain_output(op, "grad", grad, x, weights, /*allow_flat=*/true);
}

void check_mlp_mse_backward(const char* op, const Tensor& grad, const Tensor& x, at::TensorList weights,
                            at::TensorList outputs, const Tensor& target, Reduction red, at::IntArrayRef need_bias,
                            bool gpu) {
  check_chain_saved(op, x, weights, outputs, need_bias, gpu);
  check_like_chain_output(op, "target", target, x, weights, /*allow_flat=*/false);
  if (red == Reduction::None) {
    TORCH_CHECK_VALUE(grad.sizes() == target.sizes(), op, ": grad has shape ", shape_str(grad),
                      " but reduction='none' needs target's shape ", shape_str(target));
  } else {
    TORCH_CHECK_VALUE(grad.numel() == 1, op, ": grad of a reduced loss must hold one value, got shape ",
                      shape_str(grad));
  }
  TORCH_CHECK_TYPE(grad.scalar_type() == x.scalar_type(), op, ": grad has dtype ", dtype_str(grad),
                   " but x has dtype ", dtype_str(x));
  TORCH_CHECK_VALUE(grad.device() == x.device(), op, ": grad is on ", grad.device(), " but x is on ", x.device());
}

Tensor flatten_rows(const Tensor& x) {
  return x.dim() == 2 ? x : x.reshape({leading_rows(x), x.size(-1)});  // (-1 cannot infer rows when K = 0)
}

std::vector<int64_t> out_shape(const Tensor& x, int64_t n) {
  std::vector<int64_t> s(x.sizes().begin(), x.sizes().end());
  s.back() = n;
  return s;
}

// ---------------------------------------------------------------- autograd

static const c10::TypedOperatorHandle<Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&,
                                             c10::string_view)>&
linear_act_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("aecomp::linear_act", "")
                       .typed<Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&, c10::string_view)>();
  return op;
}

using LinearBwdSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                        const Tensor&, c10::string_view, bool, bool, bool);
static const c10::TypedOperatorHandle<LinearBwdSig>& linear_act_backward_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("aecomp::linear_act_backward", "")
                       .typed<LinearBwdSig>();
  return op;
}

static const c10::TypedOperatorHandle<Tensor(const Tensor&, const Tensor&, c10::string_view)>& mse_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("aecomp::mse_loss", "")
                       .typed<Tensor(const Tensor&, const Tensor&, c10::string_view)>();
  return op;
}

using MseBwdSig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, c10::string_view,
                                             bool, bool);
static const c10::TypedOperatorHandle<MseBwdSig>& mse_backward_op() {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("aecomp::mse_loss_backward", "")
                       .typed<MseBwdSig>();
  return op;
}

// ---- second order
// The fused backward kernels return plain tensors: their results carry no graph. When the
// engine runs a backward with create_graph=True, GradMode is on inside it, and then each
// backward below is computed with differentiable ATen ops instead, so the gradient has a
// graph and second derivatives (gradient penalties, Hessian-vector products, gradgradcheck)
// are exact. Without create_graph (a plain .backward()) the fused kernels run as before.
//   linear_act: gz = g * act'(y) with ATen's own threshold_backward / sigmoid_backward on the
//     saved output y (y keeps its graph, so d/dy of act'(y) is taken too), dx = gz W,
//     dW = gz^T x, db = sum_rows gz.
//   mse_loss: d input = 2 (input - target) g / n, d target = -d input.
//   chains: the forward is recomputed from the saved inputs with at::linear + activation
//     (+ at::mse_loss) and autograd differentiates that with create_graph. Each input slot is
//     first aliased (a view), so a tensor passed in two slots (target = x, a repeated weight)
//     gets each slot's own gradient, which the engine then sums, as it does for the fast path.
static Tensor act_aten(const Tensor& z, Act a) {
  switch (a) {
    case Act::ReLU: return at::relu(z);
    case Act::Sigmoid: return at::sigmoid(z);
    default: return z;
  }
}

static int64_t reduction_enum(c10::string_view r) {
  switch (parse_reduction("aecomp::mse_loss", r)) {
    case Reduction::Sum: return at::Reduction::Sum;
    case Reduction::None: return at::Reduction::None;
    default: return at::Reduction::Mean;
  }
}

static Tensor mse_grad_input_aten(const Tensor& g, const Tensor& input, const Tensor& target,
                                  c10::string_view reduction) {
  Tensor d = (input - target) * g * 2;
  if (parse_reduction("aecomp::mse_loss", reduction) == Reduction::Mean) d = d / static_cast<double>(input.numel());
  return d;
}

// Slot views of the inputs that need a gradient (others pass through unchanged).
static variable_list alias_needed(const variable_list& inputs, const std::vector<bool>& need) {
  variable_list out(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i)
    out[i] = (need[i] && inputs[i].defined()) ? inputs[i].view_as(inputs[i]) : inputs[i];
  return out;
}

// d <out, grad> / d slot for each needed slot, with a graph; undefined elsewhere.
static variable_list grad_with_graph(const Tensor& out, const Tensor& grad, const variable_list& slots,
                                     const std::vector<bool>& need) {
  variable_list want;
  for (size_t i = 0; i < slots.size(); ++i)
    if (need[i] && slots[i].defined()) want.push_back(slots[i]);
  variable_list res(slots.size());
  if (want.empty()) return res;
  variable_list got = torch::autograd::grad({out}, want, {grad}, /*retain_graph=*/true, /*create_graph=*/true,
                                            /*allow_unused=*/true);
  size_t j = 0;
  for (size_t i = 0; i < slots.size(); ++i)
    if (need[i] && slots[i].defined()) res[i] = got[j++];
  return res;
}

// The chain from slot views: x, w_0..w_{L-1}, then the defined biases in order.
static Tensor chain_aten(const variable_list& slots, size_t L, const std::vector<int64_t>& has,
                         const std::vector<Act>& acts) {
  Tensor h = slots[0];
  size_t j = 0;
  for (size_t i = 0; i < L; ++i) {
    Tensor b = has[i] ? slots[1 + L + j++] : Tensor();
    h = act_aten(at::linear(h, slots[1 + i], b), acts[i]);
  }
  return h;
}

// y = act(x @ weight^T + bias). Saves x, weight and the output y (not the pre-activation):
// act'(.) is a function of y for all three activations (relu: 0 where y <= 0, so a NaN y passes
// the gradient as in torch; sigmoid: y (1 - y)).
class LinearActFunction : public torch::autograd::Function<LinearActFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight,
                        const std::optional<Tensor>& bias, c10::string_view activation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    Tensor y = linear_act_op().call(x, weight, bias, activation);
    ctx->save_for_backward({x, weight, y});
    ctx->saved_data["activation"] = std::string(activation);
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const std::string act = ctx->saved_data["activation"].toStringRef();
    const bool need_x = ctx->needs_input_grad(0);
    const bool need_w = ctx->needs_input_grad(1);
    const bool need_b = has_bias && ctx->needs_input_grad(2);
    Tensor g = grads[0];
    if (!g.defined()) return {Tensor(), Tensor(), Tensor(), Tensor()};
    if (at::GradMode::is_enabled()) {  // create_graph: differentiable ops (see "second order")
      const Tensor &x = saved[0], &w = saved[1], &y = saved[2];
      const Act a = parse_activation("aecomp::linear_act", act);
      Tensor gz = a == Act::ReLU ? at::threshold_backward(g, y, 0)
                  : a == Act::Sigmoid ? at::sigmoid_backward(g, y) : g;
      Tensor gz2 = gz.reshape({leading_rows(gz), w.size(0)});  // (-1 cannot infer the rows when out_features = 0)
      return {need_x ? gz.matmul(w) : Tensor(), need_w ? gz2.t().mm(flatten_rows(x)) : Tensor(),
              need_b ? gz2.sum(0) : Tensor(), Tensor()};
    }
    auto [gx, gw, gb] = linear_act_backward_op().call(g, saved[0], saved[1], saved[2], act, need_x, need_w, need_b);
    return {need_x ? gx : Tensor(), need_w ? gw : Tensor(), need_b ? gb : Tensor(), Tensor()};
  }
};

class MseLossFunction : public torch::autograd::Function<MseLossFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& target,
                        c10::string_view reduction) {
    at::AutoDispatchBelowADInplaceOrView guard;
    Tensor out = mse_op().call(input, target, reduction);
    ctx->save_for_backward({input, target});
    ctx->saved_data["reduction"] = std::string(reduction);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const std::string red = ctx->saved_data["reduction"].toStringRef();
    const bool need_i = ctx->needs_input_grad(0);
    const bool need_t = ctx->needs_input_grad(1);
    if (!grads[0].defined()) return {Tensor(), Tensor(), Tensor()};
    if (at::GradMode::is_enabled()) {  // create_graph: differentiable ops (see "second order")
      Tensor d = mse_grad_input_aten(grads[0], saved[0], saved[1], red);
      return {need_i ? d : Tensor(), need_t ? -d : Tensor(), Tensor()};
    }
    auto [gi, gt] = mse_backward_op().call(grads[0], saved[0], saved[1], red, need_i, need_t);
    return {need_i ? gi : Tensor(), need_t ? gt : Tensor(), Tensor()};
  }
};

Tensor linear_act_autograd(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias,
                           c10::string_view activation) {
  return LinearActFunction::apply(x, weight, bias, activation);
}

Tensor mse_loss_autograd(const Tensor& input, const Tensor& target, c10::string_view reduction) {
  return MseLossFunction::apply(input, target, reduction);
}

// ---------------------------------------------------------------- chain ops

using BiasList = c10::List<std::optional<Tensor>>;
using MlpFwdSig = std::vector<Tensor>(const Tensor&, at::TensorList, const BiasList&, c10::string_view);
using MlpBwdSig = std::vector<Tensor>(const Tensor&, const Tensor&, at::TensorList, at::TensorList, c10::string_view,
                                      bool, at::IntArrayRef);
using MlpMseBwdSig = std::vector<Tensor>(const Tensor&, const Tensor&, at::TensorList, at::TensorList,
                                         c10::string_view, const Tensor&, c10::string_view, bool, at::IntArrayRef);

static const c10::TypedOperatorHandle<MlpFwdSig>& mlp_forward_op() {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("aecomp::mlp_forward", "").typed<MlpFwdSig>();
  return op;
}
static const c10::TypedOperatorHandle<MlpBwdSig>& mlp_backward_op() {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("aecomp::mlp_backward", "").typed<MlpBwdSig>();
  return op;
}
static const c10::TypedOperatorHandle<MlpMseBwdSig>& mlp_mse_backward_op() {
  static auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("aecomp::mlp_mse_backward", "").typed<MlpMseBwdSig>();
  return op;
}

// Biases travel through autograd as the list of the defined ones plus a per-layer mask
// (autograd cannot take an undefined tensor as an input).
struct PackedBiases {
  std::vector<Tensor> defined;
  std::vector<int64_t> has;  // per layer: 1 if the layer has a bias
};

static PackedBiases pack_biases(const BiasList& biases) {
  PackedBiases p;
  for (size_t i = 0; i < biases.size(); ++i) {
    const std::optional<Tensor> b = biases.get(i);
    const bool has = b.has_value() && b->defined();
    p.has.push_back(has);
    if (has) p.defined.push_back(*b);
  }
  return p;
}

static PackedBiases pack_biases(const std::vector<std::optional<Tensor>>& biases) {
  BiasList l;
  for (const auto& b : biases) l.push_back(b);
  return pack_biases(l);
}

static BiasList unpack_biases(at::TensorList defined, const std::vector<int64_t>& has) {
  BiasList out;
  size_t j = 0;
  for (int64_t h : has) out.push_back(h ? std::optional<Tensor>(defined[j++]) : std::nullopt);
  return out;
}

// need_bias per layer, from autograd's view of the defined biases (slots first, first+1, ...).
static std::vector<int64_t> bias_mask(AutogradContext* ctx, const std::vector<int64_t>& has, size_t first) {
  std::vector<int64_t> need(has.size());
  size_t j = 0;
  for (size_t i = 0; i < has.size(); ++i) need[i] = has[i] ? ctx->needs_input_grad(first + j++) : 0;
  return need;
}

// Input slots as autograd counts them: x, weights (L), defined biases (nb), then `trailing` more.
static variable_list chain_grads(const std::vector<Tensor>& g, size_t L, const std::vector<int64_t>& has,
                                 size_t trailing, AutogradContext* ctx, const std::vector<int64_t>& need_bias) {
  size_t nb = 0;
  for (int64_t h : has) nb += h;
  variable_list out(1 + L + nb + trailing);
  if (ctx->needs_input_grad(0)) out[0] = g[0];
  size_t j = 0;
  for (size_t i = 0; i < L; ++i) {
    if (ctx->needs_input_grad(1 + i)) out[1 + i] = g[1 + i];
    if (has[i]) {
      if (need_bias[i]) out[1 + L + j] = g[1 + L + i];
      ++j;
    }
  }
  return out;
}

// y = the chain applied to x. Saves x, the weights and every layer's output.
class MlpFunction : public torch::autograd::Function<MlpFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, at::TensorList weights, at::TensorList biases,
                        std::vector<int64_t> has_bias, c10::string_view activations) {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::vector<Tensor> outs = mlp_forward_op().call(x, weights, unpack_biases(biases, has_bias), activations);
    std::vector<Tensor> saved{x};
    saved.insert(saved.end(), weights.begin(), weights.end());
    saved.insert(saved.end(), outs.begin(), outs.end());
    saved.insert(saved.end(), biases.begin(), biases.end());  // only the second-order path reads them
    ctx->save_for_backward(saved);
    ctx->saved_data["activations"] = std::string(activations);
    ctx->saved_data["has_bias"] = has_bias;
    return outs.back().view(out_shape(x, weights.back().size(0)));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const std::vector<int64_t> has = ctx->saved_data["has_bias"].toIntVector();
    const size_t L = has.size();
    // needs_input_grad is only valid here: in forward, a call with no input requiring grad has no edges
    const std::vector<int64_t> need_bias = bias_mask(ctx, has, 1 + L);
    if (grads[0].defined() && at::GradMode::is_enabled()) {  // create_graph (see "second order")
      variable_list slots{saved[0]};
      slots.insert(slots.end(), saved.begin() + 1, saved.begin() + 1 + L);
      slots.insert(slots.end(), saved.begin() + 1 + 2 * L, saved.end());
      std::vector<bool> need(slots.size());
      for (size_t k = 0; k < slots.size(); ++k) need[k] = ctx->needs_input_grad(k);
      variable_list a = alias_needed(slots, need);
      const auto acts = parse_activations("aecomp::mlp", ctx->saved_data["activations"].toStringRef(), L);
      variable_list out = grad_with_graph(chain_aten(a, L, has, acts), grads[0], a, need);
      out.resize(out.size() + 2);  // has_bias, activations
      return out;
    }
    std::vector<Tensor> w(saved.begin() + 1, saved.begin() + 1 + L), outs(saved.begin() + 1 + L, saved.begin() + 1 + 2 * L);
    std::vector<Tensor> g;
    if (grads[0].defined())
      g = mlp_backward_op().call(grads[0], saved[0], w, outs, ctx->saved_data["activations"].toStringRef(),
                                 ctx->needs_input_grad(0), need_bias);
    else
      g.assign(1 + 2 * L, Tensor());
    return chain_grads(g, L, has, 2, ctx, need_bias);
  }
};

// mse(chain(x), target): the fused loss entry. The backward forms the output layer's gz from
// the loss gradient in one pass (mlp_mse_backward).
class MlpMseFunction : public torch::autograd::Function<MlpMseFunction> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, at::TensorList weights, at::TensorList biases,
                        std::vector<int64_t> has_bias, c10::string_view activations, const Tensor& target,
                        c10::string_view reduction) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const char* op = "aecomp::mlp_mse_loss";
    parse_reduction(op, reduction);
    // the target before the chain runs (mlp_forward checks x and the weights themselves)
    if (!weights.empty() && weights.back().dim() == 2 && x.dim() >= 1) check_mlp_target(op, x, weights, target);
    std::vector<Tensor> outs = mlp_forward_op().call(x, weights, unpack_biases(biases, has_bias), activations);
    Tensor y = outs.back().view(out_shape(x, weights.back().size(0)));
    Tensor loss = mse_op().call(y, target, reduction);
    std::vector<Tensor> saved{x, target};
    saved.insert(saved.end(), weights.begin(), weights.end());
    saved.insert(saved.end(), outs.begin(), outs.end());
    saved.insert(saved.end(), biases.begin(), biases.end());  // only the second-order path reads them
    ctx->save_for_backward(saved);
    ctx->saved_data["activations"] = std::string(activations);
    ctx->saved_data["reduction"] = std::string(reduction);
    ctx->saved_data["has_bias"] = has_bias;
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const std::vector<int64_t> has = ctx->saved_data["has_bias"].toIntVector();
    const size_t L = has.size();
    // needs_input_grad is only valid here: in forward, a call with no input requiring grad has no edges
    const std::vector<int64_t> need_bias = bias_mask(ctx, has, 1 + L);
    const Tensor& x = saved[0];
    const Tensor& target = saved[1];
    const std::string red = ctx->saved_data["reduction"].toStringRef();
    if (grads[0].defined() && at::GradMode::is_enabled()) {  // create_graph (see "second order")
      variable_list slots{x};
      slots.insert(slots.end(), saved.begin() + 2, saved.begin() + 2 + L);
      slots.insert(slots.end(), saved.begin() + 2 + 2 * L, saved.end());
      slots.push_back(target);
      std::vector<bool> need(slots.size());
      for (size_t k = 0; k < slots.size(); ++k) need[k] = ctx->needs_input_grad(k);
      variable_list a = alias_needed(slots, need);
      const auto acts = parse_activations("aecomp::mlp_mse_loss", ctx->saved_data["activations"].toStringRef(), L);
      Tensor loss = at::mse_loss(chain_aten(a, L, has, acts), a.back(), reduction_enum(red));
      variable_list g2 = grad_with_graph(loss, grads[0], a, need);
      variable_list out(g2.begin(), g2.end() - 1);
      out.insert(out.end(), {Tensor(), Tensor(), g2.back(), Tensor()});  // has_bias, activations, target, reduction
      return out;
    }
    std::vector<Tensor> w(saved.begin() + 2, saved.begin() + 2 + L),
        outs(saved.begin() + 2 + L, saved.begin() + 2 + 2 * L);
    std::vector<Tensor> g;
    if (grads[0].defined())
      g = mlp_mse_backward_op().call(grads[0], x, w, outs, ctx->saved_data["activations"].toStringRef(), target, red,
                                     ctx->needs_input_grad(0), need_bias);
    else
      g.assign(1 + 2 * L, Tensor());
    // trailing slots: has_bias, activations, target, reduction
    variable_list out = chain_grads(g, L, has, 4, ctx, need_bias);
    // needs_input_grad counts only tensor inputs (target is the one after the biases); the
    // returned list counts every input (has_bias and activations sit before target).
    const size_t target_slot = out.size() - 2;
    if (grads[0].defined() && ctx->needs_input_grad(target_slot - 2)) {
      // d loss / d target = -2 (y - t) g / n: the one term that does not pass through the chain
      Tensor y = outs.back().view(target.sizes());
      out[target_slot] = std::get<1>(mse_backward_op().call(grads[0], y, target, red, false, true));
    }
    return out;
  }
};

Tensor mlp_autograd(const Tensor& x, at::TensorList weights, const BiasList& biases, c10::string_view activations) {
  PackedBiases p = pack_biases(biases);
  return MlpFunction::apply(x, weights, at::TensorList(p.defined), p.has, activations);
}

Tensor mlp_mse_loss_autograd(const Tensor& x, at::TensorList weights, const BiasList& biases,
                             c10::string_view activations, const Tensor& target, c10::string_view reduction) {
  PackedBiases p = pack_biases(biases);
  return MlpMseFunction::apply(x, weights, at::TensorList(p.defined), p.has, activations, target, reduction);
}

// mse(chain(x), target) and its parameter gradients in ONE call, without the autograd
// engine: what a fused training step needs. Returns (loss, [dW_0..dW_{L-1}], [db_0..db_{L-1}]);
// db_i is None for a layer without bias.
static std::tuple<Tensor, std::vector<Tensor>, std::vector<std::optional<Tensor>>> mlp_mse_value_and_grad(
    const Tensor& x, const std::vector<Tensor>& weights, const std::vector<std::optional<Tensor>>& biases,
    const std::string& activations, const Tensor& target, const std::string& reduction) {
  at::AutoDispatchBelowADInplaceOrView guard;
  at::NoGradGuard no_grad;
  BiasList bl;
  for (const auto& b : biases) bl.push_back(b);
  std::vector<Tensor> outs = mlp_forward_op().call(x, weights, bl, activations);
  Tensor y = outs.back().view(out_shape(x, weights.back().size(0)));
  Tensor loss = mse_op().call(y, target, reduction);
  const PackedBiases p = pack_biases(biases);
  auto g = mlp_mse_backward_op().call(at::ones({}, loss.options()), x, weights, outs, activations, target,
                                      reduction, false, p.has);
  const size_t L = weights.size();
  std::vector<Tensor> gw(g.begin() + 1, g.begin() + 1 + L);
  std::vector<std::optional<Tensor>> gb(L);
  for (size_t i = 0; i < L; ++i)
    if (p.has[i]) gb[i] = g[1 + L + i];
  return {loss, gw, gb};
}

static Tensor mlp_py(const Tensor& x, const std::vector<Tensor>& weights,
                     const std::vector<std::optional<Tensor>>& biases, const std::string& activations) {
  PackedBiases p = pack_biases(biases);
  return MlpFunction::apply(x, at::TensorList(weights), at::TensorList(p.defined), p.has, activations);
}

static Tensor mlp_mse_loss_py(const Tensor& x, const std::vector<Tensor>& weights,
                              const std::vector<std::optional<Tensor>>& biases, const std::string& activations,
                              const Tensor& target, const std::string& reduction) {
  PackedBiases p = pack_biases(biases);
  return MlpMseFunction::apply(x, at::TensorList(weights), at::TensorList(p.defined), p.has, activations, target,
                               reduction);
}

// What was compiled into this extension, for `aecomp info`.
static pybind11::dict build_info() {
  pybind11::dict d;
#ifdef AECOMP_WITH_CUDA
  d["cuda"] = true;
#ifdef AECOMP_CUDA_ARCHS
  d["cuda_archs"] = std::string(AECOMP_CUDA_ARCHS);
#else
  d["cuda_archs"] = std::string("");
#endif
#else
  d["cuda"] = false;
  d["cuda_archs"] = std::string("");
#endif
  d["torch"] = std::string(TORCH_VERSION);
  return d;
}

namespace cpu {
void def_train_step(pybind11::module& mod);  // cpu/train_step.cpp
void def_train_step_bf16(pybind11::module& mod);  // cpu/train_step_bf16.cpp

// The CPU kernels' instruction-set level (cpu/isa.h), for `aecomp info` and the tests.
static pybind11::dict isa_runs_dict() {
  pybind11::dict runs;
  for (int l = 0; l < kIsaLevels; ++l) runs[isa_level_name(static_cast<IsaLevel>(l))] = isa_runs(static_cast<IsaLevel>(l));
  return runs;
}

static pybind11::dict isa_info() {
  pybind11::dict d, features;
  const IsaFeature all[] = {IsaFeature::Avx512Vnni, IsaFeature::Avx512Bf16, IsaFeature::AmxTile, IsaFeature::AmxInt8,
                            IsaFeature::AmxBf16};
  const char* names[] = {"avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"};
  for (size_t i = 0; i < 5; ++i) features[names[i]] = isa_hardware_has(all[i]);
  d["hardware"] = std::string(isa_level_name(hardware_isa_level()));
  d["level"] = std::string(isa_level_name(isa_level()));  // raises for a refused AECOMP_CPU_ISA
  d["hardware_features"] = features;
  d["runs"] = isa_runs_dict();
  return d;
}

static void def_isa(pybind11::module& mod) {
  mod.def("_cpu_isa_info", &isa_info,
          "{'level', 'hardware', 'hardware_features', 'runs'}: the CPU kernels' instruction-set level "
          "(capped by AECOMP_CPU_ISA) and how many dispatched calls ran each level's code");
  mod.def("_cpu_isa_level", [] { return std::string(isa_level_name(isa_level())); },
          "the instruction-set level the CPU kernels run (generic | avx2 | avx512 | amx)");
  mod.def("_cpu_isa_runs", &isa_runs_dict, "{level name: dispatched calls that ran that level's code}");
  mod.def("_cpu_isa_reset", &isa_reset_counts, "zero the per-level run counters");
  mod.def("_cpu_isa_parse", [](const std::string& text) -> std::optional<std::string> {
    IsaLevel level;
    if (!parse_isa_level(text.c_str(), &level)) return std::nullopt;
    return std::string(isa_level_name(level));
  }, "the level an AECOMP_CPU_ISA value names (case-insensitive), or None when it names none");
}
}  // namespace cpu

}  // namespace aecomp

// Schemas. Backward ops take an output mask; a gradient that is not needed comes back as an
// empty tensor (shape [0]), never computed.
TORCH_LIBRARY(aecomp, m) {
  m.def("linear_act(Tensor x, Tensor weight, Tensor? bias, str activation) -> Tensor");
  m.def(
      "linear_act_backward(Tensor grad_y, Tensor x, Tensor weight, Tensor y, str activation, "
      "bool need_x, bool need_weight, bool need_bias) -> (Tensor, Tensor, Tensor)");
  m.def("mse_loss(Tensor input, Tensor target, str reduction) -> Tensor");
  m.def(
      "mse_loss_backward(Tensor grad, Tensor input, Tensor target, str reduction, bool need_input, "
      "bool need_target) -> (Tensor, Tensor)");
  // Chains: `activations` is one comma-separated string, one entry per layer ("relu,relu,none").
  m.def("mlp(Tensor x, Tensor[] weights, Tensor?[] biases, str activations) -> Tensor");
  m.def("mlp_forward(Tensor x, Tensor[] weights, Tensor?[] biases, str activations) -> Tensor[]");
  m.def(
      "mlp_backward(Tensor grad, Tensor x, Tensor[] weights, Tensor[] outputs, str activations, bool need_x, "
      "int[] need_bias) -> Tensor[]");
  m.def(
      "mlp_mse_loss(Tensor x, Tensor[] weights, Tensor?[] biases, str activations, Tensor target, "
      "str reduction) -> Tensor");
  m.def(
      "mlp_mse_backward(Tensor grad, Tensor x, Tensor[] weights, Tensor[] outputs, str activations, "
      "Tensor target, str reduction, bool need_x, int[] need_bias) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(aecomp, Autograd, m) {
  m.impl("linear_act", &aecomp::linear_act_autograd);
  m.impl("mse_loss", &aecomp::mse_loss_autograd);
  m.impl("mlp", &aecomp::mlp_autograd);
  m.impl("mlp_mse_loss", &aecomp::mlp_mse_loss_autograd);
}

#ifdef AECOMP_WITH_CUDA
namespace aecomp {
std::string cuda_kernel_image_error();  // csrc/cuda/ops_cuda.cpp
}
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.doc() = "aecomp C++/CUDA kernels; the ops are registered as torch.ops.aecomp.*";
  // Direct entry points: the same dispatcher ops as torch.ops.aecomp.*, without the Python
  // op-lookup overhead (aecomp.ops uses these outside torch.compile).
  mod.def("linear_act", &aecomp::linear_act_autograd, "act(x @ weight.T + bias) with autograd",
          pybind11::arg("x"), pybind11::arg("weight"), pybind11::arg("bias"), pybind11::arg("activation"));
  mod.def("mse_loss", &aecomp::mse_loss_autograd, "MSE loss with autograd", pybind11::arg("input"),
          pybind11::arg("target"), pybind11::arg("reduction"));
  mod.def("mlp", &aecomp::mlp_py, "a chain of linear_act layers with autograd", pybind11::arg("x"),
          pybind11::arg("weights"), pybind11::arg("biases"), pybind11::arg("activations"));
  mod.def("mlp_mse_loss", &aecomp::mlp_mse_loss_py, "mse_loss(mlp(x), target) with the fused loss entry",
          pybind11::arg("x"), pybind11::arg("weights"), pybind11::arg("biases"), pybind11::arg("activations"),
          pybind11::arg("target"), pybind11::arg("reduction"));
  mod.def("mlp_mse_value_and_grad", &aecomp::mlp_mse_value_and_grad,
          "(loss, weight grads, bias grads) of mse_loss(mlp(x), target) in one call, no autograd",
          pybind11::arg("x"), pybind11::arg("weights"), pybind11::arg("biases"), pybind11::arg("activations"),
          pybind11::arg("target"), pybind11::arg("reduction"));
  mod.def("build_info", &aecomp::build_info, "what this extension was built with");
#ifdef AECOMP_WITH_CUDA
  mod.def("cuda_kernel_image_error", &aecomp::cuda_kernel_image_error,
          "'' when the CUDA kernels have an image for the current GPU, else the runtime's error");
#endif
  aecomp::cpu::def_train_step(mod);  // the fused training step and the microkernel entry points
  aecomp::cpu::def_train_step_bf16(mod);  // the bf16 step on the matrix engine (brgemm)
  aecomp::cpu::def_isa(mod);
}
