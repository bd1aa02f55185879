"""Learning-rate schedules as config: a torch scheduler, its arguments, and when Lightning steps it.

A `scheduler` config node names the scheduler class (`kind`), its constructor arguments (flat, so
`scheduler.step_size=4` works on the command line) and `interval`: `epoch` (after every epoch) or
`step` (after every optimizer step). A scheduler that needs the run's length declares parameters
named `epochs` and `steps_per_epoch` (the number of its own steps per epoch: 1 with
interval=epoch); LRSchedule passes them from the Trainer. Any torch.optim.lr_scheduler class works
as it is; a new schedule is one function or class and one file in conf/scheduler/.
"""

import inspect
import math
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import get_method
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    ReduceLROnPlateau,
    SequentialLR,
)

from alexnet_pl.errors import UserError

INTERVALS = ("epoch", "step")
RUN_LENGTH = ("epochs", "steps_per_epoch")  # filled in by LRSchedule where a schedule asks


class LRSchedule:
    """`kind` (a class or function of the optimizer, or its import path), when Lightning steps it,
    and its arguments; build() makes the scheduler once the optimizer and the run's length exist."""

    def __init__(self, kind: str | Callable, interval: str = "epoch", **arguments: Any) -> None:
        if interval not in INTERVALS:
            raise UserError(
                f"scheduler.interval={interval!r} is not known: use 'epoch' (step the schedule "
                "after every epoch) or 'step' (after every optimizer step)"
            )
        if isinstance(kind, str):
            try:
                # get_method: a class or a function (hydra-core 1.3.0 has no get_object)
                kind = get_method(kind)
            except Exception as error:
                raise UserError(
                    f"scheduler.kind={kind!r} cannot be imported ({error}); name a class such as "
                    "torch.optim.lr_scheduler.StepLR"
                ) from None
        if interval == "step" and kind is ReduceLROnPlateau:
            raise UserError(
                "scheduler.interval=step with ReduceLROnPlateau: it watches a validation metric, "
                "which exists once per epoch; use scheduler.interval=epoch"
            )
        self.kind, self.interval, self.arguments = kind, interval, arguments

    @property
    def needs_run_length(self) -> bool:
        return any(key in inspect.signature(self.kind).parameters for key in RUN_LENGTH)

    def build(self, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int) -> Any:
        """The scheduler for `optimizer`, in a run of `epochs` epochs of `steps_per_epoch`
        optimizer steps (what Lightning's Trainer estimates)."""
        run_length = {"epochs": epochs, "steps_per_epoch": steps_per_epoch}
        if self.interval == "epoch":
            run_length["steps_per_epoch"] = 1
        wanted = inspect.signature(self.kind).parameters
        # A length the config writes out (cosine.yaml: epochs: ${trainer.max_epochs}) stands.
        given = {
            key: value
            for key, value in run_length.items()
            if key in wanted and key not in self.arguments
        }
        return self.kind(optimizer, **self.arguments, **given)


def optimizer_steps_per_epoch(trainer: pl.Trainer) -> int:
    """What Trainer.estimated_stepping_batches gives per epoch, without loading the training loader
    early (Lightning would keep that loader, started before a resume restored its position),
    where the DataModule can count its batches (ImageFolderDataModule.train_batches_per_epoch)."""
    count = getattr(trainer.datamodule, "train_batches_per_epoch", None)
    if count is None:
        return math.ceil(trainer.estimated_stepping_batches / max(trainer.max_epochs or 1, 1))
    batches, limit = count(), trainer.limit_train_batches
    batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
    return max(math.ceil(batches / trainer.accumulate_grad_batches), 1)


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    warmup_epochs: float,
    epochs: int,
    steps_per_epoch: int = 1,
    start_factor: float = 0.01,
    min_lr: float = 0.0,
) -> LRScheduler:
    """Linear warm-up from start_factor x lr to lr over `warmup_epochs`, then a cosine to `min_lr`
    at the end of the run (Goyal et al. 2017; Loshchilov & Hutter 2017). Counted in the
    schedule's own steps: epochs, or optimizer steps with interval=step (smooth within an epoch)."""
    warmup = math.ceil(warmup_epochs * steps_per_epoch)
    total = max(epochs * steps_per_epoch, 1)
    if warmup >= total:
        raise UserError(
            f"scheduler.warmup_epochs={warmup_epochs} leaves no epoch of the run's {epochs} for "
            "the cosine; use fewer warm-up epochs or more trainer.max_epochs"
        )
    cosine = CosineAnnealingLR(optimizer, T_max=total - warmup, eta_min=min_lr)
    if warmup == 0:
        return cosine
    ramp = LinearLR(optimizer, start_factor=start_factor, end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])
