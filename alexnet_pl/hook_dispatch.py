"""Lightning calls every callback's batch hooks at every batch, also the ones a callback does not
define (pytorch_lightning.Callback's empty defaults), each inside a profiler context: about 4 us
of host time per callback and hook on a CPU core, six hooks a training batch. With the default
config's 17 callbacks that was ~0.4 ms a step, as much as a plain loop's whole step on the host
benchmark's tiny network (benchmarks/host.py); a GPU step of AlexNet at 32 images takes ~2.7 ms.

SkipEmptyBatchHooks removes that cost without patching Lightning: Lightning calls a callback's
hook only when `callable(getattr(callback, hook_name))` (trainer/call.py, _call_callback_hooks),
so each batch hook that a callback's class leaves as Lightning's empty default is replaced, on
that callback object, by None. Hooks a class overrides are left alone, so nothing that did work
stops doing it. Should Lightning ever call a hook without that check, it would call None and
fail loudly (TypeError), never skip work silently; tests/test_host_cost.py checks the skip.
"""

import pytorch_lightning as pl

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


def skip_empty_batch_hooks(callback: pl.Callback) -> list[str]:
    """Sets to None, on this object, each batch hook its class does not override; returns them."""
    skipped = []
    for name in BATCH_HOOKS:
        if getattr(type(callback), name, None) is getattr(pl.Callback, name):
            setattr(callback, name, None)
            skipped.append(name)
    return skipped


class SkipEmptyBatchHooks(pl.Callback):
    """At setup, skip_empty_batch_hooks on every callback of the Trainer (Lightning's own progress
    bar, model summary and checkpoints included, and this one)."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for callback in trainer.callbacks:
            skip_empty_batch_hooks(callback)
