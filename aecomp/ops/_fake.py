"""Fake (meta) implementations of the C++ ops, so torch.compile can trace them.

They compute output shapes only, and raise the errors the kernels raise (every argument of
every op, backward ops included: the checks of ``_checks``, which mirror csrc/ops.cpp).
"""
from __future__ import annotations

import torch

from . import _checks


def register() -> None:
    @torch.library.register_fake("aecomp::linear_act")
    def _linear_act_fake(x, weight, bias, activation):
        _checks.check_linear_act("aecomp::linear_act", x, weight, bias, activation)
        return x.new_empty((*x.shape[:-1], weight.shape[0]))

    @torch.library.register_fake("aecomp::linear_act_backward")
    def _linear_act_backward_fake(grad_y, x, weight, y, activation, need_x, need_weight, need_bias):
        _checks.check_linear_act_backward("aecomp::linear_act_backward", grad_y, x, weight, y, activation)
        gx = x.new_empty(x.shape) if need_x else x.new_empty((0,))
        gw = weight.new_empty(weight.shape) if need_weight else weight.new_empty((0,))
        gb = weight.new_empty((weight.shape[0],)) if need_bias else weight.new_empty((0,))
        return gx, gw, gb

    @torch.library.register_fake("aecomp::mse_loss")
    def _mse_fake(input, target, reduction):
        _checks.check_mse("aecomp::mse_loss", input, target, reduction)
        if reduction == "none":
            return input.new_empty(input.shape)
        return input.new_empty(())

    def _chain_outputs(x, weights):
        rows = 1
        for d in x.shape[:-1]:
            rows = rows * d
        return [x.new_empty((rows, w.shape[0])) for w in weights]

    def _check_chain(op, x, weights, biases, activations):
        _checks.check_chain(op, x, list(weights), list(biases), activations)

    @torch.library.register_fake("aecomp::mlp")
    def _mlp_fake(x, weights, biases, activations):
        _check_chain("aecomp::mlp", x, weights, biases, activations)
        return x.new_empty((*x.shape[:-1], weights[-1].shape[0]))

    @torch.library.register_fake("aecomp::mlp_forward")
    def _mlp_forward_fake(x, weights, biases, activations):
        _check_chain("aecomp::mlp", x, weights, biases, activations)
        return _chain_outputs(x, weights)

    def _chain_grads(x, weights, need_x, need_bias):
        gx = x.new_empty(x.shape) if need_x else x.new_empty((0,))
        gw = [w.new_empty(w.shape) for w in weights]
        gb = [w.new_empty((w.shape[0],)) if nb else w.new_empty((0,)) for w, nb in zip(weights, need_bias)]
        return [gx, *gw, *gb]

    @torch.library.register_fake("aecomp::mlp_backward")
    def _mlp_backward_fake(grad, x, weights, outputs, activations, need_x, need_bias):
        op = "aecomp::mlp_backward"
        _checks.check_chain_backward(op, x, list(weights), list(outputs), activations, need_bias)
        _checks.check_chain_grad(op, grad, x, weights, [(_checks.rows_of(x), weights[-1].shape[0]),
                                                        _checks.chain_out_shape(x, weights)])
        return _chain_grads(x, weights, need_x, need_bias)

    @torch.library.register_fake("aecomp::mlp_mse_loss")
    def _mlp_mse_fake(x, weights, biases, activations, target, reduction):
        _check_chain("aecomp::mlp_mse_loss", x, weights, biases, activations)
        _checks.check_chain_target("aecomp::mlp_mse_loss", x, weights, target, reduction)
        out = x.new_empty((*x.shape[:-1], weights[-1].shape[0]))
        return out if reduction == "none" else x.new_empty(())

    @torch.library.register_fake("aecomp::mlp_mse_backward")
    def _mlp_mse_backward_fake(grad, x, weights, outputs, activations, target, reduction, need_x, need_bias):
        op = "aecomp::mlp_mse_backward"
        _checks.check_chain_backward(op, x, list(weights), list(outputs), activations, need_bias)
        _checks.check_chain_target(op, x, weights, target, reduction)
        _checks.check_chain_grad(op, grad, x, weights, [tuple(target.shape) if reduction == "none" else ()])
        return _chain_grads(x, weights, need_x, need_bias)

    @torch.library.register_fake("aecomp::mse_loss_backward")
    def _mse_backward_fake(grad, input, target, reduction, need_input, need_target):
        _checks.check_mse_backward("aecomp::mse_loss_backward", grad, input, target, reduction)
        gi = input.new_empty(input.shape) if need_input else input.new_empty((0,))
        gt = target.new_empty(target.shape) if need_target else target.new_empty((0,))
        return gi, gt

    # packed-weight inference (aecomp::packed_mlp, csrc/cpu/packed_mlp.cpp)
    from . import _packed

    _packed.register_fake()
