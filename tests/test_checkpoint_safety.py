"""Checkpoints from elsewhere and from before: a checkpoint carrying a pickled object that would run
code is refused by every command that opens checkpoints, naming the file, before the object is
built; a format 1 checkpoint (torchvision's dropout placement) still gives the same outputs, and is
refused for resuming."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alexnet_pl.checkpoint import (
    CURRENT_FORMAT,
    FORMAT_KEY,
    NETWORK_PREFIX,
    read_checkpoint,
    trained_model_from,
)
from alexnet_pl.lrn import LocalResponseNorm
from alexnet_pl.network import SMALLEST_INPUT_SIZE, AlexNet
from alexnet_pl.preflight import check_resumable
from tests.conftest import NUM_CLASSES, SMALL_RUN, cli_environment
from tests.test_slurm_requeue import slurm_environment

COMMANDS = ("evaluate", "predict", "export", "train", "train_requeued_on_slurm")


class WritesAFile:
    """Unpickling this calls Path.write_text: a stand-in for any code a shared file could run."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (Path(self.target), "code from the checkpoint ran"))


@pytest.fixture(scope="module")
def trap(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small checkpoint that looks like ours, with the object hidden in its config; and the file
    that unpickling it would write."""
    folder = tmp_path_factory.mktemp("trap")
    target = folder / "written_by_the_checkpoint.txt"
    checkpoint = {
        "state_dict": {},
        "optimizer_states": [],
        "class_names": [f"class_{i}" for i in range(NUM_CLASSES)],
        "config": {"model": {"num_classes": NUM_CLASSES, "groups": 1}, "note": WritesAFile(target)},
        FORMAT_KEY: CURRENT_FORMAT,
    }
    path = folder / "shared_run" / "checkpoints" / "last.ckpt"  # where `ckpt_path=` resumes from
    path.parent.mkdir(parents=True)
    torch.save(checkpoint, path)
    return path, target


def test_the_trap_does_run_code_when_unpickled_without_weights_only(trap):
    """The test's own check: the object is live, so 'not written' below means 'refused'."""
    path, target = trap
    try:
        torch.load(path, weights_only=False)
        assert target.read_text() == "code from the checkpoint ran"
    finally:
        target.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def requeued_on_slurm(trap, image_root, tmp_path_factory) -> subprocess.CompletedProcess:
    """A requeued SLURM job, in a real process with SLURM's environment: it resumes from the
    hpc_ckpt_*.ckpt in its run folder without ckpt_path (resume.find reads it as any resume, with
    weights_only=True; train.py also passes weights_only=True to Lightning's own load), while the
    environment asks torch to default to weights_only=False."""
    path, _ = trap
    work = tmp_path_factory.mktemp("requeued")
    requeued_run = work / "slurm_run"
    requeued_run.mkdir()
    shutil.copy(path, requeued_run / "hpc_ckpt_1.ckpt")
    slurm = {**slurm_environment(work), "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    slurm["PYTHONPATH"] = cli_environment()["PYTHONPATH"]
    command = [sys.executable, "-m", "alexnet_pl.train", *SMALL_RUN, f"data.root={image_root}"]
    return subprocess.run(
        [*command, f"hydra.run.dir={requeued_run}"],
        cwd=work,
        env=slurm,
        capture_output=True,
        text=True,
        timeout=300,
    )


def command_line(command: str, path: Path, image_root: Path, work: Path) -> tuple[str, list[str]]:
    """The module and arguments of each command that opens a checkpoint, given `path`."""
    return {
        "evaluate": ("evaluate", [f"ckpt_path={path}", f"hydra.run.dir={work}"]),
        "predict": ("predict", [str(path), str(image_root)]),
        "export": ("export", [str(path), "--output", str(work / "x.onnx")]),
        "train": (
            "train",
            [*SMALL_RUN, f"data.root={image_root}", f"ckpt_path={path}"],  # in the run's folder
        ),
    }[command]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_checkpoint_that_would_run_code_is_refused_naming_the_file(
    trap, image_root, tmp_path, run_in_process, request, command
):
    path, target = trap
    if command == "train_requeued_on_slurm":
        result = request.getfixturevalue("requeued_on_slurm")
    else:  # they only start up and stop: the command's own entry point in this process
        module, arguments = command_line(command, path, image_root, tmp_path)
        result = run_in_process(*arguments, cwd=tmp_path, module=f"alexnet_pl.{module}")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert not target.exists()  # the object was never built
    if command == "train_requeued_on_slurm":  # the requeued job's checkpoint is checked too
        path = Path("hpc_ckpt_1.ckpt")
    refusal = f"{path} was not loaded: it holds a pickled Python object (getattr)"
    assert refusal in output, output[-3000:]  # names the file and the object


def test_a_trained_runs_checkpoints_hold_only_plain_data_and_their_format(trained_run):
    for path in sorted((trained_run / "checkpoints").glob("*.ckpt")):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        assert checkpoint[FORMAT_KEY] == CURRENT_FORMAT == 2, path.name


def as_format_1(checkpoint: dict) -> dict:
    """What the earlier code wrote: fc6, fc7 under classifier.1 and .4, no format key."""
    renamed = {
        f"{NETWORK_PREFIX}classifier.0.": f"{NETWORK_PREFIX}classifier.1.",
        f"{NETWORK_PREFIX}classifier.3.": f"{NETWORK_PREFIX}classifier.4.",
    }
    state_dict = {}
    for key, value in checkpoint["state_dict"].items():
        prefix = next((p for p in renamed if key.startswith(p)), None)
        state_dict[renamed[prefix] + key[len(prefix) :] if prefix else key] = value
    old = {key: value for key, value in checkpoint.items() if key != FORMAT_KEY}
    return {**old, "state_dict": state_dict}


def test_a_format_1_checkpoint_gives_the_outputs_it_gave_before(trained_run):
    """evaluate, predict and export all read checkpoints through trained_model_from."""
    path = trained_run / "checkpoints" / "last.ckpt"
    current = read_checkpoint(path, mmap=True)
    old = as_format_1(current)
    assert "network.classifier.1.weight" in old["state_dict"]
    batch = torch.randn(2, 3, SMALLEST_INPUT_SIZE, SMALLEST_INPUT_SIZE)
    with torch.no_grad():
        expected = trained_model_from(current, path).network(batch)
        torch.testing.assert_close(trained_model_from(old, path).network(batch), expected)


def test_a_format_1_two_tower_checkpoint_keeps_the_normalisation_it_was_trained_with():
    """Format 1 normalised across the towers; the loaded network must do the same."""
    state = {
        NETWORK_PREFIX + k: v for k, v in AlexNet(num_classes=3, groups=2).state_dict().items()
    }
    config = {
        "model": {"_target_": "alexnet_pl.network.AlexNet", "num_classes": 3, "groups": 2},
        "transforms": {"resize": 72, "crop": 67, "mean": [0.5] * 3, "std": [0.5] * 3},
    }
    current = {"state_dict": state, "config": config, "class_names": ["a", "b", "c"]}
    current[FORMAT_KEY] = CURRENT_FORMAT
    for checkpoint, groups in ((current, 2), (as_format_1(current), 1)):
        network = trained_model_from(checkpoint, "x.ckpt").network
        lrns = [m for m in network.modules() if isinstance(m, LocalResponseNorm)]
        assert [m.groups for m in lrns] == [groups, groups]


def test_a_format_1_checkpoint_is_refused_for_resuming(tmp_path):
    """Resuming would put the old optimizer state onto a network whose dropout has moved."""
    model = {"num_classes": 10, "groups": 1}
    path = tmp_path / "old.ckpt"
    torch.save({"config": {"model": model}, "optimizer_states": [], "state_dict": {}}, path)
    with pytest.raises(ValueError) as refused:
        check_resumable(str(path))
    assert f"ckpt_path={path} was written in checkpoint format 1" in str(refused.value)
    assert "Start a new run" in str(refused.value)
