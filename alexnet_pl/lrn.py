"""The paper's local response normalisation (section 3.3) with one fused forward and one fused
backward, normalising within each tower when the network is split in two (model.groups=2).

nn.LocalResponseNorm builds its result from about ten tensor operations (square, pad, a 3-D average
pool, scale, power, divide) and autograd keeps most of their outputs for its backward: in the eager
paper network its two layers take more GPU time than the five convolutions (issue 12: the network
without them runs 2.6x faster). Here the forward and the backward are each one explicit formula,

    d  = k + (alpha / n) * window_sum(x^2)                 y = x * d^-beta
    dx = g * d^-beta - (2 * alpha * beta / n) * x * window_sum'(g * y / d)

(window_sum' is the mirrored window, which is the same window when n is odd). The backward keeps x
and d (in float32) from the forward: its window then reads only x, g and d at neighbouring
channels, which one kernel can do, where recomputing d there would need an intermediate buffer and a
second kernel. On CUDA each formula runs as a torch.compile'd function, so even an eager network
gets a kernel or two each way; inside a torch.compile'd network the forward formula is traced as
plain operations, autograd derives its backward and inductor fuses both with their neighbours.
On the CPU both stay plain eager operations: no compile time for CPU runs and the tests. The
arithmetic is in float32 whatever the input's dtype (bf16 under autocast), as cuDNN's
normalisations do; the result has the input's dtype.
"""

import functools
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from alexnet_pl import private_api


def window_sum(t: torch.Tensor, before: int, after: int, groups: int) -> torch.Tensor:
    """For each channel c, the sum of channels c - before .. c + after, counting channels outside
    the tensor, or outside c's tower when the channels are split into `groups` towers, as zero."""
    towers = t.unflatten(1, (groups, t.shape[1] // groups))  # (N, towers, channels per tower, ...)
    channels = towers.shape[2]
    # F.pad lists the last dimension first: nothing on the spatial dimensions, zeros on each end of
    # a tower's channels, so the window never reaches into the other tower.
    padded = F.pad(towers, (0, 0) * (t.dim() - 2) + (before, after))
    total = padded.narrow(2, 0, channels)
    for offset in range(1, before + after + 1):
        total = total + padded.narrow(2, offset, channels)
    return total.flatten(1, 2)


def in_layout_of(result: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """result in x's memory layout: a compiled kernel may otherwise pick its own, and the next
    convolution would pay for a transpose (channels_last is what cuDNN's bf16 kernels read)."""
    channels_last = torch.channels_last
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=channels_last):
        return result.contiguous(memory_format=channels_last)
    return result


def lrn_forward(
    x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """y, and d (float32) for the backward."""
    x32 = x.float()
    d = k + (alpha / size) * window_sum(x32 * x32, size // 2, (size - 1) // 2, groups)
    # d in x's layout too: the backward kernel then reads x, d and g with the same strides.
    return in_layout_of((x32 * d.pow(-beta)).to(x.dtype), x), in_layout_of(d, x)


def lrn_backward(
    x: torch.Tensor,
    d: torch.Tensor,
    grad: torch.Tensor,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    groups: int,
) -> torch.Tensor:
    x32, g32 = x.float(), grad.float()
    scale = d.pow(-beta)
    # Channel j enters the windows of channels j - after .. j + before: the mirrored window.
    spread = window_sum(g32 * x32 * scale / d, (size - 1) // 2, size // 2, groups)
    return in_layout_of((g32 * scale - (2 * alpha * beta / size) * x32 * spread).to(x.dtype), x)


@functools.cache
def compiled_kernels(
    size: int, alpha: float, beta: float, k: float, groups: int
) -> tuple[Callable, Callable, Callable]:
    """The formulas compiled for one set of constants, each one fused GPU kernel: the forward
    keeping d for a backward, the forward alone (evaluation: d is not written), the backward.
    Compiled on first use, once per process; the constants are baked in, the shapes are not."""

    def forward_for_backward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return lrn_forward(x, size, alpha, beta, k, groups)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return lrn_forward(x, size, alpha, beta, k, groups)[0]

    def backward(x: torch.Tensor, d: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return lrn_backward(x, d, grad, size, alpha, beta, k, groups)

    # dynamic=True: one compiled kernel serves every shape (both LRN layers, training and
    # validation batches); compiling per shape would soon reach dynamo's recompile limit.
    return tuple(torch.compile(f, dynamic=True) for f in (forward_for_backward, forward, backward))


@functools.cache
def triton_available() -> bool:
    """torch.compile's GPU code generator: absent on some platforms, and GPUs older than Volta
    cannot run it; the plain formulas then run eagerly there too."""
    return private_api.has_triton()


def use_compiled_kernels(x: torch.Tensor) -> bool:
    return x.is_cuda and triton_available()


class LocalResponseNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, size, alpha, beta, k, groups):
        ctx.constants = (size, alpha, beta, k, groups)
        if not ctx.needs_input_grad[0]:  # evaluation: nothing to keep
            if use_compiled_kernels(x):
                return compiled_kernels(*ctx.constants)[1](x)
            return lrn_forward(x, *ctx.constants)[0]
        if use_compiled_kernels(x):
            y, d = compiled_kernels(*ctx.constants)[0](x)
        else:
            y, d = lrn_forward(x, *ctx.constants)
        ctx.save_for_backward(x, d)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, d = ctx.saved_tensors
        if use_compiled_kernels(x):
            grad_x = compiled_kernels(*ctx.constants)[2](x, d, grad)
        else:
            grad_x = lrn_backward(x, d, grad, *ctx.constants)
        return grad_x, None, None, None, None, None


class LocalResponseNorm(nn.Module):
    """nn.LocalResponseNorm's result (same constants, same alpha / n convention), computed by
    LocalResponseNormFunction; with groups > 1 the channels form that many towers and each is
    normalised on its own, as each GPU of the paper normalised its own half."""

    def __init__(
        self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, groups: int = 1
    ) -> None:
        super().__init__()
        if size < 1 or groups < 1:
            raise ValueError(f"LocalResponseNorm(size={size}, groups={groups}): both must be >= 1")
        self.size, self.alpha, self.beta, self.k, self.groups = size, alpha, beta, k, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] % self.groups:
            raise ValueError(
                f"LocalResponseNorm with groups={self.groups} needs channels divisible into "
                f"{self.groups} towers; the input has {x.shape[1]} (shape {tuple(x.shape)})"
            )
        constants = (self.size, self.alpha, self.beta, self.k, self.groups)
        if torch.compiler.is_compiling():
            # Inside a compiled network: the plain formula, whose backward autograd derives and
            # inductor fuses with the layers around it. (The autograd.Function traced by dynamo
            # gave zero input gradients and illegal memory accesses on an H200, torch 2.11.)
            return lrn_forward(x, *constants)[0]
        return LocalResponseNormFunction.apply(x, *constants)

    def extra_repr(self) -> str:
        constants = f"alpha={self.alpha}, beta={self.beta}, k={self.k}, groups={self.groups}"
        return f"{self.size}, {constants}"
