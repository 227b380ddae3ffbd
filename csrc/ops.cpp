// Op schemas, shared input checks, autograd, and the pybind11 module `aecomp._C`.
//
// Every op is defined once here with TORCH_LIBRARY(aecomp, m); the device kernels register
// themselves per dispatch key (cpu/*.cpp for CPU, cuda/*.cpp for CUDA); autograd is one
// torch::autograd::Function per op registered for the Autograd key, so it serves every
// device. Fake (meta) implementations for torch.compile live in aecomp/ops/_fake.py.
#include "aecomp.h"

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

Tensor flatten_rows(const Tensor& x) {
  return x.dim() == 2 ? x : x.reshape({-1, x.size(-1)});
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

// y = act(x @ weight^T + bias). Saves x, weight and the output y (not the pre-activation):
// act'(.) is a function of y for all three activations (relu: y > 0; sigmoid: y (1 - y)).
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
}

TORCH_LIBRARY_IMPL(aecomp, Autograd, m) {
  m.impl("linear_act", &aecomp::linear_act_autograd);
  m.impl("mse_loss", &aecomp::mse_loss_autograd);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.doc() = "aecomp C++/CUDA kernels; the ops are registered as torch.ops.aecomp.*";
  // Direct entry points: the same dispatcher ops as torch.ops.aecomp.*, without the Python
  // op-lookup overhead (aecomp.ops uses these outside torch.compile).
  mod.def("linear_act", &aecomp::linear_act_autograd, "act(x @ weight.T + bias) with autograd",
          pybind11::arg("x"), pybind11::arg("weight"), pybind11::arg("bias"), pybind11::arg("activation"));
  mod.def("mse_loss", &aecomp::mse_loss_autograd, "MSE loss with autograd", pybind11::arg("input"),
          pybind11::arg("target"), pybind11::arg("reduction"));
  mod.def("build_info", &aecomp::build_info, "what this extension was built with");
}
