"""An error the user caused prints its message alone (no traceback) and exits with status 1, from
every entry point; HYDRA_FULL_ERROR=1 shows the traceback as well."""

import subprocess
import sys

import pytest

from tests.conftest import SMALL_RUN, cli_environment

AS_A_USER = {"HYDRA_FULL_ERROR": "0"}  # the test runners set 1; a user's shell has none


def run_cli(module: str, *args: str, cwd) -> subprocess.CompletedProcess:
    env = cli_environment()
    env.pop("HYDRA_FULL_ERROR")
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_wrong_data_root_prints_the_message_alone(tmp_path):
    result = run_cli(
        "alexnet_pl.train", *SMALL_RUN, f"data.root={tmp_path / 'nowhere'}", cwd=tmp_path
    )
    assert result.returncode == 1
    assert f"error: data.root={tmp_path / 'nowhere'} has no train/ folder" in result.stderr
    assert "Traceback" not in result.stderr
    assert "HYDRA_FULL_ERROR" not in result.stderr  # Hydra's hint comes with its tracebacks


def test_hydra_full_error_shows_the_traceback(tmp_path, run_in_process):
    result = run_in_process(*SMALL_RUN, f"data.root={tmp_path / 'nowhere'}", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "MissingInput: data.root=" in result.stderr


@pytest.mark.parametrize(
    "override, message",
    [
        # raised inside Trainer.fit (AlexNetModule.setup)
        ("model.num_classes=5", "error: model.num_classes=5 but the data has 10 classes"),
        ("ckpt_path=missing.ckpt", "error: ckpt_path=missing.ckpt is not a checkpoint"),
        ("data.batch_size=0", "error: data.batch_size=0 is the global batch"),
        ("optimizer.lr=0", "error: optimizer.lr=0 must be a positive number"),
    ],
)
def test_training_errors_print_the_message_alone(
    override, message, image_root, tmp_path, run_in_process
):
    result = run_in_process(
        *SMALL_RUN,
        f"data.root={image_root}",
        "trainer.max_epochs=1",
        override,
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
        env=AS_A_USER,
    )
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "module, args",
    [
        ("alexnet_pl.predict", ["missing.ckpt", "image.jpg"]),
        ("alexnet_pl.export", ["missing.ckpt"]),
        ("alexnet_pl.evaluate", ["ckpt_path=missing.ckpt"]),
    ],
)
def test_a_missing_checkpoint_prints_the_message_alone(module, args, tmp_path, run_in_process):
    result = run_in_process(*args, cwd=tmp_path, module=module, env=AS_A_USER)
    assert result.returncode == 1
    assert "error: checkpoint missing.ckpt does not exist" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_an_error_in_every_ddp_rank_exits_non_zero(image_root, tmp_path):
    """Raised in each rank after DDP launched them (AlexNetModule.setup runs in every rank)."""
    result = run_cli(
        "alexnet_pl.train",
        *SMALL_RUN,
        f"data.root={image_root}",
        "model.num_classes=5",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "error: model.num_classes=5 but the data has 10 classes" in result.stderr
    assert "Traceback" not in result.stderr
