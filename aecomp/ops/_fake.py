"""Fake (meta) implementations of the C++ ops, so torch.compile can trace them.

They compute output shapes only, and raise the same shape errors the kernels raise.
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

    @torch.library.register_fake("aecomp::mse_loss_backward")
    def _mse_backward_fake(grad, input, target, reduction, need_input, need_target):
        gi = input.new_empty(input.shape) if need_input else input.new_empty((0,))
        gt = target.new_empty(target.shape) if need_target else target.new_empty((0,))
        return gi, gt
