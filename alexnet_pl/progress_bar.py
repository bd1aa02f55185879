"""The terminal's progress bar, redrawn a few times a second instead of after every batch.

Lightning's TQDMProgressBar redraws after every batch (refresh_rate=1), and each redraw formats the
bar and reads every progress-bar metric: ~0.8 ms of host time per step on a CPU core
(benchmarks/RESULTS.md, host cost), a third of AlexNet's whole step on a GPU at 32 images.
A refresh_rate of N batches would make the bar's speed depend on the step's: at 2.7 ms a step,
N=50 redraws 7 times a second, at 2 s a step (a CPU) once in 100 s. A clock does not.
"""

import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar


class TimedProgressBar(TQDMProgressBar):
    """TQDMProgressBar that redraws a bar at most every `refresh_seconds`, and always at the last
    batch (so that the bar ends at 100%, and validation's bar closes complete)."""

    def __init__(self, refresh_seconds: float = 0.25, leave: bool = False) -> None:
        if refresh_seconds < 0:
            raise ValueError(f"refresh_seconds={refresh_seconds} must be 0 (every batch) or more")
        super().__init__(refresh_rate=1, leave=leave)
        self.refresh_seconds = refresh_seconds
        self.next_redraw = {"train": 0.0, "validation": 0.0}

    def due(self, bar: str, batch_idx: int, total: float | int | None) -> bool:
        now = time.monotonic()
        if now < self.next_redraw[bar] and (total is None or batch_idx + 1 < total):
            return False
        self.next_redraw[bar] = now + self.refresh_seconds
        return True

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.due("train", batch_idx, self.total_train_batches):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.due("validation", batch_idx, self.total_val_batches_current_dataloader):
            super().on_validation_batch_end(
                trainer, pl_module, outputs, batch, batch_idx, dataloader_idx
            )


def progress_bar(
    enabled: bool | None = True, refresh_seconds: float = 0.25
) -> TimedProgressBar | None:
    """The bar, or None (no callback) when trainer.enable_progress_bar=false: Lightning refuses a
    progress bar callback together with that switch. null (Lightning's default) means on."""
    return None if enabled is False else TimedProgressBar(refresh_seconds)
