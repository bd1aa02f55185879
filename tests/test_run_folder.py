"""What a run folder holds: the number of classes as counted from the data, and a best checkpoint
that is the weights and the run's record only (a third of last.ckpt), usable by evaluate, predict
and export but refused as a resume point."""

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from alexnet_pl import preflight
from alexnet_pl.checkpoint import load_trained_model
from alexnet_pl.data.demo_data import SHAPES


def best_checkpoint(run: Path) -> Path:
    (best,) = (run / "checkpoints").glob("best-epoch*-val_top1_*.ckpt")
    return best


def test_num_classes_defaults_to_the_number_of_class_folders(counted_classes_run):
    # The run gave no model.num_classes: the config's null became the 10 class folders.
    assert OmegaConf.load(counted_classes_run / ".hydra" / "config.yaml").model.num_classes is None
    assert OmegaConf.load(counted_classes_run / "config.yaml").model.num_classes == 10
    checkpoint = torch.load(
        best_checkpoint(counted_classes_run), map_location="cpu", mmap=True, weights_only=False
    )
    assert checkpoint["config"]["model"]["num_classes"] == 10
    assert checkpoint["state_dict"]["network.classifier.6.weight"].shape[0] == 10
    assert checkpoint["class_names"] == sorted(SHAPES)


def test_best_checkpoint_holds_the_weights_and_the_record_but_no_optimizer(trained_run):
    best = torch.load(
        best_checkpoint(trained_run), map_location="cpu", mmap=True, weights_only=False
    )
    last = torch.load(
        trained_run / "checkpoints" / "last.ckpt", map_location="cpu", mmap=True, weights_only=False
    )
    assert "optimizer_states" not in best and "lr_schedulers" not in best
    assert best["config"] == last["config"] and best["class_names"] == last["class_names"]
    # One epoch: the best weights are the last ones, and predict and export read them alike.
    model = load_trained_model(best_checkpoint(trained_run))
    for name, weight in model.network.state_dict().items():
        assert torch.equal(weight, last["state_dict"][f"network.{name}"]), name
    # Adam keeps two moments per weight, so last.ckpt is three times the weights.
    best_bytes = best_checkpoint(trained_run).stat().st_size
    last_bytes = (trained_run / "checkpoints" / "last.ckpt").stat().st_size
    assert best_bytes < 0.34 * last_bytes


@pytest.mark.slow
def test_best_checkpoint_evaluates_to_what_training_logged(trained_run, tmp_path, run_in_process):
    result = run_in_process(
        f"ckpt_path={best_checkpoint(trained_run)}",
        "data.num_workers=0",
        f"hydra.run.dir={tmp_path}",
        cwd=tmp_path,
        module="alexnet_pl.evaluate",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    measured = json.loads((tmp_path / "metrics.json").read_text())["center_crop"]
    logged = json.loads((trained_run / "metrics.json").read_text())
    assert measured["top1"] == pytest.approx(logged["val/top1"], abs=1e-6)
    assert measured["top5"] == pytest.approx(logged["val/top5"], abs=1e-6)


def test_best_checkpoint_is_refused_as_a_resume_point_naming_last(trained_run):
    with pytest.raises(ValueError, match="holds the weights only") as refused:
        preflight.check_resumable(str(best_checkpoint(trained_run)))
    assert "checkpoints/last.ckpt" in str(refused.value)
    assert "init_from=" in str(refused.value)  # the way to start a new run from it
    preflight.check_resumable(str(trained_run / "checkpoints" / "last.ckpt"))
