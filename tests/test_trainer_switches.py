"""The Trainer switches researchers type, on the command line without `+`, at Lightning's
defaults, and working with the project's step cadence (check batches) and safeguards."""

import csv
import inspect
import json

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from tests.conftest import SMALL_RUN

SWITCHES = {
    "limit_train_batches": "0.5",
    "limit_val_batches": "2",
    "num_sanity_val_steps": "0",
    "accumulate_grad_batches": "2",
    "gradient_clip_val": "1.0",
    "val_check_interval": "0.5",
    "check_val_every_n_epoch": "2",
    "enable_progress_bar": "false",
    "enable_model_summary": "false",
    "deterministic": "warn",
    "sync_batchnorm": "true",
    "profiler": "simple",
}


def test_trainer_switches_default_to_lightnings_own(compose_config):
    cfg = compose_config()
    lightning = inspect.signature(pl.Trainer.__init__).parameters
    for name in SWITCHES:
        assert cfg.trainer[name] == lightning[name].default, name


def test_trainer_switches_need_no_plus(compose_config):
    cfg = compose_config(*(f"trainer.{name}={value}" for name, value in SWITCHES.items()))
    del cfg.trainer.deterministic  # process-wide torch state; the run below sets and restores it
    cfg.trainer.precision = "32-true"  # auto: chosen by alexnet_pl.speed in train()
    trainer = instantiate(cfg.trainer, accelerator="cpu", logger=False)  # Lightning takes them all
    assert trainer.accumulate_grad_batches == 2
    assert trainer.check_val_every_n_epoch == 2
    assert trainer.progress_bar_callback is None
    assert type(trainer.profiler).__name__ == "SimpleProfiler"


@pytest.fixture
def restores_torch_determinism():
    """trainer.deterministic switches torch.use_deterministic_algorithms for the whole process:
    back as it was for the tests after this one."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.backends.cudnn.benchmark = benchmark


def test_accumulation_partial_epochs_and_mid_epoch_validation_train(
    larger_image_root, tmp_path, run_in_process, restores_torch_determinism
):
    """4 of the 5 batches of 8 images, 2 per optimizer step (2 steps), validation of 2 batches
    after every 2 batches, clipping, deterministic kernels, the profiler, no progress bar."""
    run = tmp_path / "run"
    result = run_in_process(
        *SMALL_RUN,
        f"data.root={larger_image_root}",
        "trainer.max_epochs=1",
        "seed=0",
        "logger=csv",
        "trainer.limit_train_batches=4",
        "trainer.accumulate_grad_batches=2",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=2",
        "trainer.gradient_clip_val=1.0",
        "trainer.deterministic=true",
        "trainer.benchmark=false",
        "trainer.enable_progress_bar=false",
        "trainer.profiler=simple",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 2
    with (run / "csv" / "metrics.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    # log_every_n_steps=1: the step cadence's check batches fall on both optimizer steps, so the
    # training metrics reach the logger at each; validation ran after batch 2 and batch 4.
    assert [row["step"] for row in rows if row["train/loss"]] == ["0", "1"]
    assert len([row for row in rows if row["val/top1"]]) == 2
    assert "FIT Profiler Report" in result.stdout + result.stderr
    assert "Epoch 0:" not in result.stderr  # no progress bar
