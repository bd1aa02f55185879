"""Faults injected for real: interrupted saves, NaN losses, batches without a decodable image, bad
configuration. kill -9 mid-run and the resume after it: test_train_cli.py (it shares that file's
chain of runs). SIGTERM and a NaN under DDP: test_launchers.py."""

import math
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from alexnet_pl import safeguards
from alexnet_pl.data.preprocessing import Preprocessing
from alexnet_pl.module import AlexNetModule
from alexnet_pl.monitoring import InputSamples
from alexnet_pl.safeguards import AtomicCheckpointIO, StopTogether
from alexnet_pl.train import train
from tests.conftest import SMALL_RUN
from tests.probes import read_records, recorder_overrides


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("the disk filled up half way")  # torch.save fails mid-file


def test_an_interrupted_save_leaves_the_previous_checkpoint_whole(tmp_path):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"weights": torch.ones(1000), "epoch": 1}, target)
    with pytest.raises(RuntimeError, match="half way"):
        io.save_checkpoint({"weights": torch.zeros(1000), "broken": Unpicklable()}, target)
    assert torch.load(target)["epoch"] == 1
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left behind


def test_nan_loss_stops_with_the_step_and_learning_rate_and_keeps_the_good_checkpoint(
    compose_config, larger_image_root, tmp_path, monkeypatch
):
    real_step = AlexNetModule.training_step

    def diverging_step(self, batch, batch_idx):
        loss = real_step(self, batch, batch_idx)
        return loss * math.nan if self.current_epoch == 1 and batch_idx == 2 else loss

    monkeypatch.setattr(AlexNetModule, "training_step", diverging_step)
    cfg = compose_config(*SMALL_RUN, f"data.root={larger_image_root}", "trainer.max_epochs=3")
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 8 .* learning rate 0.0001"):
        train(cfg)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 0 and last["global_step"] == 5  # the end of the last good epoch
    assert all(torch.isfinite(value).all() for value in last["state_dict"].values())


def stub_trainer(**overrides) -> SimpleNamespace:
    """What StopTogether reads of a single-process Trainer."""
    trainer = SimpleNamespace(
        world_size=1,
        global_rank=0,
        global_step=0,
        current_epoch=0,
        num_training_batches=100,
        optimizers=[SimpleNamespace(param_groups=[{"lr": 0.01}])],
        strategy=SimpleNamespace(broadcast=lambda value, src: value),
    )
    trainer.__dict__.update(overrides)
    return trainer


def run_batches(stop: StopTogether, trainer, losses: torch.Tensor, first_batch: int = 0) -> None:
    """Feeds one loss per batch to the callback as Lightning would, optimizer step by step."""
    for batch_idx, loss in enumerate(losses, start=first_batch):
        stop.on_train_batch_start(trainer, None, None, batch_idx)
        trainer.global_step += 1
        stop.on_train_batch_end(trainer, None, {"loss": loss}, None, batch_idx)


@contextmanager
def host_reads_raise(device: str) -> Iterator[None]:
    """On CUDA, any read of a device value by the host (a synchronisation) raises."""
    if device != "cuda":
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_a_non_finite_loss_is_recorded_on_the_device_and_named_at_the_next_check(
    device, monkeypatch
):
    # Batch 2 is the check batch here; the device is only read there.
    monkeypatch.setattr(safeguards, "is_check_batch", lambda trainer, batch_idx: batch_idx == 2)
    stop, trainer = StopTogether(checkpoint_path="unused"), stub_trainer()
    stop.start_recording(torch.device(device))
    losses = torch.tensor([2.3, math.nan, math.inf], device=device)
    with host_reads_raise(device):
        run_batches(stop, trainer, losses[:2])
    # The check after batch 2 names the first bad one, batch 1, not the infinite loss after it.
    named = r"loss is nan at step 2 \(counting from 1; epoch 0, batch 1\) with learning rate 0.01"
    with pytest.raises(FloatingPointError, match=named):
        run_batches(stop, trainer, losses[2:], first_batch=2)


def test_sigterm_stops_at_the_next_check_and_a_non_finite_loss_comes_first(monkeypatch):
    monkeypatch.setattr(safeguards, "is_check_batch", lambda trainer, batch_idx: batch_idx % 2)
    stop, trainer = StopTogether(checkpoint_path="unused"), stub_trainer()
    stop.start_recording(torch.device("cpu"))
    stop.on_sigterm(signal.SIGTERM, None)  # the handler only sets a flag
    run_batches(stop, trainer, torch.tensor([2.3]))  # not a check batch: training goes on
    with pytest.raises(SIGTERMException):
        run_batches(stop, trainer, torch.tensor([2.3]), first_batch=1)

    # SIGTERM writes a checkpoint; it must not hold the weights of a diverged step.
    stop, trainer = StopTogether(checkpoint_path="unused"), stub_trainer()
    stop.start_recording(torch.device("cpu"))
    stop.on_sigterm(signal.SIGTERM, None)
    with pytest.raises(FloatingPointError):
        run_batches(stop, trainer, torch.tensor([math.nan, 2.3]))


def test_sigterm_at_an_epochs_last_batch_stops_after_its_validation(monkeypatch):
    # Stopped at the last batch, a resume would start the next epoch: this epoch's validation
    # and ReduceLROnPlateau's step would never run. So the ranks stop at the epoch's end.
    monkeypatch.setattr(safeguards, "is_check_batch", lambda trainer, batch_idx: True)
    stop, trainer = StopTogether(checkpoint_path="unused"), stub_trainer(num_training_batches=2)
    stop.start_recording(torch.device("cpu"))
    run_batches(stop, trainer, torch.tensor([2.3]))
    stop.on_sigterm(signal.SIGTERM, None)
    run_batches(stop, trainer, torch.tensor([2.3]), first_batch=1)  # the last: no stop yet
    stop.on_validation_start(trainer, None)  # validation runs
    with pytest.raises(SIGTERMException):
        stop.on_train_epoch_end(trainer, None)


def broken_batches_root(tmp_path: Path, image_root: Path) -> Path:
    """Two classes: a train/ folder of 16 files none of which decodes, and 2 good images in the
    other. In batches of 4 (4 batches, the last 2 images dropped) at most 2 batches hold a good
    image, so at least 2 hold none; val/ has a good image of each class."""
    good = sorted((image_root / "train").glob("*/*.JPEG"))[:4]
    root = tmp_path / "broken_batches"
    for folder in ("train/broken", "train/good", "val/broken", "val/good"):
        (root / folder).mkdir(parents=True)
    whole = good[0].read_bytes()
    for i in range(16):
        content = b"" if i % 2 else whole[:300]  # zero bytes, or truncated inside the header
        (root / "train" / "broken" / f"{i:02d}.JPEG").write_bytes(content)
    for i, folder in enumerate(("train/good", "train/good", "val/broken", "val/good")):
        shutil.copy(good[i], root / folder / f"{i}.JPEG")
    return root


def test_a_batch_without_one_decodable_image_is_skipped(image_root, compose_config, tmp_path):
    root, records = broken_batches_root(tmp_path, image_root), tmp_path / "records"
    cfg = compose_config(
        *SMALL_RUN,
        "model.num_classes=2",
        f"data.root={root}",
        "data.batch_size=4",
        "trainer.max_epochs=1",
        "~callbacks.best_checkpoint",
        "~callbacks.last_checkpoint",
        *recorder_overrides(records),
    )
    train(cfg)  # Throughput, InputSamples and the loss check each read the batch or its loss
    batches = read_records(records)[0]
    assert len(batches) == 4 and any(batch["indices"] == [] for batch in batches)
    assert (tmp_path / "metrics.json").is_file()  # validation ran, training finished
    assert len((tmp_path / "bad_files.tsv").read_text().splitlines()) >= 14


def test_the_input_samples_view_waits_for_a_batch_with_images(tmp_path):
    samples = InputSamples(Preprocessing(72, 67, mean=[0.5] * 3, std=[0.5] * 3), count=2)
    logger = TensorBoardLogger(str(tmp_path))
    trainer = SimpleNamespace(is_global_zero=True, loggers=[logger], global_step=0)
    samples.on_train_batch_start(trainer, None, (None, None), 0)  # every image undecodable
    assert not samples.done
    samples.on_train_batch_start(trainer, None, (torch.zeros(4, 3, 8, 8), None), 1)
    assert samples.done


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr=0", "optimizer.lr=0 must be a positive number"),
        ("optimizer.lr=-0.01", "optimizer.lr=-0.01 must be a positive number"),
        ("model.groups=3", "model.groups=3 is not supported: use 1"),
        ("transforms.crop=80", "crop size 80 is larger than the resized shorter side 72"),
        ("ckpt_path=last", "ckpt_path=last: no outputs/**/checkpoints/last.ckpt"),
    ],
)
def test_bad_configuration_is_rejected_with_the_value_and_the_fix(
    image_root, tmp_path, run_in_process, override, message
):
    result = run_in_process(
        *SMALL_RUN,
        f"data.root={image_root}",
        override,
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()  # rejected before any work


def test_a_checkpoint_of_another_model_shape_is_rejected(
    trained_run, image_root, tmp_path, run_in_process
):
    result = run_in_process(
        *SMALL_RUN,
        f"data.root={image_root}",
        "model.groups=2",
        f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "  model.groups: the run has 1, this command 2\n" in result.stderr
