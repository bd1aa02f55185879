"""The host's cost of one training step: a plain PyTorch loop, Lightning's floor, and this
project's default config as a user runs it, on a network so small that its compute hardly counts.

    python benchmarks/host.py                     # about two minutes on 2 CPU cores
    python benchmarks/host.py --profile default   # also cProfile's top functions of one row

On a GPU the host only queues kernels, and a step of AlexNet at 32 images takes ~2.7 ms with CUDA
graphs: whatever the host adds per step (Lightning's loop, callbacks, the progress bar) decides
the speed. A CPU with a tiny network shows that host work without a GPU: one 3x3 convolution and
one linear layer, 32 images a step, every batch already in memory, one thread.

Rows (all iterate the same DataLoader of resident batches, so only the loop differs):
  plain    a plain PyTorch loop, fused Adam, zero_grad(set_to_none=True)
  floor    Lightning's floor: a LightningModule that returns only its loss, under a bare Trainer
           (no logger, progress bar, checkpointing or model summary)
  default  alexnet_pl.train.train on the real composed config (conf/train.yaml), only the network
           and the data swapped: every default callback, the progress bar, TensorBoard
  default-no-bar   the same with trainer.enable_progress_bar=false (what the bar costs)
  module   the same without any configured callback, logger, progress bar or model summary: what
           AlexNetModule, the DataModule and train()'s own callbacks cost over the floor

The rows run in interleaved rounds (plain, floor, default, ..., plain, floor, ...), each timed in
blocks of 50 steps; each row keeps its fastest block, so a burst of load from another process
costs one block, not the row. Then one more run of each row counts its function calls per step
(cProfile): a number that load does not change. The progress bar writes to /dev/null while the
rows run; the table comes after.
"""

import argparse
import contextlib
import cProfile
import io
import logging
import os
import pstats
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
Batches = list[tuple[torch.Tensor, torch.Tensor]]
# While set, it profiles the timed steps (function calls per step: a count that load does not
# change, unlike the times).
_profiler: cProfile.Profile | None = None
ROWS = ("plain", "floor", "default", "default-no-bar", "module")


class TinyNet(nn.Module):
    """The stand-in for AlexNet: features, then a classifier whose last layer is a Linear (what
    AlexNetModule reads num_classes from, and the monitoring callbacks' conv1 from)."""

    def __init__(self, num_classes: int = 10, size: int = 16, **_: Any) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * size * size, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))


def resident_batches(count: int, batch: int, size: int, classes: int) -> Batches:
    generator = torch.Generator().manual_seed(0)
    return [
        (
            torch.randn(batch, 3, size, size, generator=generator),
            torch.randint(classes, (batch,), generator=generator),
        )
        for _ in range(count)
    ]


def loader(batches: Batches, steps: int) -> DataLoader:
    """`steps` batches in order, cycling through the resident ones; each item is a whole batch."""
    return DataLoader([batches[i % len(batches)] for i in range(steps)], batch_size=None)


def clocks() -> np.ndarray:
    """(wall seconds, this thread's CPU seconds). The training thread's CPU time is the host's work
    on the loop; it grows less than the wall time when other processes compete for the cores."""
    return np.array([time.perf_counter(), time.thread_time()])


class Blocks:
    """The clocks at the start of step `warmup` and after every `block` steps from there: each
    block of steps is timed on its own, and the benchmark keeps each row's fastest block of all
    its rounds: a burst of load from another process spoils one block, not the row. A block of 50
    steps holds exactly one check batch (trainer.log_every_n_steps=50), so its work counts; the
    progress bar redraws every 0.25 s, i.e. in about every other block."""

    def __init__(self, warmup: int, block: int) -> None:
        self.warmup, self.block = warmup, block
        self.readings: list[np.ndarray] = []

    def at_step_start(self, step: int) -> None:
        if step >= self.warmup and (step - self.warmup) % self.block == 0:
            self.readings.append(clocks())
        if step == self.warmup and _profiler is not None:
            _profiler.enable()

    def at_end(self) -> None:
        if _profiler is not None:
            _profiler.disable()
        self.readings.append(clocks())

    def per_step(self) -> np.ndarray:
        """(wall, CPU) seconds per step of each whole block."""
        readings = np.array(self.readings)
        return (readings[1:] - readings[:-1]) / self.block


class StepClock(pl.Callback):
    """Blocks, read from a Trainer's hooks."""

    def __init__(self, blocks: Blocks) -> None:
        self.blocks = blocks

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.blocks.at_step_start(batch_idx)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 == trainer.num_training_batches:
            self.blocks.at_end()


def plain(args: argparse.Namespace, batches: Batches) -> np.ndarray:
    """The loop a user writes by hand."""
    torch.manual_seed(0)
    model = TinyNet(args.classes, args.size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    blocks = Blocks(args.warmup, args.block)
    for step, (images, labels) in enumerate(loader(batches, args.warmup + args.steps)):
        blocks.at_step_start(step)
        loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    blocks.at_end()
    return blocks.per_step()


class LossOnly(pl.LightningModule):
    """Lightning's floor: the step returns its loss and nothing else."""

    def __init__(self, args: argparse.Namespace, batches: Batches) -> None:
        super().__init__()
        self.network = TinyNet(args.classes, args.size)
        self.batches, self.total = batches, args.warmup + args.steps

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        images, labels = batch
        return nn.functional.cross_entropy(self.network(images), labels)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-4, fused=True)

    def train_dataloader(self) -> DataLoader:
        return loader(self.batches, self.total)


def floor(args: argparse.Namespace, batches: Batches) -> np.ndarray:
    torch.manual_seed(0)
    blocks = Blocks(args.warmup, args.block)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[StepClock(blocks)],
        default_root_dir=tempfile.mkdtemp(prefix="host_floor_"),
    )
    trainer.fit(LossOnly(args, batches))
    return blocks.per_step()


class ResidentData(pl.LightningDataModule):
    """Stands in for the ImageFolderDataModule: resident batches for training, one for validation
    (so that the best-checkpoint callback finds val/top1 at the epoch's end, after the clock)."""

    def __init__(self, batches: Batches, steps: int, classes: int, batch_size: int) -> None:
        super().__init__()
        self.batches, self.steps, self.batch_size = batches, steps, batch_size
        self.class_names = [f"class_{i}" for i in range(classes)]

    def train_dataloader(self) -> DataLoader:
        return loader(self.batches, self.steps)

    def val_dataloader(self) -> DataLoader:
        return loader(self.batches, 1)

    def read_class_names(self) -> list[str]:
        return self.class_names


# The objects that Hydra's instantiate hands to train(): set by project() before each run.
_current: dict[str, Any] = {}


def make_data(**_: Any) -> ResidentData:
    return _current["data"]


def make_clock(**_: Any) -> StepClock:
    return _current["clock"]


def project(args: argparse.Namespace, batches: Batches, variant: str = "default") -> np.ndarray:
    """alexnet_pl.train.train on the composed default config; only the network and data differ.
    variant "no-bar": without the progress bar; "bare": without the configured callbacks, loggers,
    progress bar and model summary (the module and DataModule under a nearly bare Trainer)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    from alexnet_pl.train import train

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        overrides = [
            "trainer.accelerator=cpu",
            "trainer.max_epochs=1",
            f"data.batch_size={args.batch}",
            f"model.num_classes={args.classes}",
            "seed=0",
        ]
        if variant in ("no-bar", "bare"):
            overrides.append("++trainer.enable_progress_bar=false")
        if variant == "bare":
            overrides.append("++trainer.enable_model_summary=false")
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    steps = args.warmup + args.steps
    _current["data"] = ResidentData(batches, steps, args.classes, args.batch)
    blocks = Blocks(args.warmup, args.block)
    _current["clock"] = StepClock(blocks)
    with open_dict(cfg):
        cfg.paths.output_dir = tempfile.mkdtemp(prefix="host_default_")
        del cfg.hydra
        cfg.model = OmegaConf.create(
            {"_target_": f"{__name__}.TinyNet", "num_classes": args.classes, "size": args.size}
        )
        cfg.data = OmegaConf.create({"_target_": f"{__name__}.make_data", "batch_size": args.batch})
        if variant == "bare":  # (a `callbacks={}` override would merge, not replace)
            cfg.callbacks, cfg.logger = {}, {}
        cfg.callbacks.step_clock = {"_target_": f"{__name__}.make_clock"}
    train(cfg)
    GlobalHydra.instance().clear()
    return blocks.per_step()


def quiet() -> None:
    """Lightning's start-up lines and warnings (few workers, no GPU) would bury the table."""
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning_fabric", "lightning", "alexnet_pl"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main() -> None:
    global _profiler
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"some of {','.join(ROWS)}")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved; best of these")
    parser.add_argument("--steps", type=int, default=400, help="timed steps a row and round")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    parser.add_argument("--block", type=int, default=50, help="steps timed together")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=16, help="image side in pixels")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--profile", choices=ROWS, help="print cProfile's top of this row")
    args = parser.parse_args()
    rows = args.rows.split(",")
    torch.set_num_threads(1)  # the host's work is single-threaded; so is a GPU run's
    quiet()
    batches = resident_batches(8, args.batch, args.size, args.classes)
    runs: dict[str, Callable[[argparse.Namespace, Batches], np.ndarray]] = {
        "plain": plain,
        "floor": floor,
        "default": project,
        "default-no-bar": lambda a, b: project(a, b, "no-bar"),
        "module": lambda a, b: project(a, b, "bare"),
    }
    blocks: dict[str, list[np.ndarray]] = {row: [] for row in rows}
    with open(os.devnull, "w") as devnull:
        for _ in range(args.rounds):
            for row in rows:
                with contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
                    blocks[row].append(runs[row](args, batches))
        calls = {}
        for row in rows:  # one more run each, profiled
            _profiler = cProfile.Profile()
            with contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
                runs[row](args, batches)
            stats = pstats.Stats(_profiler)
            calls[row] = sum(entry[1] for entry in stats.stats.values()) / args.steps
            if row == args.profile:
                text = io.StringIO()
                stats.stream = text
                stats.sort_stats("tottime").print_stats(30)
            _profiler = None

    load = os.getloadavg()
    print(
        f"host cost per step: {args.batch} images of {args.size} px a step; {args.steps} timed "
        f"steps after {args.warmup} in blocks of {args.block}, the fastest block of "
        f"{args.rounds} interleaved rounds; torch "
        f"{torch.__version__}, Lightning {pl.__version__}, 1 thread; load average "
        f"{load[0]:.2f} {load[1]:.2f} on {os.cpu_count()} CPUs\n"
    )
    # Per row: the fastest block's CPU and wall ms per step (each its own best), the median CPU.
    ms = {row: np.concatenate(times) * 1000 for row, times in blocks.items()}
    best = {row: ms[row].min(axis=0) for row in rows}
    has_floor = "floor" in rows
    print(
        "| loop | CPU ms per step | x floor | wall ms per step | x floor | CPU ms, median "
        "| calls per step | x floor |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        wall, cpu = best[row]
        ratio_cpu = f"{cpu / best['floor'][1]:.3f}" if has_floor else ""
        ratio_wall = f"{wall / best['floor'][0]:.3f}" if has_floor else ""
        ratio_calls = f"{calls[row] / calls['floor']:.3f}" if has_floor else ""
        median = np.median(ms[row][:, 1])
        print(
            f"| {row} | {cpu:.3f} | {ratio_cpu} | {wall:.3f} | {ratio_wall} | {median:.3f} "
            f"| {calls[row]:,.0f} | {ratio_calls} |"
        )
    print(
        "\nCPU: the training thread's CPU time (time.thread_time), less sensitive than the wall"
        " time to other\nprocesses; wall: time.perf_counter. Each the fastest block of all rounds;"
        " median: of all blocks.\ncalls: Python and C function calls per timed step (cProfile, one"
        " more run per row), a count\nthat load does not change. x floor: over Lightning's floor (a"
        " loss-only LightningModule under a bare Trainer)."
    )
    if args.profile:
        print(f"\ncProfile of the timed steps of one {args.profile} run:")
        print(text.getvalue())


if __name__ == "__main__":
    main()
