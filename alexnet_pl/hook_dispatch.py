"""Lightning calls every callback's batch hooks at every batch, also the ones a callback does not
define (pytorch_lightning.Callback's empty defaults), each inside a profiler context: about 4 us
of host time per callback and hook on a CPU core, six hooks a training batch. With the default
config's 17 callbacks that was ~0.4 ms a step, as much as a plain loop's whole step on the host
benchmark's tiny network (benchmarks/host.py); a GPU step of AlexNet at 32 images takes ~2.7 ms.

SkipEmptyBatchHooks removes that cost without patching Lightning: Lightning calls a callback's
hook only when `callable(getattr(callback, hook_name))` (trainer/call.py, _call_callback_hooks),
so each batch hook that a callback's class leaves as Lightning's empty default is replaced, on
that callback object, by None; so are the batch hooks of Lightning's own callbacks that the run's
settings leave idle (idle_hooks), and callbacks of ours turn theirs off once their work is done
(turn_off). That check is an implementation detail: private_api.lightning_skips_uncallable_hooks
reads it from the installed Lightning first, and without it nothing is skipped (a warning names
it); tests/test_host_cost.py checks the skip.
"""

from collections.abc import Iterable

import pytorch_lightning as pl
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

from alexnet_pl import private_api

# The hooks Lightning calls at every training or validation batch.
BATCH_HOOKS = (
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_train_batch_end",
    "on_validation_batch_start",
    "on_validation_batch_end",
)


def turn_off(callback: pl.Callback, hooks: Iterable[str]) -> None:
    """Lightning stops calling these hooks of this callback object (for every later batch). The
    hooks stay as they are on a Lightning that would call None (private_api.py): each hook that
    is turned off must also return at once when called."""
    if not private_api.lightning_skips_uncallable_hooks():
        return
    for name in hooks:
        setattr(callback, name, None)


def idle_hooks(callback: pl.Callback) -> list[str]:
    """Batch hooks of Lightning's callbacks that return at once at every batch of this run."""
    if isinstance(callback, LearningRateMonitor) and callback.logging_interval == "epoch":
        return ["on_train_batch_start"]  # it logs step learning rates only
    # A ModelCheckpoint saves after a batch only with every_n_train_steps or train_time_interval;
    # both are kept in private attributes (private_api.py: a renamed one is named, not skipped).
    if type(callback) is ModelCheckpoint and private_api.checkpoint_saves_only_at_epoch_end(
        callback
    ):
        return ["on_train_batch_end"]
    return []


def skip_empty_batch_hooks(callback: pl.Callback) -> list[str]:
    """Sets to None, on this object, each batch hook its class does not override and each idle
    one (idle_hooks); returns their names."""
    skipped = [
        name
        for name in BATCH_HOOKS
        if getattr(type(callback), name, None) is getattr(pl.Callback, name)
    ]
    skipped += idle_hooks(callback)
    turn_off(callback, skipped)
    return skipped


class SkipEmptyBatchHooks(pl.Callback):
    """At setup, skip_empty_batch_hooks on every callback of the Trainer (Lightning's own progress
    bar, model summary and checkpoints included, and this one)."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not private_api.lightning_skips_uncallable_hooks():
            return  # said once (private_api.py); every hook is called, as Lightning does
        for callback in trainer.callbacks:
            skip_empty_batch_hooks(callback)
