"""Each private part of Lightning and torch (alexnet_pl/private_api.py), removed as a release might:
the run says so once, naming it, the installed version and what is lost; an error where the run
would be wrong without it."""

import sys
import warnings

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loops.training_epoch_loop import _TrainingEpochLoop
from pytorch_lightning.utilities import combined_loader
from torch.utils.data import DataLoader

from alexnet_pl import private_api
from alexnet_pl.data.device_prefetch import DecodingAheadLoader
from alexnet_pl.private_api import PARTS, PrivateApiMissing, PrivateApiWarning
from alexnet_pl.step_cadence import forget_check_values, is_check_batch
from tests.conftest import SMALL_RUN


@pytest.fixture(autouse=True)
def nothing_said_yet(monkeypatch):
    monkeypatch.setattr(private_api, "WARNED", set())


@pytest.fixture
def trainer() -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)


def assert_names(message: str, key: str) -> None:
    part = PARTS[key]
    assert part.name in message
    assert f"{part.package} {private_api.installed_version(part.package)}" in message
    assert part.lost in message


def assert_warns_once(key: str, use) -> None:
    with pytest.warns(PrivateApiWarning) as warned:
        use()
        use()
    ours = [w for w in warned if issubclass(w.category, PrivateApiWarning)]
    assert len(ours) == 1
    assert_names(str(ours[0].message), key)


def test_batches_that_stepped_missing_stops_the_run_naming_it(trainer, monkeypatch):
    monkeypatch.delattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped")
    with pytest.raises(PrivateApiMissing) as missing:
        is_check_batch(trainer, 0)
    assert_names(str(missing.value), "batches_that_stepped")


def test_trainer_results_missing_warns_once(trainer, monkeypatch):
    monkeypatch.delattr(pl.Trainer, "_results")
    assert_warns_once("trainer_results", lambda: forget_check_values(trainer, ("train/loss",)))


def test_sigterm_broadcast_missing_warns_once(trainer, monkeypatch):
    monkeypatch.delattr(_TrainingEpochLoop, "_broadcast_sigterm_tensor")
    epoch_loop = trainer.fit_loop.epoch_loop
    assert_warns_once(
        "broadcast_sigterm_tensor", lambda: private_api.skip_sigterm_broadcast(epoch_loop)
    )


def test_a_lightning_older_than_a_part_loses_nothing_and_says_nothing(trainer, monkeypatch):
    monkeypatch.delattr(_TrainingEpochLoop, "_broadcast_sigterm_tensor")
    monkeypatch.setattr(private_api, "installed_version", lambda package: "2.5.0")
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        private_api.skip_sigterm_broadcast(trainer.fit_loop.epoch_loop)
    assert not [w for w in warned if issubclass(w.category, PrivateApiWarning)]


def test_lightnings_loader_reset_missing_warns_once(monkeypatch):
    monkeypatch.delattr(combined_loader, "_shutdown_workers_and_reset_iterator")
    loader = DataLoader(range(4))
    device = torch.device("cpu")
    assert_warns_once(
        "lightning_resets_loaders", lambda: DecodingAheadLoader(loader, lambda b: b, device)
    )


def test_dataloader_iterator_missing_warns_once(monkeypatch):
    loader = DataLoader(range(4))
    monkeypatch.delattr(loader, "_iterator")
    wrapped = DecodingAheadLoader(loader, lambda batch: batch, torch.device("cpu"))

    def end_it() -> None:
        wrapped._iterator = None  # as Lightning ends a loader

    assert_warns_once("dataloader_iterator", end_it)


def test_worker_shutdown_missing_warns_once(monkeypatch):
    loader = DataLoader(range(4), num_workers=1, persistent_workers=True)
    iter(loader)
    iterator = loader._iterator
    with monkeypatch.context() as patch:
        patch.delattr(type(iterator), "_shutdown_workers")
        assert_warns_once("shutdown_workers", lambda: private_api.shut_down_loader(loader))
    iterator._shutdown_workers()  # the worker this test started


def test_has_triton_missing_warns_once_and_lrn_runs_eagerly(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils._triton", None)  # import fails
    assert_warns_once("has_triton", lambda: assert_false(private_api.has_triton()))


def test_lightning_calling_every_hook_warns_once_and_nothing_is_turned_off(monkeypatch):
    from pytorch_lightning.trainer import call

    from alexnet_pl.hook_dispatch import skip_empty_batch_hooks, turn_off

    def calls_every_hook(trainer, hook_name, *args, **kwargs):  # a Lightning without the check
        for callback in trainer.callbacks:
            getattr(callback, hook_name)(trainer, trainer.lightning_module, *args, **kwargs)

    monkeypatch.setattr(call, "_call_callback_hooks", calls_every_hook)
    private_api.lightning_skips_uncallable_hooks.cache_clear()
    callback = pl.Callback()
    try:
        assert_warns_once("callable_callback_hooks", lambda: turn_off(callback, ["on_fit_end"]))
        assert callable(callback.on_fit_end)
        skip_empty_batch_hooks(callback)
        assert callable(callback.on_train_batch_start)
    finally:
        private_api.lightning_skips_uncallable_hooks.cache_clear()


def test_checkpoint_step_triggers_missing_warn_once_and_keep_the_hook(monkeypatch):
    from pytorch_lightning.callbacks import ModelCheckpoint

    from alexnet_pl.hook_dispatch import idle_hooks

    checkpoint = ModelCheckpoint()
    assert idle_hooks(checkpoint) == ["on_train_batch_end"]  # saves at epoch ends only
    monkeypatch.delattr(checkpoint, "_every_n_train_steps")
    assert_warns_once("checkpoint_step_triggers", lambda: assert_nothing(idle_hooks(checkpoint)))


def assert_nothing(hooks: list[str]) -> None:
    assert hooks == []


def assert_false(value: bool) -> None:
    assert value is False


def test_every_part_is_tested_here():
    tested = {
        "batches_that_stepped",
        "trainer_results",
        "broadcast_sigterm_tensor",
        "lightning_resets_loaders",
        "dataloader_iterator",
        "shutdown_workers",
        "has_triton",
        "callable_callback_hooks",
        "checkpoint_step_triggers",
    }
    assert tested == set(PARTS)


@pytest.mark.slow
def test_a_run_on_a_lightning_without_a_private_part_names_it_once(
    image_root, tmp_path, run_in_process, monkeypatch, recwarn
):
    monkeypatch.delattr(_TrainingEpochLoop, "_broadcast_sigterm_tensor")  # called only under DDP
    result = run_in_process(
        *SMALL_RUN,
        f"data.root={image_root}",
        "trainer.fast_dev_run=true",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ours = [w for w in recwarn if issubclass(w.category, PrivateApiWarning)]
    assert len(ours) == 1
    assert_names(str(ours[0].message), "broadcast_sigterm_tensor")
