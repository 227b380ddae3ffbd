// What the fused training steps share (train_step.cpp: float32 microkernels;
// train_step_bf16.cpp: bfloat16 brgemm): the argument checks and the per-parameter optimizer
// update, built from the hyper-parameter rows and torch.optim's state tensors that
// aecomp/train/fused.py passes.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "../aecomp.h"
#include "bf16_chain.h"
#include "dense_gemm.h"

namespace aecomp {
namespace cpu {

struct ParamUpdate {
  bool active = false;
  mk::OptimArgs opt;
  float* p = nullptr;
  float* m = nullptr;
  float* s = nullptr;
  const at::Tensor* param = nullptr;
  at::Tensor step;  // Adam's step counter (one element, float32 or float64)
  double beta1 = 0, beta2 = 0;
};

// Checks parameter i's update (group < 0: not updated) and gathers its pointers and
// hyper-parameters, changing NOTHING: every parameter is planned before any is touched.
ParamUpdate plan_update(size_t i, const at::Tensor& p, const std::vector<double>& hyper, int64_t group,
                        const std::vector<std::optional<at::Tensor>>& state1,
                        const std::vector<std::optional<at::Tensor>>& state2,
                        const std::vector<std::optional<at::Tensor>>& steps, bool first);
// The side effects before the update: the version counter, Adam's step count and its bias
// corrections (in double, like torch.optim.Adam).
void begin_update(ParamUpdate& u, const std::vector<double>& hyper, int64_t group);
// Every parameter's update, in parameter order W_0..W_{L-1}, b_0..b_{L-1} (plan_update for
// each), and refuses two slots that share memory, one of them updated: all checked, nothing
// changed yet (begin_update comes after).
std::vector<ParamUpdate> plan_updates(const char* op, const std::vector<at::Tensor>& weights,
                                      const std::vector<std::optional<at::Tensor>>& biases,
                                      const std::vector<double>& hyper, const std::vector<int64_t>& group_of,
                                      const std::vector<std::optional<at::Tensor>>& state1,
                                      const std::vector<std::optional<at::Tensor>>& state2,
                                      const std::vector<std::optional<at::Tensor>>& steps,
                                      const std::vector<bool>& first);

// The argument checks of a fused step (x, the chain, the target, the per-parameter lists); the
// activations and the reduction ('mean' or 'sum').
std::tuple<std::vector<Act>, Reduction> check_step_args(
    const char* op, const at::Tensor& x, const std::vector<at::Tensor>& weights,
    const std::vector<std::optional<at::Tensor>>& biases, const std::string& activations, const at::Tensor& target,
    const std::string& reduction, const std::vector<int64_t>& group_of,
    const std::vector<std::optional<at::Tensor>>& state1, const std::vector<std::optional<at::Tensor>>& state2,
    const std::vector<std::optional<at::Tensor>>& steps, const std::vector<bool>& first);

// A bf16 chain (bf16_chain.h) over float32 contiguous CPU weights / biases, batch M; checks them
// (naming `op`) and leaves every buffer pointer null (mlp_bf16.cpp).
bf16c::Chain bf16_chain_from(const char* op, int64_t M, const std::vector<at::Tensor>& weights,
                             const std::vector<std::optional<at::Tensor>>& biases, const std::string& activations);

}  // namespace cpu
}  // namespace aecomp
