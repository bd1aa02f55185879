"""One run, however it is stopped and resumed: `ckpt_path=<run folder>` goes on in that folder (one
folder, one TensorBoard series per tag, one CSV, one log, the best checkpoint over the whole run);
a resume that would change what the run computes is refused before any work, naming each key with
both values; `init_from` starts a new run from a checkpoint's weights.

The kill -9 case: test_train_cli.py (resume_chain); two processes: test_launchers.py; SLURM's
requeue: test_slurm_requeue.py. All through the real CLI, run in this process (run_in_process).
"""

import csv
import json
import re
import signal
from pathlib import Path

import pytest
import torch
import wandb
import yaml
from omegaconf import OmegaConf

from alexnet_pl import config_diff
from tests.conftest import SMALL_RUN, run_module_in_process
from tests.probes_resume import scalar_steps

STEPS_PER_EPOCH = 20 // 8  # conftest.image_root: 20 training images, batches of 8, last dropped
EPOCHS = 3
# The best checkpoint watches a score whose best epoch (0) comes before the interruption (epoch 1).
BEST_BEFORE_THE_STOP = [
    "+callbacks.score._target_=tests.probes_resume.ScoreByEpoch",
    "+callbacks.score.scores=[0.9,0.2,0.3]",
    "callbacks.best_checkpoint.monitor=probe/score",
]


@pytest.fixture(scope="module")
def sigterm_resumed(image_root, tmp_path_factory) -> Path:
    """A run of 3 epochs stopped by SIGTERM in epoch 1, then `ckpt_path=<its folder>` from the
    folder that holds outputs/, without hydra.run.dir and without the seed. Returns that folder."""
    work = tmp_path_factory.mktemp("sigterm_resumed")
    run_dir = work / "outputs" / "run"
    common = [
        *SMALL_RUN,
        f"data.root={image_root}",
        f"trainer.max_epochs={EPOCHS}",
        "logger=[tensorboard,csv,wandb,mlflow]",  # W&B offline, MLflow's file store
        *BEST_BEFORE_THE_STOP,
    ]
    stop = [
        "+callbacks.sigterm._target_=tests.probes_resume.SigtermAt",
        "+callbacks.sigterm.epoch=1",
        "+callbacks.sigterm.batch=0",
    ]
    with pytest.MonkeyPatch.context() as patch:
        for name in ("WANDB_MODE", "MLFLOW_TRACKING_URI"):  # the tests must not go online
            patch.delenv(name, raising=False)
        arguments = [*common, *stop, "seed=5", f"hydra.run.dir={run_dir}"]
        status = run_module_in_process("alexnet_pl.train", arguments, work, patch)
    assert status == 128 + signal.SIGTERM
    (work / "stopped_step").write_text(str(torch.load(last(run_dir))["global_step"]))
    wandb.finish()  # as the stopped process's end would: the resume is a new W&B process
    with pytest.MonkeyPatch.context() as patch:
        for name in ("WANDB_MODE", "MLFLOW_TRACKING_URI"):
            patch.delenv(name, raising=False)
        arguments = [*common, "ckpt_path=outputs/run"]
        assert run_module_in_process("alexnet_pl.train", arguments, work, patch) == 0
    return work


def last(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_a_run_stopped_by_sigterm_resumes_in_its_folder_with_one_curve_per_tag(sigterm_resumed):
    run_dir = sigterm_resumed / "outputs" / "run"
    assert list((sigterm_resumed / "outputs").iterdir()) == [run_dir]  # no second run folder
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_trained"] == EPOCHS
    assert metrics["global_step"] == EPOCHS * STEPS_PER_EPOCH

    for tag in ("train/loss", "train/lr", "train/epoch_seconds"):
        steps = scalar_steps(run_dir / "tensorboard", tag)
        assert steps == sorted(set(steps)), (tag, steps)  # one series: no step twice, never back
    # Every epoch's validation once, the first before the stop (the final values are written
    # again at the last one's step for the HParams tab: monitoring.HParamsWithMetrics).
    val_steps = scalar_steps(run_dir / "tensorboard", "val/loss")
    assert val_steps == sorted(val_steps) and len(set(val_steps)) == EPOCHS, val_steps
    train_steps = scalar_steps(run_dir / "tensorboard", "train/loss")
    assert train_steps[0] == 0 and train_steps[-1] == EPOCHS * STEPS_PER_EPOCH - 1

    with (run_dir / "csv" / "metrics.csv").open() as file:
        rows = [row for row in csv.DictReader(file) if row["train/loss"]]
    csv_steps = [int(row["step"]) for row in rows]
    assert csv_steps == train_steps  # the CSV logger appended, as TensorBoard continued

    # W&B (offline: a folder per process) and MLflow logged into the run's own run, continued.
    wandb_runs = {path.name.rsplit("-", 1)[1] for path in (run_dir / "wandb").glob("offline-run-*")}
    assert wandb_runs == {torch.load(last(run_dir))["logger_runs"]["wandb"]}
    (mlflow_run,) = [p for p in (run_dir / "mlruns").glob("*/*") if (p / "metrics").is_dir()]
    mlflow_steps = [
        int(line.split()[2])
        for line in (mlflow_run / "metrics/train/loss").read_text().split("\n")
        if line
    ]
    assert mlflow_steps == train_steps


@pytest.mark.slow
def test_a_resume_keeps_the_best_checkpoint_of_the_whole_run(sigterm_resumed):
    run_dir = sigterm_resumed / "outputs" / "run"
    # The score was best in epoch 0, before the stop: the checkpoint callback's state came back
    # with the run, so the resumed epochs (0.2, 0.3) did not replace it.
    (best,) = (run_dir / "checkpoints").glob("best-*.ckpt")
    assert best.name.startswith("best-epoch000-")
    assert json.loads((run_dir / "metrics.json").read_text())["best_checkpoint"] == str(best)


@pytest.mark.slow
def test_a_resume_appends_to_the_log_and_records_itself_in_config_yaml(sigterm_resumed):
    run_dir = sigterm_resumed / "outputs" / "run"
    stopped_step = int((sigterm_resumed / "stopped_step").read_text())
    log = (run_dir / "train.log").read_text()
    resumed_line = f"resumed from epoch 1, step {stopped_step} (checkpoint {last(run_dir)})"
    assert log.index("SIGTERM: wrote") < log.index(resumed_line) < log.index("finished:")

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["seed"] == 5  # the run's: the resume gave none
    (resume,) = config["resumes"]
    assert resume["command"].endswith("ckpt_path=outputs/run")  # as typed
    assert (resume["epoch"], resume["step"]) == (1, stopped_step)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", resume["time"])
    assert "callbacks.sigterm._target_" in resume["changed"]  # the stop probe, not a recipe
    # Hydra's own record of the resumed command did not go over the run's.
    (overrides,) = run_dir.rglob("overrides.yaml")
    assert "seed=5" in overrides.read_text()


@pytest.mark.parametrize(
    ("override", "key", "run_value", "new_value"),
    [
        ("optimizer=sgd", "optimizer._target_", "torch.optim.Adam", "torch.optim.SGD"),
        (
            "scheduler=plateau",
            "scheduler.kind",
            "torch.optim.lr_scheduler.StepLR",
            "torch.optim.lr_scheduler.ReduceLROnPlateau",
        ),
        ("data.batch_size=4", "data.batch_size", 8, 4),
    ],
)
def test_a_resume_with_another_recipe_is_refused_naming_the_keys_and_both_values(
    trained_run, larger_image_root, tmp_path, run_in_process, override, key, run_value, new_value
):
    checkpoint = last(trained_run)
    written = checkpoint.stat().st_mtime_ns
    arguments = [*SMALL_RUN, f"data.root={larger_image_root}", override]
    result = run_in_process(*arguments, f"ckpt_path={trained_run}", cwd=tmp_path)
    assert result.returncode != 0
    assert f"  {key}: the run has {run_value!r}, this command {new_value!r}\n" in result.stderr
    assert f"init_from={checkpoint}" in result.stderr  # what to do instead
    assert "rerun with its values" in result.stderr
    assert checkpoint.stat().st_mtime_ns == written  # refused before any work
    assert not (tmp_path / "outputs").exists()  # and no folder of its own


def test_a_resume_given_another_run_folder_is_refused(trained_run, tmp_path, run_in_process):
    result = run_in_process(
        f"ckpt_path={trained_run}", f"hydra.run.dir={tmp_path / 'elsewhere'}", cwd=tmp_path
    )
    assert result.returncode != 0
    assert f"continues the run in its own folder {trained_run}" in result.stderr
    assert "init_from" in result.stderr


def test_a_longer_resume_under_the_cosine_schedule_is_refused_naming_its_length(compose_config):
    # The checkpoint's cosine would keep its old length: the learning rate would reach 0 at the old
    # end and rise again while config.yaml claimed the longer run.
    run, resumed = (
        compose_config("scheduler=cosine", f"trainer.max_epochs={epochs}") for epochs in (2, 4)
    )
    saved, new = (OmegaConf.to_container(c, resolve=True) for c in (run, resumed))
    with pytest.raises(ValueError) as refused:
        config_diff.check_same_computation("run/last.ckpt", saved, resumed, new)
    assert "scheduler.epochs: the run has 2, this command 4 (derived from trainer.max_epochs)" in (
        str(refused.value)
    )


def test_a_run_from_before_the_module_config_is_refused_with_what_to_do(compose_config):
    cfg = compose_config()
    new = OmegaConf.to_container(cfg, resolve=True)
    earlier = {key: value for key, value in new.items() if key != "loss"}
    with pytest.raises(ValueError) as refused:
        config_diff.check_same_computation("run/last.ckpt", earlier, cfg, new)
    assert "earlier alexnet-pl" in str(refused.value)
    assert "init_from=run/last.ckpt" in str(refused.value)


def test_a_schedule_length_derived_from_max_epochs_is_named_when_it_would_change():
    # A cosine schedule whose T_max follows trainer.max_epochs: a longer run would reshape it.
    run = OmegaConf.create(
        {
            "trainer": {"max_epochs": 2},
            "scheduler": {"T_max": "${trainer.max_epochs}"},
            "loss": {"label_smoothing": 0.0},
        }
    )
    resumed = OmegaConf.merge(run, {"trainer": {"max_epochs": 4}})
    saved, new = (OmegaConf.to_container(c, resolve=True) for c in (run, resumed))
    with pytest.raises(ValueError) as refused:
        config_diff.check_same_computation("run/last.ckpt", saved, resumed, new)
    message = str(refused.value)
    assert "scheduler.T_max: the run has 2, this command 4 (derived from trainer.max_epochs)" in (
        message
    )
    assert "  trainer.max_epochs:" not in message  # it may grow itself
    # Under StepLR (no derived length) the same growth passes, and is returned for the record.
    step = OmegaConf.create(
        {"trainer": {"max_epochs": 2}, "scheduler": {"step_size": 30}, "loss": {}}
    )
    longer = OmegaConf.merge(step, {"trainer": {"max_epochs": 4}})
    changes = config_diff.check_same_computation(
        "run/last.ckpt",
        OmegaConf.to_container(step),
        longer,
        OmegaConf.to_container(longer),
    )
    assert changes == {"trainer.max_epochs": (2, 4)}


def test_only_settings_that_do_not_change_the_computation_may_differ():
    saved = {"data": {"num_workers": 8, "root": "/a"}, "trainer": {"devices": 1}, "seed": 1}
    new = {"data": {"num_workers": 2, "root": "/b"}, "trainer": {"devices": 4}, "seed": 2}
    found = config_diff.differences(saved, new)
    assert set(found) == {"data.num_workers", "data.root", "trainer.devices", "seed"}
    assert {key for key in found if not config_diff.may_differ(key)} == {"data.root", "seed"}
    # A key added to conf/ after the run, at null, is the run's behaviour; set, it differs.
    assert config_diff.differences({}, {"model": {"new_key": None}}) == {}
    assert config_diff.differences({}, {"model": {"new_key": 3}}) == {
        "model.new_key": (config_diff.MISSING, 3)
    }


@pytest.mark.slow
def test_init_from_starts_a_new_run_from_the_weights_with_a_fresh_optimizer(
    trained_run, image_root, tmp_path, run_in_process
):
    start = tmp_path / "start.json"
    result = run_in_process(
        *SMALL_RUN,
        f"data.root={image_root}",
        "trainer.max_epochs=1",
        "optimizer=sgd",  # another recipe: allowed, it is a new run
        f"init_from={trained_run}",
        "+callbacks.checksum._target_=tests.probes_resume.NetworkChecksum",
        f"+callbacks.checksum.path={start}",
        f"hydra.run.dir={tmp_path / 'branch'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    trained = torch.load(last(trained_run), weights_only=True)["state_dict"]
    expected = sum(
        float(weight.double().sum())
        for name, weight in trained.items()
        if name.startswith("network.")
    )
    started = json.loads(start.read_text())
    assert started["sum"] == pytest.approx(expected, rel=1e-9)  # the trained weights
    assert started["global_step"] == 0  # a new run: its own steps, epochs and optimizer
    branch = torch.load(last(tmp_path / "branch"), weights_only=True)
    assert branch["epoch"] == 0 and branch["global_step"] == STEPS_PER_EPOCH
    assert "momentum_buffer" in str(branch["optimizer_states"][0]["state"])  # SGD's, fresh
    config = yaml.safe_load((tmp_path / "branch" / "config.yaml").read_text())
    assert config["init_from"] == str(last(trained_run))
    assert config["ckpt_path"] is None and "resumes" not in config
