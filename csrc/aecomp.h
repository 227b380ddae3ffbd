// Declarations shared by the op registration (ops.cpp), the CPU kernels (cpu/) and the
// CUDA glue (cuda/). Kernel bodies never include this file: they take raw pointers.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <tuple>

namespace aecomp {

enum class Act : int { None = 0, ReLU = 1, Sigmoid = 2 };

// Parses "none" | "relu" | "sigmoid"; raises ValueError naming `op` otherwise.
Act parse_activation(const char* op, c10::string_view activation);
const char* act_name(Act a);

enum class Reduction : int { None = 0, Mean = 1, Sum = 2 };
Reduction parse_reduction(const char* op, c10::string_view reduction);

// "[4, 7]" for error messages.
std::string shape_str(const at::Tensor& t);

// Input validation shared by every device's kernels. Each raises ValueError / TypeError
// naming the op, the argument and the shapes. `gpu` selects the CUDA kernels' dtypes.
void check_linear_act(const char* op, const at::Tensor& x, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias, bool gpu);
void check_mse(const char* op, const at::Tensor& input, const at::Tensor& target, bool gpu);

// The backward ops' arguments: the forward's checks, plus every saved tensor and incoming
// gradient shaped, typed and placed as the forward made it (see ops.cpp for each rule).
void check_linear_act_backward(const char* op, const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& y, bool gpu);
void check_mse_backward(const char* op, const at::Tensor& grad, const at::Tensor& input, const at::Tensor& target,
                        Reduction red, bool gpu);

// A chain's activations travel as one comma-separated string ("relu,relu,none"): one entry
// per layer. Raises ValueError naming `op` when the count differs from n_layers.
std::vector<Act> parse_activations(const char* op, c10::string_view activations, size_t n_layers);
// Checks a whole chain: x [..., d0], weights[i] [d_{i+1}, d_i], biases[i] [d_{i+1}] or None.
void check_mlp(const char* op, const at::Tensor& x, at::TensorList weights,
               const c10::List<std::optional<at::Tensor>>& biases, bool gpu);

// The target of a fused chain loss: the chain output's shape [..., d_L], x's dtype and device.
void check_mlp_target(const char* op, const at::Tensor& x, at::TensorList weights, const at::Tensor& target);
// The chain backward ops: x and weights as mlp; outputs[i] [M, d_{i+1}]; one need_bias flag per
// layer; grad the chain output's shape (mlp_backward) or the loss's (mlp_mse_backward).
void check_mlp_backward(const char* op, const at::Tensor& grad, const at::Tensor& x, at::TensorList weights,
                        at::TensorList outputs, at::IntArrayRef need_bias, bool gpu);
void check_mlp_mse_backward(const char* op, const at::Tensor& grad, const at::Tensor& x, at::TensorList weights,
                            at::TensorList outputs, const at::Tensor& target, Reduction red,
                            at::IntArrayRef need_bias, bool gpu);

// M, the rows of x [..., K] once its leading dims are flattened (also when K = 0).
int64_t leading_rows(const at::Tensor& x);
// x [..., K] -> [M, K] view (or copy when the strides do not allow a view).
at::Tensor flatten_rows(const at::Tensor& x);
// Output shape: x's leading dims with the last replaced by n.
std::vector<int64_t> out_shape(const at::Tensor& x, int64_t n);

}  // namespace aecomp
