"""Fixtures: small real JPEG folders on disk, and runners for the real training CLI."""

import logging
import os
import runpy
import shutil
import subprocess
import sys
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from PIL import Image

from alexnet_pl.data.datamodule import ImageFolderDataModule
from alexnet_pl.data.demo_data import SHAPES, generate_demo_dataset
from alexnet_pl.data.preprocessing import Preprocessing
from alexnet_pl.data.transforms import ResizeCenterCrop, ResizeRandomCropFlip, ToNormalizedFloat
from tests.probes import colour_of_index

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "conf"
NUM_CLASSES = len(SHAPES)

# What every CLI test adds so that it runs in seconds on a 2-core CPU: the smallest input AlexNet
# takes, fc6 and fc7 of 256 units instead of 4096 (checkpoints of 30 MB, not 700), no worker
# processes, small batches. Everything else is the real default configuration; the network's
# own tests and the paper's 227 px run use the full width.
SMALL_RUN = [
    "trainer.accelerator=cpu",
    f"model.num_classes={NUM_CLASSES}",
    "model.fc_width=256",
    "transforms.resize=72",
    "transforms.crop=67",
    "data.batch_size=8",
    "data.num_workers=0",
    "data.pin_memory=false",
    "trainer.log_every_n_steps=1",
]


def small_datamodule(root: Path, batch_size: int = 4, decode: str = "cpu") -> ImageFolderDataModule:
    """The DataModule with the paper's views at 72/67 px, in the main process."""
    return ImageFolderDataModule(
        root=str(root),
        train_transform=ResizeRandomCropFlip(Preprocessing(resize=72, crop=67)),
        val_transform=ResizeCenterCrop(Preprocessing(resize=72, crop=67)),
        train_batch_transform=ToNormalizedFloat([0.5] * 3, [0.5] * 3, lighting_std=0.1),
        val_batch_transform=ToNormalizedFloat([0.5] * 3, [0.5] * 3),
        decode=decode,
        batch_size=batch_size,
        num_workers=0,
        pin_memory=False,
    )


@pytest.fixture(scope="session")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageNet-style folder of real JPEGs of varied sizes: 10 classes, 2 train + 1 val each."""
    root = tmp_path_factory.mktemp("images") / "shapes"
    generate_demo_dataset(root, train_per_class=2, val_per_class=1, min_side=60, max_side=120)
    return root


@pytest.fixture(scope="session")
def indexed_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images that say which they are: 4 classes of 10 train and 2 val images, image i (ImageFolder
    order, train then val) one flat colour, probes.colour_of_index(i), of a random size from 70 to
    120 px. tests/probes.py BatchRecorder reads the indices back from the batches."""
    root = tmp_path_factory.mktemp("indexed")
    rng = np.random.default_rng(0)
    index = 0
    for split, per_class in (("train", 10), ("val", 2)):
        for k in range(4):
            folder = root / split / f"class_{k}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                size = tuple(int(s) for s in rng.integers(70, 121, size=2))
                image = Image.new("RGB", size, colour_of_index(index))
                image.save(folder / f"{i:02d}.JPEG", quality=95)
                index += 1
    return root


@pytest.fixture(scope="session")
def larger_image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough images for a few optimizer steps per epoch: 10 classes, 4 train + 2 val each."""
    root = tmp_path_factory.mktemp("images") / "shapes"
    generate_demo_dataset(root, train_per_class=4, val_per_class=2, min_side=60, max_side=120)
    return root


def cli_environment() -> dict[str, str]:
    """The environment of a CLI run: the project root on PYTHONPATH, so that `tests.probes`
    callbacks can be added with `+callbacks.<name>._target_=tests.probes.<Class>`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1"}
    env.pop("PL_GLOBAL_SEED", None)  # the tests' own seeding must not leak into the run
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


def run_train_cli(*overrides: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs `python -m alexnet_pl.train` as a user would, from `cwd`; returns what it printed."""
    env = cli_environment()
    return subprocess.run(
        [sys.executable, "-m", "alexnet_pl.train", *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class CliResult:
    """What a run of a command left: its exit status and what it printed."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_in_process(capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):
    """Runs `python -m <module> <args>` inside the test process: the module runs as __main__ with
    those arguments (runpy, as `-m` does), so Hydra finds conf/ and parses the command line as it
    would, and errors, output and the exit status are those of the command. The test process has
    imported torch, torchvision and Lightning already; a fresh interpreter spends 8-10 s of a
    2-core CPU on that. For single-process runs only: DDP launches its ranks by re-running the
    command line, which here would be pytest's."""

    def run(
        *args: str, cwd: Path, module: str = "alexnet_pl.train", env: dict[str, str] | None = None
    ) -> CliResult:
        capfd.readouterr()
        returncode = run_module_in_process(module, args, cwd, monkeypatch, env)
        out, err = capfd.readouterr()
        return CliResult(returncode, out, err)

    return run


def run_module_in_process(
    module: str,
    args: Sequence[str],
    cwd: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str] | None = None,
) -> int:
    """run_in_process without capturing the output (it goes where the test's goes), for fixtures
    of a module's scope: `with pytest.MonkeyPatch.context() as patch: run_module_in_process(...)`.
    `env`: variables the run sees, as if exported in the shell. Returns the exit status."""
    environment = dict(os.environ)
    handlers, level = logging.root.handlers[:], logging.root.level
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [module, *args])
    os.environ.update(HYDRA_FULL_ERROR="1")
    os.environ.pop("PL_GLOBAL_SEED", None)  # as cli_environment: no leak into the run
    os.environ.update(env or {})
    GlobalHydra.instance().clear()
    # Lightning's loggers print through handlers made when it was imported, bound to the stderr
    # of that moment (pytest's): pointed at this run's stderr, as in a fresh process, for the run.
    # (Assigned, not setStream, which flushes the old stream: a test's capture may have closed it.)
    rebound = {handler: handler.stream for handler in import_time_handlers()}
    for handler in rebound:
        handler.stream = sys.stderr
    returncode = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit:
        returncode = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
    except Exception:
        traceback.print_exc()  # what the interpreter prints before exiting with status 1
        returncode = 1
    finally:
        GlobalHydra.instance().clear()
        for handler in logging.root.handlers[:]:
            if handler not in handlers:  # Hydra's console and file handlers of this run
                logging.root.removeHandler(handler)
                handler.close()
        logging.root.setLevel(level)
        for handler, stream in rebound.items():
            handler.stream = sys.__stderr__ if getattr(stream, "closed", False) else stream
        os.environ.clear()
        os.environ.update(environment)  # seed_everything's variables stay in the run
    return returncode


def import_time_handlers() -> list[logging.StreamHandler]:
    """The plain stream handlers of every logger (not files, not pytest's own handlers)."""
    loggers = [logging.root, *logging.root.manager.loggerDict.values()]
    return [
        handler
        for logger in loggers
        for handler in getattr(logger, "handlers", [])  # placeholders have no handlers
        if type(handler) is logging.StreamHandler
    ]


@pytest.fixture
def compose_config(tmp_path: Path):
    """Composes the real conf/ as `python -m alexnet_pl.train` would, with its run folder in tmp."""

    def compose_with(*overrides: str) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # resolves ${hydra:...} as inside @hydra.main
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path)
            del cfg.hydra
        return cfg

    yield compose_with
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def trained_run(larger_image_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of one real training epoch on the larger folder: checkpoints, metrics. The
    command runs in this process (run_module_in_process): a fresh interpreter adds only imports."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    arguments = [*SMALL_RUN, f"data.root={larger_image_root}", "trainer.max_epochs=1", "seed=1"]
    with pytest.MonkeyPatch.context() as patch:
        arguments.append(f"hydra.run.dir={run_dir}")
        status = run_module_in_process("alexnet_pl.train", arguments, run_dir.parent, patch)
    assert status == 0  # the run's output is in this fixture's captured output
    return run_dir


@pytest.fixture(scope="session")
def counted_classes_run(
    image_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """The run folder of one real epoch with model.num_classes left at its default (counted from
    the class folders), all four loggers (TensorBoard, CSV, W&B offline, MLflow's file store in the
    run folder, whatever the environment says) and only the best checkpoint, which is weights-only.
    Shared by test_run_folder.py and test_loggers.py; its 230 MB checkpoint is removed after."""
    run_dir = tmp_path_factory.mktemp("counted") / "run"
    with pytest.MonkeyPatch.context() as environment:
        for name in ("WANDB_MODE", "MLFLOW_TRACKING_URI"):  # the tests must not go online
            environment.delenv(name, raising=False)
        result = run_train_cli(
            *(o for o in SMALL_RUN if not o.startswith("model.num_classes=")),
            f"data.root={image_root}",
            "trainer.max_epochs=1",
            "seed=3",
            "logger=[tensorboard,csv,wandb,mlflow]",
            "~callbacks.last_checkpoint",
            f"hydra.run.dir={run_dir}",
            cwd=run_dir.parent,
        )
    assert result.returncode == 0, result.stderr[-4000:]
    yield run_dir
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
