"""The real command, `python -m alexnet_pl.train ...`, on real JPEG folders: in a subprocess as a
user runs it, or through the same entry point in the test process (run_in_process) where a fresh
interpreter would only add its imports."""

import io
import json
import shutil
import signal
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from alexnet_pl.data.demo_data import SHAPES
from tests.conftest import SMALL_RUN, cli_environment, run_module_in_process, run_train_cli


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


def test_missing_data_root_stops_with_the_expected_layout_and_the_demo_hint(
    tmp_path, run_in_process
):
    result = run_in_process(
        *SMALL_RUN,
        f"data.root={tmp_path / 'no-imagenet-here'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "has no train/ folder" in result.stderr
    assert "experiment=demo" in result.stderr


def test_unknown_config_key_is_hydras_own_error(tmp_path, run_in_process):
    result = run_in_process("optimizer.learning_rate=0.1", cwd=tmp_path)
    assert result.returncode != 0
    assert "Could not override 'optimizer.learning_rate'" in result.stderr


def test_num_classes_that_differs_from_the_folders_is_rejected(
    image_root, tmp_path, run_in_process
):
    result = run_in_process(
        *SMALL_RUN,
        "model.num_classes=1000",
        f"data.root={image_root}",
        "trainer.fast_dev_run=true",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "model.num_classes=1000 but the data has 10 classes" in result.stderr


def test_resume_from_a_checkpoint_that_does_not_exist_is_rejected(
    image_root, tmp_path, run_in_process
):
    result = run_in_process(
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


STEPS_PER_EPOCH = 20 // 8  # image_root: 20 training images, batches of 8, the last one dropped


@dataclass
class ResumeChain:
    """One short training and the commands that continue it, all in its run folder (`run`), run
    from the folder whose outputs/ `ckpt_path=last` searches."""

    run: Path  # the one run folder
    first: Path  # a copy of what the first command left: metrics.json, last.ckpt, best_name
    first_output: str  # what it printed (2 epochs from scratch, seed 7)
    killed_at: dict  # the last.ckpt the kill -9 left: resumed from the first, killed mid-run
    killed_output: str  # what it printed before the kill
    resumed_max_epochs: int  # ckpt_path=last after the kill, to the end of the epoch it was in


def wait_for_epoch(checkpoint: Path, epoch: int, process: subprocess.Popen, limit: float = 240):
    """Polls until last.ckpt holds `epoch` (it is renamed into place, so always readable)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and process.poll() is None:
        if checkpoint.exists():
            if torch.load(checkpoint, mmap=True, weights_only=False)["epoch"] >= epoch:
                return
        time.sleep(0.2)
    raise AssertionError(f"{checkpoint} never reached epoch {epoch}")


@pytest.fixture(scope="module")
def resume_chain(image_root, tmp_path_factory) -> ResumeChain:
    """Three runs that serve the short-run and the kill -9 tests, each resuming the one before."""
    work = tmp_path_factory.mktemp("resume_chain")
    outputs = work / "outputs"
    data = [*SMALL_RUN, f"data.root={image_root}"]

    # The first and the last command in this process (a fresh interpreter would only add its
    # imports), what they print kept as a terminal would show it.
    run, first_output = outputs / "first", io.StringIO()
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(first_output):
        with redirect_stderr(first_output):
            arguments = [*data, "trainer.max_epochs=2", "seed=7", f"hydra.run.dir={run}"]
            status = run_module_in_process("alexnet_pl.train", arguments, work, patch)
    assert status == 0, first_output.getvalue()[-6000:]
    first = work / "first_command"  # the commands after it write into the same folder
    first.mkdir()
    shutil.copy(run / "metrics.json", first)
    shutil.copy(run / "checkpoints" / "last.ckpt", first)
    (best,) = (run / "checkpoints").glob("best-epoch*-val_top1_*.ckpt")
    (first / "best_name").write_text(best.name)

    # Resumed from the run's last.ckpt with far more epochs than it trains before the kill, which
    # comes once it has written an epoch of its own (its first: epoch 2), in the next one.
    killed_output = work / "killed_output.txt"
    with killed_output.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "alexnet_pl.train", *data, "trainer.max_epochs=100"]
            + [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"],
            cwd=work,
            env=cli_environment(),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_epoch(run / "checkpoints" / "last.ckpt", 2, process)
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()  # a no-op after the kill; stops it if the wait failed
            process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, killed_output.read_text()[-3000:]
    killed_at = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)

    # Epochs 0..killed_at are in its last.ckpt; the resume trains the one it was killed in.
    max_epochs = killed_at["epoch"] + 2
    with pytest.MonkeyPatch.context() as patch:
        again = [*data, "ckpt_path=last", f"trainer.max_epochs={max_epochs}"]
        assert run_module_in_process("alexnet_pl.train", again, work, patch) == 0
    return ResumeChain(
        run=run,
        first=first,
        first_output=first_output.getvalue(),
        killed_at=killed_at,
        killed_output=killed_output.read_text(),
        resumed_max_epochs=max_epochs,
    )


@pytest.mark.slow
def test_short_run_writes_metrics_and_checkpoints_then_resumes_at_the_next_epoch(resume_chain):
    first, run = resume_chain.first, resume_chain.run
    metrics = json.loads((first / "metrics.json").read_text())
    for key in ("val/loss", "val/top1", "val/top5"):
        assert 0.0 <= metrics[key] <= (1.0 if key != "val/loss" else 100.0)
    assert metrics["epochs_trained"] == 2
    assert metrics["global_step"] == 2 * STEPS_PER_EPOCH

    last = run / "checkpoints" / "last.ckpt"
    best = [run / "checkpoints" / (first / "best_name").read_text()]
    assert Path(metrics["best_checkpoint"]) == best[0]
    checkpoint = torch.load(first / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == 1 and checkpoint["global_step"] == 2 * STEPS_PER_EPOCH
    assert checkpoint["config"]["seed"] == 7
    assert checkpoint["config"]["model"]["num_classes"] == 10
    assert checkpoint["class_names"] == sorted(SHAPES)
    assert checkpoint["lr_schedulers"][0]["last_epoch"] == 2  # stepped once per finished epoch
    assert "state" in checkpoint["optimizer_states"][0]  # the state, not a pickled optimizer

    assert "images/s=" in resume_chain.first_output  # the progress bar shows the speed
    assert "finished:" in (run / "train.log").read_text()  # the closing summary
    assert f"best checkpoint    {best[0]}" in (run / "train.log").read_text()

    scalars = read_scalars(run / "tensorboard")
    assert {"train/loss", "train/top1", "train/top5", "val/loss", "val/top1", "val/top5"} <= scalars
    assert "train/lr" in scalars

    # The next run resumed from that last.ckpt (named as the file), and the one after it stopped
    # at the trainer.max_epochs it was given: the whole count, not epochs on top of the resumed.
    assert f"Restored all states from the checkpoint at {last}" in resume_chain.killed_output
    resumed = torch.load(last, map_location="cpu", weights_only=False)
    epochs = resume_chain.resumed_max_epochs
    assert resumed["epoch"] == epochs - 1 and resumed["global_step"] == epochs * STEPS_PER_EPOCH
    assert resumed["lr_schedulers"][0]["last_epoch"] == epochs
    assert json.loads((run / "metrics.json").read_text())["epochs_trained"] == epochs


@pytest.mark.slow
def test_kill_9_mid_run_then_ckpt_path_last_continues_at_the_right_epoch(resume_chain):
    # Killed while training the epoch after the one its last.ckpt holds; the file is whole.
    killed_at, run = resume_chain.killed_at, resume_chain.run
    assert killed_at["epoch"] >= 2
    assert killed_at["global_step"] == STEPS_PER_EPOCH * (killed_at["epoch"] + 1)
    assert killed_at["lr_schedulers"][0]["last_epoch"] == killed_at["epoch"] + 1

    # ckpt_path=last found the run's last.ckpt (the newest) and went on from there, in the run's
    # folder: one folder, and TensorBoard reads back one series over the three commands, every
    # step once (the killed process's steps after its checkpoint are hidden, then logged again).
    assert [p.name for p in run.parent.iterdir()] == ["first"]
    epochs = resume_chain.resumed_max_epochs
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("train/loss")] == list(
        range(epochs * STEPS_PER_EPOCH)
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_trained"] == epochs
    assert metrics["global_step"] == epochs * STEPS_PER_EPOCH
    final = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert final["lr_schedulers"][0]["last_epoch"] == epochs
    # trainer.max_epochs grew from 2 to 100 under StepLR, whose length does not depend on it.
    resumes = yaml.safe_load((run / "config.yaml").read_text())["resumes"]
    assert resumes[0]["changed"]["trainer.max_epochs"] == {"run": 2, "now": 100}
    assert len(list(run.rglob("overrides.yaml"))) == 1  # Hydra's record of the first command


@pytest.mark.slow
def test_unset_seed_is_drawn_and_recorded_and_an_exported_pl_global_seed_is_not_it(
    image_root, tmp_path, run_in_process
):
    # A PL_GLOBAL_SEED left in the shell (Lightning sets it in every process it seeds) must not
    # fix the seed of a run that asks for a drawn one.
    result = run_in_process(
        *SMALL_RUN,
        f"data.root={image_root}",
        "trainer.max_epochs=1",
        f"hydra.run.dir={tmp_path}",
        cwd=tmp_path,
        env={"PL_GLOBAL_SEED": "1234"},
    )
    assert_succeeded(result)
    seed = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["config"]["seed"]
    assert isinstance(seed, int) and seed != 1234
    assert f"seed: {seed}" in (tmp_path / "config.yaml").read_text()
    assert f"Seed set to {seed}" in result.stdout + result.stderr


def saved_config(run_folder: Path) -> dict:
    return yaml.safe_load((run_folder / "config.yaml").read_text())


def test_sweep_runs_each_job_in_its_own_folder(image_root, tmp_path, run_in_process):
    # Hydra's basic launcher runs the jobs one after the other in the command's own process.
    sweep = tmp_path / "sweep"
    result = run_in_process(
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


def test_sweep_with_ddp_is_refused_with_what_to_do_instead(image_root, tmp_path, run_in_process):
    result = run_in_process(
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
