"""Faults injected for real: interrupted saves, NaN losses, SIGTERM, kill -9, bad configuration."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alexnet_pl.module import AlexNetModule
from alexnet_pl.safeguards import AtomicCheckpointIO
from alexnet_pl.train import train
from tests.conftest import SMALL_RUN, run_train_cli


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


def start_training(run_dir: Path, data_root: Path, cwd: Path, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "PL_GLOBAL_SEED"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "alexnet_pl.train",
            *SMALL_RUN,
            f"data.root={data_root}",
            f"hydra.run.dir={run_dir}",
            *extra,
        ],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_epoch(checkpoint: Path, epoch: int, process: subprocess.Popen, limit: float = 240):
    """Polls until last.ckpt holds `epoch` (it is renamed into place, so always readable)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and process.poll() is None:
        if checkpoint.exists() and torch.load(checkpoint, weights_only=False)["epoch"] >= epoch:
            return
        time.sleep(0.2)
    raise AssertionError(f"{checkpoint} never reached epoch {epoch}")


@pytest.mark.slow
def test_kill_9_mid_run_then_ckpt_path_last_continues_at_the_right_epoch(
    larger_image_root, tmp_path
):
    run_dir = tmp_path / "outputs" / "killed"
    process = start_training(run_dir, larger_image_root, tmp_path, "trainer.max_epochs=4")
    wait_for_epoch(run_dir / "checkpoints" / "last.ckpt", 1, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    killed_at = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert killed_at["epoch"] >= 1  # whole, despite the kill

    resumed = run_train_cli(
        *SMALL_RUN,
        f"data.root={larger_image_root}",
        "trainer.max_epochs=4",
        "ckpt_path=last",
        f"hydra.run.dir={tmp_path / 'outputs' / 'resumed'}",
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    metrics = json.loads((tmp_path / "outputs" / "resumed" / "metrics.json").read_text())
    assert metrics["epochs_trained"] == 4 and metrics["global_step"] == 4 * 5
    final = torch.load(
        tmp_path / "outputs" / "resumed" / "checkpoints" / "last.ckpt", weights_only=False
    )
    assert final["lr_schedulers"][0]["last_epoch"] == 4


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_before_exiting_and_the_run_folder_resumes(
    larger_image_root, tmp_path
):
    run_dir = tmp_path / "outputs" / "preempted"
    process = start_training(run_dir, larger_image_root, tmp_path, "trainer.max_epochs=50")
    wait_for_epoch(run_dir / "checkpoints" / "last.ckpt", 0, process)
    time.sleep(1.0)  # into the next epoch
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] > 0
    assert "SIGTERM: wrote" in (run_dir / "train.log").read_text()

    resumed = run_train_cli(
        *SMALL_RUN,
        f"data.root={larger_image_root}",
        f"trainer.max_epochs={saved['epoch'] + 2}",
        f"ckpt_path={run_dir}",
        f"hydra.run.dir={tmp_path / 'outputs' / 'resumed'}",
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    metrics = json.loads((tmp_path / "outputs" / "resumed" / "metrics.json").read_text())
    assert metrics["epochs_trained"] == saved["epoch"] + 2
    assert metrics["global_step"] > saved["global_step"]


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
    image_root, tmp_path, override, message
):
    result = run_train_cli(
        *SMALL_RUN,
        f"data.root={image_root}",
        override,
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()  # rejected before any work


def test_a_checkpoint_of_another_model_shape_is_rejected(trained_run, image_root, tmp_path):
    result = run_train_cli(
        *SMALL_RUN,
        f"data.root={image_root}",
        "model.groups=2",
        f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "was trained with model.groups=1 but this run has model.groups=2" in result.stderr
