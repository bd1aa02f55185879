"""Callbacks that make TensorBoard show a run: speed, weight and gradient norms, the conv1 kernels
(the paper's Figure 3), augmented inputs, and the hyperparameters beside the final metrics.

All of them write on rank 0 only, through the TensorBoardLogger's SummaryWriter, and do nothing
when the run has no TensorBoardLogger (fast_dev_run, or a run configured without one: that run's
log says so once).
"""

import logging
import math
import time
import weakref
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid

from alexnet_pl.data.preprocessing import Preprocessing
from alexnet_pl.hook_dispatch import turn_off
from alexnet_pl.run_record import DATA_WAIT, FINAL_METRICS
from alexnet_pl.step_cadence import forget_check_values, is_check_batch, log_check_values

Scalar = int | float | str | bool
log = logging.getLogger(__name__)
# The runs whose log already says that these views are off: one note per run, not per view or step.
_told_no_tensorboard: "weakref.WeakSet[pl.Trainer]" = weakref.WeakSet()


def tensorboard_of(trainer: pl.Trainer) -> TensorBoardLogger | None:
    """The run's TensorBoardLogger on rank 0; None on other ranks or when there is none."""
    if not trainer.is_global_zero:
        return None
    logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
    if logger is None and trainer not in _told_no_tensorboard:
        _told_no_tensorboard.add(trainer)
        note_views_are_off(trainer)
    return logger


def note_views_are_off(trainer: pl.Trainer) -> None:
    """One line in the log naming the views this run configured but cannot show."""
    views = sorted({type(c).__name__ for c in trainer.callbacks if type(c).__module__ == __name__})
    if trainer.fast_dev_run or not views:  # fast_dev_run turns every logger off, as documented
        return
    loggers = ", ".join(type(lg).__name__ for lg in trainer.loggers) or "none"
    log.info(
        "%s write to TensorBoard only, and this run has no TensorBoardLogger (loggers: %s), so "
        "they stay off; add tensorboard to see them, e.g. logger=[tensorboard,csv]",
        ", ".join(views),
        loggers,
    )


def summary_writer(trainer: pl.Trainer) -> SummaryWriter | None:
    logger = tensorboard_of(trainer)
    return logger.experiment if logger is not None else None


def network_of(pl_module: pl.LightningModule) -> nn.Module:
    # AlexNetModule keeps the plain network in .network, so parameter names read as the layers do
    # in network.py (features.0.weight) rather than with a "network." prefix.
    return getattr(pl_module, "network", pl_module)


def images_of(batch: Any) -> torch.Tensor:
    """The images of an (images, labels) batch."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


class Throughput(pl.Callback):
    """How fast training runs, and whether it waits for data: train/images_per_second at the
    check batches (step_cadence.py: every trainer.log_every_n_steps batches and each epoch's
    last), train/epoch_seconds (training plus its validation) and, on CUDA,
    train/peak_gpu_memory_gb once per epoch, in TensorBoard; and train/data_wait_fraction at the
    check batches, in every logger and as `data_wait` in the progress bar.

    Images per second counts the global batch (every process's images) over the wall time since
    the last log. It never synchronises the device: over many steps the host cannot run more than
    a few kernels ahead of the GPU, so the host clock measures the GPU's rate closely enough.

    The data wait fraction is the share of the training loop's wall time that the host spent
    between one batch's end and the next batch's start: Lightning fetching the next batch from the
    loader (and copying it to the device), plus its own bookkeeping between batches (~0.1 ms). An
    input-bound run shows a high fraction, a step-bound one a low fraction. The gap after a check
    batch is left out: there the host waits for the device's values (step_cadence.py) and the
    loggers write, which is not waiting for data; so is validation. (So with
    trainer.log_every_n_steps=1 every gap is left out, and no fraction is logged.)
    """

    def __init__(self) -> None:
        self.epoch_start = 0.0
        self.window_start: float | None = None
        self.window_images = 0
        self.logged_step = -1
        # Data wait: the end of the last batch (None: the gap to the next batch is not counted, and
        # the next window of the fraction starts at that batch's start), the seconds waited in the
        # window's gaps, their number, and the last optimizer step at which it was logged.
        self.batch_end: float | None = None
        self.wait_window_start = 0.0
        self.waited = 0.0
        self.gaps = 0
        self.wait_logged_step = -1
        self.logged_at_last_batch = False
        self.writer: SummaryWriter | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.writer = summary_writer(trainer)  # looked up once, not at every batch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch_start = time.perf_counter()
        self.window_start = None
        self.batch_end = None
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self.batch_end is None:
            self.wait_window_start, self.waited, self.gaps = now, 0.0, 0
        else:
            self.waited += now - self.batch_end
            self.gaps += 1
        if self.logged_at_last_batch:  # the progress bar keeps showing them
            forget_check_values(trainer, ("images/s", "data_wait", DATA_WAIT))
            self.logged_at_last_batch = False

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        now = time.perf_counter()
        self.batch_end = now
        if self.window_start is None:
            # The window opens at the end of the first step, which also waited for the DataLoader
            # workers to start (or for validation to finish): that wait is not training speed.
            self.window_start, self.window_images = now, 0
        else:
            images = images_of(batch)  # None when every image of the batch was undecodable
            self.window_images += 0 if images is None else len(images)
        # The rest at the check batches only (step_cadence.py), as the training metrics. Compared
        # with the last logged step because with gradient accumulation several batches end at the
        # same step.
        if not is_check_batch(trainer, batch_idx):
            return
        step = trainer.global_step
        if step > self.wait_logged_step:
            if self.gaps:  # else a window of one batch: nothing was waited for yet
                fraction = self.waited / (now - self.wait_window_start)
                log_check_values(pl_module, {DATA_WAIT: fraction}, prog_bar=False)
                log_check_values(pl_module, {"data_wait": round(fraction, 2)}, logger=False)
                self.wait_logged_step, self.logged_at_last_batch = step, True
            self.batch_end = None
        if self.writer is not None and step > self.logged_step and self.window_images:
            # Every process's images: the global batch.
            rate = self.window_images * trainer.world_size / (now - self.window_start)
            self.writer.add_scalar("train/images_per_second", rate, step)
            # Also in the terminal's progress bar (which otherwise shows batches per second).
            log_check_values(pl_module, {"images/s": rate}, logger=False)
            self.window_start, self.window_images, self.logged_step = now, 0, step
            self.logged_at_last_batch = True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A validation in mid-epoch must count neither as training time nor as waiting for data.
        self.window_start = None
        self.batch_end = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writer = summary_writer(trainer)
        if writer is None:
            return
        # At the global step, as Lightning logs val/*, so the charts share their x axis.
        step = trainer.global_step
        writer.add_scalar("train/epoch_seconds", time.perf_counter() - self.epoch_start, step)
        if pl_module.device.type == "cuda":
            peak_gb = torch.cuda.max_memory_allocated(pl_module.device) / 1e9
            writer.add_scalar("train/peak_gpu_memory_gb", peak_gb, step)


class ParameterNorms(pl.Callback):
    """weights/<layer> and gradients/<layer> (L2 norms) every `every_n_steps` optimizer steps, at
    steps every_n_steps, 2 * every_n_steps, ...; with histograms=True also
    weight_histograms/<layer>, which copies all 62M weights to the host, hence opt-in.

    Read just before the optimizer step: the gradients are complete (summed over accumulated
    batches, averaged over DDP processes, unscaled under mixed precision) and the weights are the
    ones they were computed at.
    """

    def __init__(self, every_n_steps: int = 100, histograms: bool = False) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps} must be at least 1")
        self.every_n_steps = every_n_steps
        self.histograms = histograms

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        step = trainer.global_step + 1  # the step this optimizer call completes
        if step % self.every_n_steps:
            return
        writer = summary_writer(trainer)
        if writer is None:
            return
        parameters = dict(network_of(pl_module).named_parameters())
        with_grad = {name: p for name, p in parameters.items() if p.grad is not None}
        # Norms are computed on the device; one .tolist() brings back a few dozen numbers.
        norms = torch.stack(
            [torch.linalg.vector_norm(p.detach()) for p in parameters.values()]
            + [torch.linalg.vector_norm(p.grad.detach()) for p in with_grad.values()]
        ).tolist()
        tags = [f"weights/{name}" for name in parameters] + [f"gradients/{n}" for n in with_grad]
        for tag, norm in zip(tags, norms, strict=True):
            writer.add_scalar(tag, norm, step)
        if self.histograms:
            for name, p in parameters.items():
                writer.add_histogram(f"weight_histograms/{name}", p.detach(), step)


def kernel_grid(weight: torch.Tensor, towers: int = 1) -> torch.Tensor:
    """conv1's kernels (out, 3, k, k) as one (3, H, W) image in [0, 1], each kernel stretched to
    the full range on its own so that faint kernels stay visible (as in the paper's Figure 3).

    One tower: 12 kernels a row. Two towers: the first and second half of the kernels (those that
    feed tower 1 and tower 2) as two blocks of 8 a row, side by side with a gap between them; the
    paper stacks its halves top and bottom instead.
    """
    kernels = weight.detach().float().cpu()
    low = kernels.amin(dim=(1, 2, 3), keepdim=True)
    high = kernels.amax(dim=(1, 2, 3), keepdim=True)
    kernels = (kernels - low) / (high - low).clamp_min(1e-12)
    if towers == 1:
        return make_grid(kernels, nrow=12, padding=1)
    blocks = [make_grid(half, nrow=8, padding=1) for half in kernels.chunk(towers)]
    gap = torch.zeros(3, blocks[0].shape[1], 6)
    parts = [blocks[0]]
    for block in blocks[1:]:
        parts += [gap, block]
    return torch.cat(parts, dim=2)


class FirstLayerKernels(pl.Callback):
    """kernels/conv1: the first convolution's kernels as an image after every validation epoch."""

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writer = summary_writer(trainer)
        if writer is None or trainer.sanity_checking:
            return
        convs = [m for m in network_of(pl_module).modules() if isinstance(m, nn.Conv2d)]
        # conv1 itself sees the whole image in both towers; the split shows in conv2's groups,
        # whose group i reads the i-th block of conv1's output channels.
        towers = convs[1].groups if len(convs) > 1 else 1
        writer.add_image("kernels/conv1", kernel_grid(convs[0].weight, towers), trainer.global_step)


class InputSamples(pl.Callback):
    """inputs/train: the first `count` images of the run's first training batch, as the network
    sees them after augmentation, de-normalised with the preprocessing's mean and std."""

    def __init__(self, preprocessing: Preprocessing, count: int = 16) -> None:
        self.mean = torch.tensor(preprocessing.mean).view(-1, 1, 1)
        self.std = torch.tensor(preprocessing.std).view(-1, 1, 1)
        self.count = count
        self.done = False

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.done or images_of(batch) is None:  # None: no image of it could be decoded
            return
        self.done = True
        turn_off(self, ["on_train_batch_start"])  # no more calls at every batch (hook_dispatch.py)
        writer = summary_writer(trainer)
        if writer is None:
            return
        images = images_of(batch)[: self.count].detach().float().cpu()
        images = (images * self.std + self.mean).clamp(0, 1)
        grid = make_grid(images, nrow=math.ceil(math.sqrt(len(images))), padding=2)
        writer.add_image("inputs/train", grid, trainer.global_step)


def scalar_hyperparameters(config: Mapping[str, Any], prefix: str = "") -> dict[str, Scalar]:
    """The int, float, str and bool values of a nested config, keys joined with '/'
    (model/groups); lists and nulls are left out, as TensorBoard's HParams tab cannot show them."""
    flat: dict[str, Scalar] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(scalar_hyperparameters(value, f"{name}/"))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
    return flat


class HParamsWithMetrics(pl.Callback):
    """At the end of fit, the run's hyperparameters with its final val/loss, val/top1, val/top5
    in TensorBoard's HParams tab, so that runs can be compared in one table.

    Written once at the end because the tab shows only the metrics named in the one hparams
    summary (conf/logger sets default_hp_metric: false, so the start of the run writes none).
    The logger also logs the metrics again as scalars: at global_step - 1, the step Lightning gave
    the last end-of-epoch validation, so the charts gain no point of their own.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.hyperparameters = scalar_hyperparameters(config)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        logger = tensorboard_of(trainer)
        if logger is None:
            return
        logged = trainer.callback_metrics
        metrics = {name: float(logged[name]) for name in FINAL_METRICS if name in logged}
        if metrics:
            step = max(trainer.global_step - 1, 0)
            logger.log_hyperparams(self.hyperparameters, metrics, step=step)
