"""What keeps a long run's work safe: checkpoints that are never half-written, a checkpoint when the
cluster sends SIGTERM, and a clear stop when the loss stops being a number."""

import logging
import math
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a hidden temporary file beside its target, flushes it to disk and
    renames it over the target: a save interrupted at any point (kill -9, a full disk, a node
    lost) leaves the previous last.ckpt whole. Lightning's own save renames from /tmp, which is a
    copy, not a rename, when /tmp is another filesystem."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        try:
            with partial.open("wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)


class StopOnNonFiniteLoss(pl.Callback):
    """Stops training at the first NaN or infinite loss, naming the step and the learning rate.

    Checked every step (one host sync of a scalar): a diverged run otherwise burns GPU hours and
    then overwrites last.ckpt with NaN weights. The exception also skips the checkpoint callbacks,
    so last.ckpt stays the last good epoch.
    """

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None or math.isfinite(loss.item()):
            return
        learning_rates = [group["lr"] for group in trainer.optimizers[0].param_groups]
        raise FloatingPointError(
            f"the training loss is {loss.item()} at step {trainer.global_step} (counting from 1; "
            f"epoch {trainer.current_epoch}, batch {batch_idx}) with learning rate "
            f"{', '.join(f'{lr:g}' for lr in learning_rates)}. Training stopped; checkpoints/"
            "last.ckpt holds the last good epoch. Lower optimizer.lr, or with model.init=paper "
            "and SGD try model.init=pytorch, then resume with ckpt_path=<that checkpoint>."
        )


class CheckpointOnSigterm(pl.Callback):
    """Clusters send SIGTERM before they preempt or time out a job. Lightning turns it into a
    SIGTERMException at the next batch; this writes last.ckpt (mid-epoch) before the process
    exits, so `ckpt_path=<run folder>` continues from there."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, SIGTERMException):
            # Every rank must call save_checkpoint (it synchronises); only rank 0 writes.
            trainer.save_checkpoint(self.path)
            if trainer.is_global_zero:
                log.warning(
                    "SIGTERM: wrote %s at step %d; resume with ckpt_path=%s",
                    self.path,
                    trainer.global_step,
                    self.path,
                )
