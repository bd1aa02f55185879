"""The real command, `python -m alexnet_pl.train ...`, in a subprocess on real JPEG folders."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from alexnet_pl.data.demo_data import SHAPES
from tests.conftest import SMALL_RUN, cli_environment, run_train_cli


def assert_succeeded(result) -> None:
    assert result.returncode == 0, (
        f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    )


def test_fast_dev_run_through_the_cli(image_root, tmp_path):
    run_dir = tmp_path / "run"
    result = run_train_cli(
        *SMALL_RUN,
        f"data.root={image_root}",
        "trainer.fast_dev_run=true",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert_succeeded(result)
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "train.log").is_file()


def test_paper_recipe_runs_a_real_227_pixel_batch_with_two_towers(image_root, tmp_path):
    # The paper's full-size input, once: resize 256, crop 227, grouped convolutions, SGD + plateau.
    result = run_train_cli(
        "experiment=paper",
        "trainer.accelerator=cpu",
        "model.num_classes=10",
        f"data.root={image_root}",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.pin_memory=false",
        "trainer.fast_dev_run=true",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert_succeeded(result)
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "groups: 2" in saved and "torch.optim.SGD" in saved and "crop: 227" in saved


def test_missing_data_root_stops_with_the_expected_layout_and_the_demo_hint(tmp_path):
    result = run_train_cli(
        *SMALL_RUN,
        f"data.root={tmp_path / 'no-imagenet-here'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "has no train/ folder" in result.stderr
    assert "experiment=demo" in result.stderr


def test_unknown_config_key_is_hydras_own_error(tmp_path):
    result = run_train_cli("optimizer.learning_rate=0.1", cwd=tmp_path)
    assert result.returncode != 0
    assert "Could not override 'optimizer.learning_rate'" in result.stderr


def test_num_classes_that_differs_from_the_folders_is_rejected(image_root, tmp_path):
    result = run_train_cli(
        *SMALL_RUN,
        "model.num_classes=1000",
        f"data.root={image_root}",
        "trainer.fast_dev_run=true",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "model.num_classes=1000 but the data has 10 classes" in result.stderr


def test_resume_from_a_checkpoint_that_does_not_exist_is_rejected(image_root, tmp_path):
    result = run_train_cli(
        *SMALL_RUN,
        f"data.root={image_root}",
        f"ckpt_path={tmp_path / 'missing.ckpt'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "missing.ckpt is not a checkpoint" in result.stderr


def read_scalars(tensorboard_dir: Path) -> set[str]:
    events = EventAccumulator(str(tensorboard_dir))
    events.Reload()
    return set(events.Tags()["scalars"])


@pytest.mark.slow
def test_short_run_writes_metrics_and_checkpoints_then_resumes_at_the_next_epoch(
    larger_image_root, tmp_path
):
    first = tmp_path / "first"
    result = run_train_cli(
        *SMALL_RUN,
        f"data.root={larger_image_root}",
        "trainer.max_epochs=2",
        "seed=7",
        f"hydra.run.dir={first}",
        cwd=tmp_path,
    )
    assert_succeeded(result)

    metrics = json.loads((first / "metrics.json").read_text())
    for key in ("val/loss", "val/top1", "val/top5"):
        assert 0.0 <= metrics[key] <= (1.0 if key != "val/loss" else 100.0)
    assert metrics["epochs_trained"] == 2
    assert metrics["global_step"] == 2 * (40 // 8)  # 40 train images, batch 8, two epochs

    last = first / "checkpoints" / "last.ckpt"
    best = list((first / "checkpoints").glob("best-epoch*-val_top1_*.ckpt"))
    assert last.is_file() and len(best) == 1
    assert Path(metrics["best_checkpoint"]) == best[0]
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == 1 and checkpoint["global_step"] == 10
    assert checkpoint["config"]["seed"] == 7
    assert checkpoint["config"]["model"]["num_classes"] == 10
    assert checkpoint["class_names"] == sorted(SHAPES)
    assert checkpoint["lr_schedulers"][0]["last_epoch"] == 2  # stepped once per finished epoch
    assert "state" in checkpoint["optimizer_states"][0]  # the state, not a pickled optimizer

    assert "images/s=" in result.stdout + result.stderr  # the progress bar shows the speed
    assert "finished:" in (first / "train.log").read_text()  # the closing summary
    assert f"best checkpoint    {best[0]}" in (first / "train.log").read_text()

    scalars = read_scalars(first / "tensorboard")
    assert {"train/loss", "train/top1", "train/top5", "val/loss", "val/top1", "val/top5"} <= scalars
    assert "train/lr" in scalars

    second = tmp_path / "second"
    result = run_train_cli(
        *SMALL_RUN,
        f"data.root={larger_image_root}",
        "trainer.max_epochs=3",
        f"ckpt_path={last}",
        f"hydra.run.dir={second}",
        cwd=tmp_path,
    )
    assert_succeeded(result)
    resumed = torch.load(
        second / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert resumed["epoch"] == 2 and resumed["global_step"] == 15  # one more epoch, not three
    assert resumed["lr_schedulers"][0]["last_epoch"] == 3
    assert json.loads((second / "metrics.json").read_text())["epochs_trained"] == 3


@pytest.mark.slow
def test_unset_seed_is_drawn_and_recorded_and_an_exported_pl_global_seed_is_not_it(
    image_root, tmp_path
):
    # A PL_GLOBAL_SEED left in the shell (Lightning sets it in every process it seeds) must not
    # fix the seed of a run that asks for a drawn one.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "alexnet_pl.train",
            *SMALL_RUN,
            f"data.root={image_root}",
            "trainer.max_epochs=1",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=tmp_path,
        env={**cli_environment(), "PL_GLOBAL_SEED": "1234"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_succeeded(result)
    seed = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["config"]["seed"]
    assert isinstance(seed, int) and seed != 1234
    assert f"seed: {seed}" in (tmp_path / "config.yaml").read_text()
    assert f"Seed set to {seed}" in result.stdout + result.stderr


def saved_config(run_folder: Path) -> dict:
    return yaml.safe_load((run_folder / "config.yaml").read_text())


def test_sweep_runs_each_job_in_its_own_folder(image_root, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_train_cli(
        "-m",
        *SMALL_RUN,
        f"data.root={image_root}",
        "trainer.fast_dev_run=true",
        "optimizer.lr=1e-4,3e-4",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert_succeeded(result)
    configs = [saved_config(sweep / job) for job in ("0", "1")]
    assert sorted(config["optimizer"]["lr"] for config in configs) == [1e-4, 3e-4]
    # seed=null: each job draws its own, not the one the first job left in PL_GLOBAL_SEED.
    assert configs[0]["seed"] != configs[1]["seed"]


def test_sweep_with_ddp_is_refused_with_what_to_do_instead(image_root, tmp_path):
    result = run_train_cli(
        "-m",
        *SMALL_RUN,
        f"data.root={image_root}",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "optimizer.lr=1e-4,3e-4",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "Hydra multirun (-m) cannot start DDP with 2 processes" in result.stderr
    assert "Initializing distributed" not in result.stdout + result.stderr  # refused before launch
