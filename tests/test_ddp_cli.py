"""Real multi-process DDP through the CLI: two CPU processes (gloo), as four GPUs would run it."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import SMALL_RUN, run_train_cli
from tests.test_train_cli import assert_succeeded


@pytest.mark.slow
def test_two_process_ddp_writes_one_run_folder_with_checkpoints(larger_image_root, tmp_path):
    run_dir = tmp_path / "outputs" / "ddp"
    result = run_train_cli(
        *SMALL_RUN,
        f"data.root={larger_image_root}",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "trainer.max_epochs=1",
        "data.batch_size=8",  # global: 4 per process
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert_succeeded(result)
    output = result.stdout + result.stderr
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in output

    # Rank 1 was launched into the same folder: one run folder, one config, its own log file.
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["ddp"]
    assert (run_dir / "train_ddp_process_1.log").is_file()
    assert len(list(run_dir.rglob("config.yaml"))) == 2  # .hydra/config.yaml and the resolved one

    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    # 40 images over 2 processes at 4 each: 5 steps, not the 10 a single process would take.
    assert checkpoint["global_step"] == 5
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) >= {"val/loss", "val/top1", "val/top5"}


def test_global_batch_smaller_than_the_process_count_is_rejected(image_root, tmp_path):
    result = run_train_cli(
        *SMALL_RUN,
        f"data.root={image_root}",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "data.batch_size=3",
        "trainer.fast_dev_run=true",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode != 0
    assert "data.batch_size=3 is the global batch and must divide evenly over 2 processes" in (
        result.stderr
    )


@pytest.mark.slow
def test_torchrun_launches_two_cpu_processes_that_train_into_one_folder(
    larger_image_root, tmp_path
):
    # torchrun starts every rank itself (Lightning sees TorchElastic and launches nothing); each
    # process composes the config, so the run folder is given explicitly to be the same for all.
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "PL_GLOBAL_SEED"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "alexnet_pl.train",
            *SMALL_RUN,
            f"data.root={larger_image_root}",
            "trainer=ddp",  # DDPStrategy with gradient bucket views and the bf16 gradient hook
            "trainer.devices=2",
            "trainer.max_epochs=1",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_succeeded(result)
    assert "MEMBER: 2/2" in result.stdout + result.stderr
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 5  # 40 images, 4 per process per step
    assert set(json.loads((run_dir / "metrics.json").read_text())) >= {"val/top1"}
