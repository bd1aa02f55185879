"""Training step throughput on batches already on the device: the ceilings (a plain PyTorch loop,
eager, compiled, compiled with CUDA graphs) and our LightningModule under the Trainer exactly as
a user runs it, all in one process and on the same batches.

    python benchmarks/step.py --device cuda                       # batch 128 and 32 per device
    python benchmarks/step.py --device cpu --batch 8 --size 67 --images 64 --warmup 2 \
        --rows eager,lightning --classes 10                       # a quick check of the script

Only the step is measured: the batches (float, normalised-like, channels-last as our DataModule
hands them over) sit on the device before the clock starts, so no copy is timed (the input
pipeline is measured by pipeline.py, and the whole CLI by gpu_table.py). The clock starts after
`--warmup` steps (compiling, CUDA graph recording, cuDNN autotuning) and synchronises the device
only at its start and its end, never in between: a per-step synchronisation would itself drain
the queue of kernels that the host keeps ahead of the GPU.

Plain loops: bf16 autocast and channels_last on CUDA (float32, contiguous on a CPU), fused Adam,
`set_to_none` gradients. The Lightning rows go through `alexnet_pl.train.train` on the real
composed config (default callbacks, progress bar, TensorBoard, the speed switches `auto` picks for
this batch), with a DataModule that serves the same resident batches; only the two checkpoint
callbacks are left out (they write once per epoch, outside the timed steps).
"""

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from alexnet_pl.network import AlexNet
from alexnet_pl.speed import CUDA_GRAPHS_MAX_BATCH

CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
Batches = list[tuple[torch.Tensor, torch.Tensor]]


def resident_batches(args: argparse.Namespace, batch: int, count: int) -> Batches:
    """`count` distinct batches on the device, cycled through by every contender."""
    generator = torch.Generator().manual_seed(0)
    made = []
    for _ in range(count):
        images = torch.randn(batch, 3, args.size, args.size, generator=generator)
        labels = torch.randint(args.classes, (batch,), generator=generator)
        images = images.to(args.device).contiguous(memory_format=torch.channels_last)
        made.append((images, labels.to(args.device)))
    return made


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def compile_options(args: argparse.Namespace, cuda_graphs: bool) -> dict[str, Any]:
    """torch.compile kwargs; --compile-backend eager exercises the same code path in seconds."""
    if args.compile_backend != "inductor":
        return {"backend": args.compile_backend}
    return {"mode": "reduce-overhead"} if cuda_graphs else {}


def plain_loop(
    args: argparse.Namespace,
    data: Batches,
    steps: int,
    compile: dict[str, Any] | None,
    fast: bool = True,
) -> float:
    """Images per second of the step a user would write, timed over `steps` after the warm-up.
    fast=False: the notebook's loop (default Adam, float32, contiguous)."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    memory_format = torch.channels_last if fast and on_cuda else torch.contiguous_format
    model = AlexNet(num_classes=args.classes, init="paper").to(device, memory_format=memory_format)
    if compile is not None:
        model.compile(**compile)
    cuda_graphs = compile is not None and compile.get("mode") == "reduce-overhead"
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True if fast else None)
    bf16 = fast and on_cuda
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext()
    start = 0.0
    for step in range(args.warmup + steps):
        if step == args.warmup:
            synchronize(args.device)
            start = time.perf_counter()
        images, labels = data[step % len(data)]
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with autocast:
            loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(args.device)
    return steps * len(data[0][1]) / (time.perf_counter() - start)


class ResidentBatches(pl.LightningDataModule):
    """Stands in for the ImageFolderDataModule: the same resident batches, in order, once."""

    def __init__(self, batches: Batches, steps: int, classes: int, batch_size: int) -> None:
        super().__init__()
        self.batches, self.steps, self.batch_size = batches, steps, batch_size
        self.class_names = [f"class_{i:04d}" for i in range(classes)]

    def train_dataloader(self) -> DataLoader:
        order = [self.batches[i % len(self.batches)] for i in range(self.steps)]
        return DataLoader(order, batch_size=None)  # each item is already a batch

    def read_class_names(self) -> list[str]:
        return self.class_names


class StepClock(pl.Callback):
    """Synchronises and reads the clock at the start of batch `warmup` and the end of the last."""

    def __init__(self, warmup: int, device: str) -> None:
        self.warmup, self.device = warmup, device
        self.start = self.end = 0.0
        self.images = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            synchronize(self.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.images += len(batch[1])
        if batch_idx + 1 == trainer.num_training_batches:
            synchronize(self.device)
            self.end = time.perf_counter()


# Set by lightning() for the Hydra-instantiated objects below (instantiate passes only config).
_current: dict[str, Any] = {}


def make_resident_datamodule(**_: Any) -> ResidentBatches:
    return _current["datamodule"]


def make_step_clock(**_: Any) -> StepClock:
    return _current["clock"]


def lightning(args: argparse.Namespace, data: Batches, steps: int) -> tuple[float, str]:
    """Images per second of AlexNetModule under the Trainer, run by train() on the real config;
    also the compile setting `auto` chose."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    from alexnet_pl.train import train

    batch = len(data[0][1])
    output_dir = tempfile.mkdtemp(prefix="step_lightning_")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"trainer.accelerator={args.device}",
                f"model.num_classes={args.classes}",
                f"data.batch_size={batch}",
                f"++trainer.max_steps={args.warmup + steps}",
                "trainer.max_epochs=1",
                "++trainer.limit_val_batches=0",
                "~callbacks.best_checkpoint",
                "~callbacks.last_checkpoint",
                "seed=0",
            ],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    _current["datamodule"] = ResidentBatches(data, args.warmup + steps, args.classes, batch)
    _current["clock"] = StepClock(args.warmup, args.device)
    with open_dict(cfg):
        cfg.paths.output_dir = output_dir
        del cfg.hydra
        # The data: the resident batches, keeping the batch size that speed.py and preflight read.
        cfg.data = OmegaConf.create(
            {"_target_": f"{__name__}.make_resident_datamodule", "batch_size": batch}
        )
        cfg.callbacks.step_clock = {"_target_": f"{__name__}.make_step_clock"}
    train(cfg)
    GlobalHydra.instance().clear()
    clock = _current["clock"]
    chosen = OmegaConf.load(Path(output_dir) / "config.yaml").compile
    return clock.images / (clock.end - clock.start), json.dumps(
        OmegaConf.to_container(chosen) if chosen is not None else None
    )


def in_order(rows: list[str], batch: int) -> list[str]:
    """The compiled loop that `compile=auto` uses at this batch (CUDA graphs for small batches)
    right before the Lightning row: it is that row's reference, and the Lightning row reuses its
    compiled code. The other compiled loop comes last, so a run cut short loses the least."""
    uses_graphs = batch <= CUDA_GRAPHS_MAX_BATCH
    first, last = ("cudagraphs", "compiled") if uses_graphs else ("compiled", "cudagraphs")
    order = ["eager", first, "lightning", last, "notebook"]
    return [row for row in order if row in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, nargs="+", default=[128, 32], help="per device")
    parser.add_argument("--size", type=int, default=227)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--images", type=int, default=6400, help="timed images per row")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps before the clock")
    parser.add_argument(
        "--rows",
        default="eager,compiled,cudagraphs,lightning",
        help="which of eager,compiled,cudagraphs,lightning,notebook to run",
    )
    parser.add_argument("--compile-backend", default="inductor", help="eager: a quick check")
    parser.add_argument("--json", type=Path, help="also write the rows here (for gpu_table.py)")
    args = parser.parse_args()
    rows_wanted = args.rows.split(",")
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")  # what speed.py's tf32=auto sets on CUDA
    # Each batch size compiles its own static graphs, as a CLI run with one batch size does;
    # without this the second size would turn the first's graph into a slower dynamic-shape one.
    torch._dynamo.config.automatic_dynamic_shapes = False
    dynamo = torch._dynamo.config
    limit = "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit"
    setattr(dynamo, limit, 64)  # several modes and sizes of one network

    contenders: dict[str, tuple[str, Callable[[Batches, int], Any]]] = {
        "eager": ("plain loop, eager", lambda d, s: plain_loop(args, d, s, None)),
        "compiled": (
            "plain loop, compiled",
            lambda d, s: plain_loop(args, d, s, compile_options(args, False)),
        ),
        "cudagraphs": (
            "plain loop, compiled + CUDA graphs",
            lambda d, s: plain_loop(args, d, s, compile_options(args, True)),
        ),
        "lightning": (
            "AlexNetModule under the Trainer, default config",
            lambda d, s: lightning(args, d, s),
        ),
        "notebook": (
            "the notebook's loop: default Adam, float32",
            lambda d, s: plain_loop(args, d, s, None, fast=False),
        ),
    }
    precision = "bf16 autocast, channels_last" if args.device == "cuda" else "float32"
    print(
        f"AlexNet at {args.size} px, {args.classes} classes, {args.device} "
        f"({torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}), {precision}, "
        f"torch {torch.__version__}; {args.images} timed images a row after {args.warmup} steps\n"
    )
    print("| step | per device | img/s | x plain loop, same compile | s, compile included |")
    print("|---|---:|---:|---:|---:|")
    results = []
    for batch in args.batch:
        steps = max(1, args.images // batch)
        data = resident_batches(args, batch, count=min(8, args.warmup + steps))
        plain_by_compile: dict[str, float] = {}
        for key in in_order(rows_wanted, batch):
            name, run = contenders[key]
            started = time.perf_counter()
            try:
                outcome = run(data, steps)
            except Exception as error:  # one broken row must not cost the others
                results.append({"row": key, "name": name, "batch": batch, "error": repr(error)})
                print(f"| {name} | {batch} | failed: {error!r} | | |", flush=True)
                if args.json:
                    args.json.write_text(json.dumps(results, indent=1))
                continue
            seconds = time.perf_counter() - started
            if key == "lightning":
                rate, chosen = outcome
                reference = plain_by_compile.get(chosen)
                name = f"{name} (compile={chosen})"
            else:
                rate, reference = outcome, None
                if key in ("eager", "compiled", "cudagraphs"):
                    options = None if key == "eager" else compile_options(args, key == "cudagraphs")
                    plain_by_compile[json.dumps(options)] = rate
            ratio = f"{rate / reference:.3f}" if reference else ""
            results.append(
                {"row": key, "name": name, "batch": batch, "img_s": rate, "seconds": seconds}
                | ({"x_same_step": rate / reference} if reference else {})
            )
            print(f"| {name} | {batch} | {rate:,.0f} | {ratio} | {seconds:.0f} |", flush=True)
            if args.json:  # after every row, so a run cut short keeps what it measured
                args.json.write_text(json.dumps(results, indent=1))
        del data


if __name__ == "__main__":
    main()
