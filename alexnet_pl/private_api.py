"""Every private part of Lightning and torch this project uses, in one place, with why.

A private name (a leading underscore) may be renamed or removed by any release, without notice.
Each one here is the only way we found to do what its entry says (no public API covers it in
pytorch-lightning 2.6 / torch 2.14). The code reaches it only through the functions below, which
notice when it is gone and say so once, naming it, the installed version and what is lost:
an error (PrivateApiMissing) where a run would be wrong without it, a warning (PrivateApiWarning)
where it would only be slower. Pin the tested versions (constraints.txt, see the README) until
the entry is updated for the new release.

Benchmarks (not the package) also look inside torch: benchmarks/step.py sets
torch._dynamo.config, benchmarks/worker_memory.py reads a loader iterator's _workers.
"""

import functools
import importlib.metadata
import warnings
from typing import Any, NamedTuple

import pytorch_lightning as pl
from packaging.version import Version


class PrivatePart(NamedTuple):
    name: str  # as its package spells it
    package: str  # the distribution whose release may move it
    why: str  # what this project uses it for
    lost: str  # what a run without it loses
    correctness: bool  # True: the run stops without it; False: it goes on, slower
    since: str = "0"  # the first release that has it: an older one loses nothing without it


PARTS = {
    "batches_that_stepped": PrivatePart(
        "pytorch_lightning.loops.training_epoch_loop._TrainingEpochLoop._batches_that_stepped",
        "pytorch-lightning",
        "Lightning's count of the run's batches (restored on resume), by which it writes step "
        "metrics to the loggers every trainer.log_every_n_steps; step_cadence.is_check_batch "
        "reads device values back at the same batches",
        "the batches at which every DDP rank agrees to stop (non-finite loss, SIGTERM) and the "
        "training metrics reach the loggers cannot be placed",
        True,
    ),
    "trainer_results": PrivatePart(
        "pytorch_lightning.Trainer._results",
        "pytorch-lightning",
        "step_cadence.forget_check_values drops values logged at a check batch from Lightning's "
        "collection of the epoch's results once they reached the loggers",
        "Lightning reads those values back from the device at every later batch of the epoch "
        "(a host sync per step); the numbers shown stay right",
        False,
    ),
    "broadcast_sigterm_tensor": PrivatePart(
        "pytorch_lightning.loops.training_epoch_loop._TrainingEpochLoop._broadcast_sigterm_tensor",
        "pytorch-lightning",
        "safeguards.StopTogether replaces Lightning's SIGTERM handler and switches off Lightning's "
        "broadcast of rank 0's SIGTERM flag before every batch (the flag is never set any more)",
        "under DDP Lightning broadcasts a flag and reads it back before every batch (a host sync "
        "per step); SIGTERM still stops all ranks together",
        False,
        "2.5.2",  # before it, Lightning did not broadcast the flag at every batch
    ),
    "dataloader_iterator": PrivatePart(
        "torch.utils.data.DataLoader._iterator",
        "torch",
        "data.decode=gpu wraps the DataLoader (device_prefetch.DecodingAheadLoader); when "
        "Lightning ends a loader it stops the decoding thread and shuts the wrapped loader's "
        "workers down",
        "the wrapped loader's worker processes (persistent_workers) live on until the process "
        "exits",
        False,
    ),
    "shutdown_workers": PrivatePart(
        "torch.utils.data.dataloader._MultiProcessingDataLoaderIter._shutdown_workers",
        "torch",
        "as for DataLoader._iterator: how Lightning itself ends a loader's workers",
        "the wrapped loader's worker processes live on until the process exits",
        False,
    ),
    "lightning_resets_loaders": PrivatePart(
        "pytorch_lightning.utilities.combined_loader._shutdown_workers_and_reset_iterator",
        "pytorch-lightning",
        "how Lightning ends a loader (setting its _iterator to None), which "
        "DecodingAheadLoader._iterator answers by stopping its decoding thread",
        "with data.decode=gpu the decoding thread and the loader's workers may run on after fit "
        "and validate until the process exits",
        False,
    ),
    "callable_callback_hooks": PrivatePart(
        "pytorch_lightning.trainer.call._call_callback_hooks (its `if callable(fn)` check)",
        "pytorch-lightning",
        "hook_dispatch.SkipEmptyBatchHooks sets a callback's idle batch hooks to None on the "
        "object, and Lightning skips a hook that is not callable: ~4 us a callback and hook "
        "saved at every batch",
        "every callback's empty batch hooks are called at every batch (~0.4 ms of host time a "
        "step with the default callbacks); the run is otherwise the same",
        False,
    ),
    "checkpoint_step_triggers": PrivatePart(
        "pytorch_lightning.callbacks.ModelCheckpoint._every_n_train_steps / "
        "_train_time_interval",
        "pytorch-lightning",
        "hook_dispatch.idle_hooks: a ModelCheckpoint that saves by neither steps nor time does "
        "nothing after a training batch, so its on_train_batch_end is skipped",
        "the checkpoints' on_train_batch_end runs at every batch (a few us each); the run is "
        "otherwise the same",
        False,
    ),
    "has_triton": PrivatePart(
        "torch.utils._triton.has_triton",
        "torch",
        "lrn.triton_available: whether torch.compile can generate GPU kernels here (the package, "
        "a GPU recent enough and the backend built), for the compiled LRN kernels",
        "the local response normalisation runs as plain eager formulas on the GPU (slower, same "
        "values)",
        False,
    ),
}


class PrivateApiMissing(RuntimeError):
    """A private part the run cannot be right without is not in the installed release."""


class PrivateApiWarning(UserWarning):
    """A private part that only made the run faster is not in the installed release."""


def installed_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def missing_message(key: str) -> str:
    part = PARTS[key]
    return (
        f"{part.name} is not in the installed {part.package} {installed_version(part.package)}: "
        f"{part.lost}. It is used because {part.why} (alexnet_pl/private_api.py). Install the "
        f"tested versions (pip install -e . -c constraints.txt) or update that entry for this "
        "release."
    )


WARNED: set[str] = set()  # the parts already reported in this process: each is said once


def report_missing(key: str) -> None:
    """Raises PrivateApiMissing, or warns once per process, that the part `key` of PARTS is gone."""
    part = PARTS[key]
    version = installed_version(part.package)
    if version[0].isdigit() and Version(version) < Version(part.since):
        return  # a release from before it: nothing to do without it
    if part.correctness:
        raise PrivateApiMissing(missing_message(key))
    if key not in WARNED:
        WARNED.add(key)
        warnings.warn(missing_message(key), PrivateApiWarning, stacklevel=3)


def batches_that_stepped(trainer: pl.Trainer) -> int:
    try:
        return trainer.fit_loop.epoch_loop._batches_that_stepped
    except AttributeError:
        report_missing("batches_that_stepped")
        raise  # not reached: report_missing raised


def logged_results(trainer: pl.Trainer) -> list[Any]:
    """The result entries Lightning has collected this epoch (each with .meta, .reset())."""
    if not hasattr(trainer, "_results"):
        report_missing("trainer_results")
        return []
    results = trainer._results
    return list(results.values()) if results is not None else []


def skip_sigterm_broadcast(epoch_loop: Any) -> None:
    """Shadows Lightning's per-batch broadcast of the SIGTERM flag on this loop instance."""
    if hasattr(epoch_loop, "_broadcast_sigterm_tensor"):
        epoch_loop._broadcast_sigterm_tensor = lambda: None
    else:
        report_missing("broadcast_sigterm_tensor")


def check_lightning_resets_loaders() -> None:
    from pytorch_lightning.utilities import combined_loader

    if not hasattr(combined_loader, "_shutdown_workers_and_reset_iterator"):
        report_missing("lightning_resets_loaders")


def shut_down_loader(loader: Any) -> None:
    """Ends a DataLoader's running pass as Lightning does: its workers shut down, no iterator."""
    if not hasattr(loader, "_iterator"):
        report_missing("dataloader_iterator")
        return
    iterator = loader._iterator
    if iterator is not None and getattr(loader, "num_workers", 0) > 0:
        if hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        else:
            report_missing("shutdown_workers")
    loader._iterator = None


def has_triton() -> bool:
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        report_missing("has_triton")
        return False
    return has_triton()


@functools.cache
def lightning_skips_uncallable_hooks() -> bool:
    """Whether Lightning calls a callback's hook only when it is callable, so that a hook set to
    None on a callback object is skipped (read from the installed source: an older or newer
    Lightning that calls every hook would call None and stop the run)."""
    import inspect

    from pytorch_lightning.trainer import call

    function = getattr(call, "_call_callback_hooks", None)
    try:
        skips = function is not None and "if callable(fn)" in inspect.getsource(function)
    except (OSError, TypeError):
        skips = False
    if not skips:
        report_missing("callable_callback_hooks")
    return skips


def checkpoint_saves_only_at_epoch_end(callback: Any) -> bool:
    """A ModelCheckpoint set to save neither every N training steps nor on a timer."""
    try:
        steps, interval = callback._every_n_train_steps, callback._train_time_interval
    except AttributeError:
        report_missing("checkpoint_step_triggers")
        return False
    return steps < 1 and interval is None
