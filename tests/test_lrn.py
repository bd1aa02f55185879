"""alexnet_pl.lrn: the fused LRN equals nn.LocalResponseNorm in value and gradient, on the CPU and
(where one is present) on a GPU, and normalises within each tower when asked to."""

import pytest
import torch
from torch import nn

from alexnet_pl.lrn import LocalResponseNorm

PAPER = {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0}  # section 3.3
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    ),
]
# Small stand-ins for the conv1 (96 channels) and conv2 (256 channels) outputs.
SHAPES = [(3, 96, 11, 11), (2, 256, 5, 5)]


def relu_activations(shape, device, layout=torch.contiguous_format, seed=0) -> torch.Tensor:
    """Inputs of the size the LRN meets after a ReLU: large enough (tens) that the sum of squares
    in the window is comparable to k, so the normalisation actually bends the values."""
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=generator) * 60).relu()
    return x.to(device).contiguous(memory_format=layout)


def value_and_gradient(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor):
    x = x.detach().clone().requires_grad_()
    y = layer(x)
    y.backward(grad)
    return y.detach(), x.grad


def assert_close_relative(actual, expected, rtol):
    """Close within rtol of the largest magnitude: gradients have entries near zero, where a
    per-element relative test would only measure rounding."""
    scale = expected.abs().max().clamp_min(1e-12)
    assert ((actual.float() - expected.float()).abs().max() / scale).item() <= rtol


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_float32_value_and_gradient_equal_nn_local_response_norm(device, shape, layout):
    x = relu_activations(shape, device, layout)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device)
    expected = value_and_gradient(nn.LocalResponseNorm(**PAPER), x, grad)
    actual = value_and_gradient(LocalResponseNorm(**PAPER), x, grad)
    assert 0.2 < (expected[0] / x.clamp_min(1e-3))[x > 1].min() < 0.9  # the norm does bend x
    torch.testing.assert_close(actual[0], expected[0], rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # evaluation takes its own path, which keeps nothing for a backward
        torch.testing.assert_close(LocalResponseNorm(**PAPER)(x), expected[0], rtol=1e-5, atol=1e-5)
    assert_close_relative(actual[1], expected[1], rtol=1e-5)
    assert actual[0].is_contiguous(memory_format=layout)  # the next convolution's layout kept
    assert actual[1].is_contiguous(memory_format=layout)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
def test_bfloat16_under_autocast_matches_within_bfloat16_rounding(device, shape):
    """bf16 in, bf16 out; our float32 arithmetic is within a bf16 step or two of the float32
    reference computed on the same bf16 input, where nn.LocalResponseNorm in bf16 is further."""
    x16 = relu_activations(shape, device, torch.channels_last).bfloat16()
    grad16 = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device).bfloat16()
    expected = value_and_gradient(nn.LocalResponseNorm(**PAPER), x16.float(), grad16.float())
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        actual = value_and_gradient(LocalResponseNorm(**PAPER), x16, grad16)
    assert actual[0].dtype == actual[1].dtype == torch.bfloat16
    assert_close_relative(actual[0], expected[0], rtol=1e-2)
    assert_close_relative(actual[1], expected[1], rtol=2e-2)


def crossing_and_per_tower(x: torch.Tensor, grad: torch.Tensor):
    """Ours with two towers; the reference on each half separately; one window over all."""
    per_tower = value_and_gradient(LocalResponseNorm(**PAPER, groups=2), x, grad)
    halves = [
        value_and_gradient(nn.LocalResponseNorm(**PAPER), part, part_grad)
        for part, part_grad in zip(x.chunk(2, dim=1), grad.chunk(2, dim=1), strict=True)
    ]
    separately = tuple(torch.cat([half[i] for half in halves], dim=1) for i in range(2))
    crossing = value_and_gradient(nn.LocalResponseNorm(**PAPER), x, grad)
    return per_tower, separately, crossing


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [96, 256])  # towers meet at 47/48 (conv1), 127/128 (conv2)
def test_two_towers_normalise_each_half_on_its_own(device, channels):
    shape = (2, channels, 5, 5)
    x = relu_activations(shape, device)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device)
    per_tower, separately, crossing = crossing_and_per_tower(x, grad)
    torch.testing.assert_close(per_tower[0], separately[0], rtol=1e-5, atol=1e-5)
    assert_close_relative(per_tower[1], separately[1], rtol=1e-5)
    # The window of 5 reaches two channels over the boundary: those differ from the crossing norm,
    # the rest are the same.
    half = channels // 2
    border = [half - 2, half - 1, half, half + 1]
    difference = (per_tower[0] - crossing[0]).abs().amax(dim=(0, 2, 3))
    changed = difference > 1e-3 * crossing[0].abs().max()  # well above float32 rounding
    assert changed.nonzero().flatten().tolist() == border


def test_channels_that_do_not_split_into_the_towers_are_named():
    with pytest.raises(ValueError, match="groups=2 .* the input has 95"):
        LocalResponseNorm(**PAPER, groups=2)(torch.ones(1, 95, 3, 3))


def test_a_compiled_network_traces_through_it_without_a_graph_break():
    """fullgraph=True fails on any graph break; aot_eager traces forward and backward as
    torch.compile does, without inductor's code generation (minutes on a 2-core CPU)."""
    network = nn.Sequential(nn.Conv2d(3, 96, 3), nn.ReLU(), LocalResponseNorm(**PAPER, groups=2))
    compiled = torch.compile(network, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 3, 9, 9) * 30
    grad = torch.randn(2, 96, 7, 7)
    expected = value_and_gradient(network, x, grad)
    network.zero_grad()
    actual = value_and_gradient(compiled, x, grad)
    torch.testing.assert_close(actual[0], expected[0])
    torch.testing.assert_close(actual[1], expected[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_a_network_compiled_by_inductor_matches_eager_in_bfloat16():
    """What training with compile=true runs: inductor fuses the traced formulas with the ReLU."""
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(3, 96, 3), nn.ReLU(), LocalResponseNorm(**PAPER, groups=2))
    network = network.cuda().to(memory_format=torch.channels_last)
    compiled = torch.compile(network, fullgraph=True)
    x = (torch.randn(4, 3, 29, 29, device="cuda") * 30).contiguous(
        memory_format=torch.channels_last
    )
    grad = torch.randn(4, 96, 27, 27, device="cuda").bfloat16()
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
        expected = value_and_gradient(network, x, grad)
        actual = value_and_gradient(compiled, x, grad)
    assert actual[0].dtype == torch.bfloat16
    assert_close_relative(actual[0], expected[0], rtol=1e-2)
    assert_close_relative(actual[1], expected[1], rtol=2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_eager_runs_a_compiled_kernel_or_two_each_way():
    from torch.profiler import ProfilerActivity, profile

    layer = LocalResponseNorm(**PAPER, groups=2)
    x = relu_activations((8, 96, 27, 27), "cuda", torch.channels_last).bfloat16()
    x.requires_grad_()
    layer(x).sum().backward()  # compiles both kernels
    torch.cuda.synchronize()
    y = layer(x)
    grad = torch.ones_like(y)
    x.grad = None
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as forward:
        layer(x)
        torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as backward:
        y.backward(grad)
        torch.cuda.synchronize()

    def kernels(prof) -> list[str]:
        return [
            e.name for e in prof.events() if e.device_type.name == "CUDA" and "triton" in e.name
        ]

    # Training's forward writes y and d (for the backward): inductor may give each its kernel.
    assert 1 <= len(kernels(forward)) <= 2, kernels(forward)
    assert 1 <= len(kernels(backward)) <= 2, kernels(backward)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_eager_serves_every_shape_layout_and_dtype_without_a_recompile_error():
    # An eager network on a GPU calls the compiled kernels with both layers' shapes, training and
    # validation batch sizes, float32 and bf16, with and without gradients.
    layer = LocalResponseNorm(**PAPER, groups=2)
    reference = nn.LocalResponseNorm(**PAPER)
    for batch in (1, 3, 8, 13, 32):
        for channels, side in ((96, 27), (256, 13)):
            for layout in (torch.contiguous_format, torch.channels_last):
                for dtype in (torch.float32, torch.bfloat16):
                    x = relu_activations((batch, channels, side, side), "cuda", layout).to(dtype)
                    x.requires_grad_(batch % 2 == 1)
                    y = layer(x)
                    if x.requires_grad:
                        y.sum().backward()
                    halves = [reference(h.float()) for h in x.detach().chunk(2, dim=1)]
                    assert_close_relative(y.float(), torch.cat(halves, 1), rtol=1e-2)
