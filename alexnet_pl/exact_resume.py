"""What `ckpt_path=...` needs, beyond what Lightning restores itself (weights, optimizer and
scheduler states, epoch and step), to continue a run exactly where its checkpoint left it:

- the position inside the epoch: resume_position() reads it from Lightning's restored loop
  counters, and the DataModule's training sampler (data/sampling.py) skips what was trained;
- ReduceLROnPlateau's step for the epoch in which a checkpoint was written: PlateauStepInCheckpoint.
"""

import copy
import warnings
from collections.abc import Callable

import pytorch_lightning as pl
import torch
from pytorch_lightning.core.optimizer import LRSchedulerConfig
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities.rank_zero import rank_zero_warn

# Lightning warns on every mid-epoch resume that the loader "is not resumable": it knows only
# loaders with state_dict/load_state_dict. Ours resume from Lightning's own loop counters, which
# (unlike a loader's count of the batches it handed out) also place a checkpoint that was written
# in the middle of a batch, such as SLURM's requeue checkpoint, where Lightning itself resumes.
warnings.filterwarnings(
    "ignore", message="You're resuming from a checkpoint that ended before the epoch ended"
)


def resume_position(trainer: pl.Trainer) -> tuple[int, int]:
    """(epoch, batches of it already trained) where training continues: (0, 0) in a new run.

    Valid once Lightning has restored its loops, which it does before it asks for the training
    loader. A fit loop that restarts (its checkpoint was written before the epoch ended) continues
    that epoch after the batches it processed, as Lightning's batch index does (a batch started but
    not processed is run again); otherwise the next epoch starts whole. So does it after a
    checkpoint written at the end of an epoch's last batch (before validation): Lightning counts
    that epoch as finished (FitLoop.reset), but sets the next epoch only after this loader has
    started, which with workers would make that epoch empty.
    """
    fit_loop = trainer.fit_loop
    epoch = fit_loop.epoch_progress.current.processed
    if not fit_loop.restarting:
        return epoch, 0
    batches = fit_loop.epoch_loop.batch_progress
    total = batches.total
    written_at_batch_end = total.ready == total.started == total.processed == total.completed + 1
    if written_at_batch_end and batches.is_last_batch:
        return epoch + 1, 0
    return epoch, batches.current.processed


def training_batches_done(trainer: pl.Trainer) -> bool:
    """Whether the current epoch's last training batch has run (Lightning's own test before it
    steps epoch schedulers)."""
    progress = trainer.fit_loop.epoch_loop.batch_progress
    return progress.is_last_batch or progress.current.ready >= trainer.num_training_batches


class PlateauStepInCheckpoint(pl.Callback):
    """ReduceLROnPlateau observes the monitored metric once per epoch, and Lightning takes that
    step late: after the epoch's validation, where ModelCheckpoint writes last.ckpt and the best
    checkpoint. Lightning does not step plateau schedulers in an epoch it restarts from a
    checkpoint (the metric is not in it), so a resumed run would be one observation short: the
    patience count, the best value and the epoch the learning rate is divided would all shift.

    So (1) a checkpoint written while that step is pending holds the scheduler state and learning
    rates as they will be after it, computed on a stand-in from the metric Lightning will use; and
    (2) in an epoch resumed from a mid-epoch checkpoint, which Lightning restarts and so does not
    step, the step is taken here, after the epoch's validation, as Lightning would have. Exact for
    a monitored metric that is final once the epoch's validation has ended (val/*, as here).
    """

    def __init__(self) -> None:
        # Epochs whose last training batch ran in this process, and whose step this callback took.
        self._trained_epoch: int | None = None
        self._stepped_epoch: int | None = None

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: object,
        batch: object,
        batch_idx: int,
    ) -> None:
        if training_batches_done(trainer):
            self._trained_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning steps plateau schedulers right after this hook, unless its fit loop restarts.
        if not (trainer.fit_loop.restarting and self._step_pending(trainer)):
            return
        for config in filter(self._due(trainer), trainer.lr_scheduler_configs):
            value = trainer.callback_metrics.get(config.monitor)
            if value is None:
                self._missing_metric(trainer, config)
                continue
            pl_module.lr_scheduler_step(config.scheduler, value)
        self._stepped_epoch = trainer.current_epoch

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        if "lr_schedulers" not in checkpoint or not self._step_pending(trainer):
            return
        due = self._due(trainer)
        for index, config in enumerate(trainer.lr_scheduler_configs):
            value = trainer.callback_metrics.get(config.monitor or "")
            if not due(config) or value is None:
                continue  # without the metric Lightning stops the run or skips the step
            optimizer = config.scheduler.optimizer
            # A stand-in optimizer with the real one's learning rates, and a copy of the scheduler
            # on it: the real ones are left as they are for Lightning's own step.
            groups = [{"params": [torch.zeros(1)], "lr": g["lr"]} for g in optimizer.param_groups]
            stand_in = torch.optim.SGD(groups)
            scheduler = copy.copy(config.scheduler)
            scheduler.optimizer = stand_in
            scheduler.load_state_dict(copy.deepcopy(config.scheduler.state_dict()))
            pl_module.lr_scheduler_step(scheduler, value)
            checkpoint["lr_schedulers"][index] = scheduler.state_dict()
            saved = checkpoint["optimizer_states"][trainer.optimizers.index(optimizer)]
            for group, stepped in zip(saved["param_groups"], stand_in.param_groups, strict=True):
                group["lr"] = stepped["lr"]

    def _step_pending(self, trainer: pl.Trainer) -> bool:
        """The current epoch's training is done here and its plateau step is still to come."""
        epoch = trainer.current_epoch  # becomes epoch + 1 only after Lightning's step
        return self._trained_epoch == epoch and self._stepped_epoch != epoch

    @staticmethod
    def _due(trainer: pl.Trainer) -> Callable[[LRSchedulerConfig], bool]:
        """Whether Lightning steps a scheduler at the end of this epoch with the plateau ones."""
        # Lightning leaves the schedulers of manual optimization to the user.
        automatic = trainer.lightning_module.automatic_optimization
        epoch = trainer.current_epoch
        return lambda config: (
            automatic
            and config.reduce_on_plateau
            and config.interval == "epoch"
            and (epoch + 1) % config.frequency == 0
        )

    @staticmethod
    def _missing_metric(trainer: pl.Trainer, config: LRSchedulerConfig) -> None:
        """What Lightning does when the monitored metric was not logged."""
        message = (
            f"ReduceLROnPlateau conditioned on metric {config.monitor} which is not available. "
            f"Available metrics are: {list(trainer.callback_metrics)}."
        )
        if config.strict:
            raise MisconfigurationException(message)
        rank_zero_warn(f"{message} Skipping learning rate update.", category=RuntimeWarning)
