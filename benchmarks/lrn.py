"""Local response normalisation, forward + backward: nn.LocalResponseNorm against alexnet_pl.lrn on
the paper's two LRN inputs (conv1: 96 x 55 x 55, conv2: 256 x 27 x 27), batch 128, channels_last.

    python benchmarks/lrn.py                  # CUDA when present (bf16), else the CPU (float32)
    python benchmarks/lrn.py --device cpu --batch 16

On CUDA each is timed eager and inside torch.compile (where the whole network is compiled), in
bf16 as under autocast; on the CPU eager only, in float32 (our CPU path is plain eager operations).
Times are the median of --iterations, after warm-up calls that also compile; compile times are
printed apart. Under 30 s on one H100/H200, compiles included.
"""

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from alexnet_pl.lrn import LocalResponseNorm

PAPER = {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0}  # section 3.3
SHAPES = {"conv1": (96, 55, 55), "conv2": (256, 27, 27)}


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def forward_backward(layer: Callable, x: torch.Tensor, grad: torch.Tensor) -> None:
    x.grad = None
    layer(x).backward(grad)


def time_ms(layer: Callable, x: torch.Tensor, grad: torch.Tensor, iterations: int) -> tuple:
    """(median ms of forward + backward, seconds of the first call: compile and warm-up)."""
    start = time.perf_counter()
    forward_backward(layer, x, grad)
    synchronize(x.device.type)
    first_call = time.perf_counter() - start
    forward_backward(layer, x, grad)  # a second warm-up: autotuning, allocator
    times = []
    for _ in range(iterations):
        synchronize(x.device.type)
        start = time.perf_counter()
        forward_backward(layer, x, grad)
        synchronize(x.device.type)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), first_call


def contenders(device: str) -> dict[str, Callable]:
    reference, ours = nn.LocalResponseNorm(**PAPER), LocalResponseNorm(**PAPER)
    towers = LocalResponseNorm(**PAPER, groups=2)
    layers = {"nn.LRN eager": reference, "ours eager": ours, "ours eager, 2 towers": towers}
    if device == "cuda":
        # dynamic=False: one specialised graph per shape, as a compiled network at a fixed batch.
        layers["nn.LRN compiled"] = torch.compile(reference, dynamic=False)
        layers["ours compiled"] = torch.compile(LocalResponseNorm(**PAPER), dynamic=False)
    return layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)  # the paper's
    parser.add_argument("--iterations", type=int, default=20)
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    if args.device == "cuda":
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {dtype}")
    print(
        f"LRN forward + backward, batch {args.batch}, channels_last, median ms of {args.iterations}"
    )

    layers = contenders(args.device)
    rows, compile_seconds = {}, {}
    for shape_name, shape in SHAPES.items():
        generator = torch.Generator().manual_seed(0)
        x = (torch.randn(args.batch, *shape, generator=generator) * 60).relu()
        x = x.to(args.device, dtype).contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        grad = torch.randn_like(x)
        for name, layer in layers.items():
            rows[shape_name, name], first = time_ms(layer, x, grad, args.iterations)
            compile_seconds[name] = compile_seconds.get(name, 0.0) + first

    names = list(layers)
    print(f"{'':<8}" + "".join(f"{name:>22}" for name in names))
    for shape_name in SHAPES:
        print(f"{shape_name:<8}" + "".join(f"{rows[shape_name, n]:>19.3f} ms" for n in names))
    print("ratios (nn.LocalResponseNorm's time / ours: how many times faster)")
    pairs = [("nn.LRN eager", "ours eager")]
    if "ours compiled" in layers:
        pairs += [("nn.LRN compiled", "ours compiled"), ("nn.LRN compiled", "ours eager")]
    for shape_name in SHAPES:
        ratios = [f"{a} / {b}: {rows[shape_name, a] / rows[shape_name, b]:.2f}x" for a, b in pairs]
        print(f"{shape_name:<8}" + "; ".join(ratios))
    print(
        "first calls (compile + warm-up), s: "
        + ", ".join(f"{name} {seconds:.1f}" for name, seconds in compile_seconds.items())
    )


if __name__ == "__main__":
    main()
