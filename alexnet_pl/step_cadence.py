"""When the host looks at the device during training.

A training step on a GPU takes milliseconds, and the host runs ahead of it, queueing kernels. Any
read of a device value (`.item()`, a progress bar showing a tensor, a collective whose result the
host inspects) makes the host wait until the GPU has caught up, and the queue drains. So per-step
work stays on the device (counters, flags), and the host reads it back only at check batches: the
batches after which Lightning writes step metrics to the loggers (every `trainer.log_every_n_steps`
batches, counted over the whole run) and the last batch of each epoch (so that nothing pending is
left behind when validation and checkpoints run).

The cadence counts batches, not optimizer steps: every DDP rank has the same number of batches,
so all ranks reach the same check batch together and can agree there with one collective, even if
a rank skipped an optimizer step (a batch whose every image was undecodable).
"""

import pytorch_lightning as pl
import torch

from alexnet_pl import private_api


def is_check_batch(trainer: pl.Trainer, batch_idx: int) -> bool:
    """True for the batches (by their index in the epoch) after which device-side values are read
    back to the host. Call it from a batch's hooks (on_train_batch_start/end, training_step)."""
    last_batch = batch_idx + 1 >= trainer.num_training_batches
    every = trainer.log_every_n_steps  # 0: Lightning logs no step metrics; look at epoch ends
    if every <= 0:
        return last_batch
    # Lightning's own count of the run's batches before this one (restored on resume): it writes
    # step metrics to the loggers when (count + 1) % log_every_n_steps == 0. Counting the same way
    # hands every window to the loggers while it is fresh. It advances at every batch, also one
    # that skipped its optimizer step; with gradient accumulation only at the batch that steps, so
    # all the batches of one step share it (and all are check batches when it is one).
    batches_before = private_api.batches_that_stepped(trainer)
    return (batches_before + 1) % every == 0 or last_batch


def log_check_values(
    module: pl.LightningModule,
    values: dict[str, float],
    logger: bool = True,
    prog_bar: bool = True,
) -> None:
    """Logs values read at a check batch to the progress bar and the loggers (each if True).

    Passed as CPU tensors: Lightning turns a Python float into a tensor on the module's device,
    and then converts it back to a number for the progress bar at every later batch of the
    epoch, a device read per step. Call forget_check_values at the next batch's start.
    """
    for name, value in values.items():
        module.log(
            name,
            torch.tensor(value, dtype=torch.float64),
            prog_bar=prog_bar,
            logger=logger,
            on_step=True,
            on_epoch=False,
        )


def forget_check_values(trainer: pl.Trainer, names: tuple[str, ...]) -> None:
    """Makes Lightning forget the values log_check_values logged at an earlier batch.

    Lightning keeps each logged step value until the epoch ends and reads it back at every batch
    (for the progress bar, and for the loggers at each logging step, where it would write the
    same window again). By the start of the next batch it has already copied the values to
    trainer.progress_bar_metrics, trainer.callback_metrics and the loggers, which keep them; so
    dropping them from its collection of this epoch's results changes nothing shown, only the
    reads stop.
    """
    for result in private_api.logged_results(trainer):
        if result.meta.name in names and not result.meta.on_epoch and not result.has_reset:
            result.reset()
