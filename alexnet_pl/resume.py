"""One run, however often it is stopped and resumed: `ckpt_path=<run folder | last | a checkpoint
in a run folder>` continues the run *in its own folder*, and `init_from=<checkpoint>` starts a new
run from another run's weights.

A resume goes on where the run left off: its checkpoints (ModelCheckpoint restores its state only
when its folder is the same, so the best checkpoint is chosen over the whole run), its TensorBoard
events (one series per tag: events the interrupted process wrote after its checkpoint are hidden),
its CSV, W&B and MLflow runs, its train.log (appended) and its config.yaml (with a record of each
resume). It refuses a changed recipe (config_diff.py). A SLURM job requeued after SIGUSR1
(safeguards.StopTogether) continues from the hpc_ckpt_N.ckpt written into its folder.
"""

import logging
import shlex
import sys
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf, open_dict

from alexnet_pl import config_diff, preflight
from alexnet_pl.checkpoint import network_weights, read_checkpoint
from alexnet_pl.errors import UserError

log = logging.getLogger(__name__)

# The command line as typed, before continue_in_run_folder adds to it: recorded with the resume.
COMMAND_LINE: list[str] = []
LOGGER_RUNS = "logger_runs"  # checkpoint key: the W&B and MLflow run ids (LoggerRunIds)


def override(argv: list[str], key: str) -> str | None:
    """The value of the last `key=value` (or `++key=value`) on a Hydra command line."""
    values = [a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith(f"{key}=")]
    return values[-1].strip("'\"") if values else None


def continue_in_run_folder(argv: list[str]) -> None:
    """Before Hydra starts (it makes its run folder first): with ckpt_path on the command line,
    Hydra's run folder becomes the run's own, `hydra.output_subdir=null` keeps Hydra from writing
    this command's .hydra/ over the run's, and ckpt_path becomes the checkpoint file, so that `last`
    means one file for every process. Lightning's DDP launcher re-runs sys.argv (and appends the
    same run folder); under torchrun and SLURM every rank rewrites the same command the same way.
    """
    COMMAND_LINE[:] = argv[1:]
    ckpt_path = override(argv, "ckpt_path")
    if ckpt_path in (None, "null"):
        return
    if override(argv, "init_from") not in (None, "null"):
        raise UserError(both_given(ckpt_path, override(argv, "init_from")))
    checkpoint = Path(preflight.resolve_resume_path(ckpt_path)).resolve()
    run_dir = run_folder_of(checkpoint, ckpt_path)
    for given in (a.split("=", 1)[1].strip("'\"") for a in argv if a.startswith("hydra.run.dir=")):
        if Path(given).resolve() != run_dir:
            raise UserError(
                f"ckpt_path={ckpt_path} continues the run in its own folder {run_dir}, but "
                f"hydra.run.dir={given} asks for another. Leave out hydra.run.dir (or give the "
                f"run's folder); to start a new run from these weights use init_from={ckpt_path}"
            )
    keep = [a for a in argv[1:] if not a.lstrip("+").startswith("ckpt_path=")]
    argv[1:] = [
        *keep,
        f'ckpt_path="{checkpoint}"',
        f'hydra.run.dir="{run_dir}"',
        "hydra.output_subdir=null",
    ]


def both_given(ckpt_path: str, init_from: str) -> str:
    return (
        f"ckpt_path={ckpt_path} and init_from={init_from} were both given: ckpt_path continues a "
        "run in its folder with its optimizer and schedule; init_from starts a new run from a "
        "checkpoint's weights. Give one"
    )


def run_folder_of(checkpoint: Path, given: str) -> Path:
    """<run>/checkpoints/*.ckpt or <run>/hpc_ckpt_N.ckpt (a SLURM requeue's): the run folder."""
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent
    if checkpoint.name.startswith("hpc_ckpt_"):
        return checkpoint.parent
    raise UserError(
        f"ckpt_path={given} ({checkpoint}) is not in a run folder (<run>/checkpoints/last.ckpt), "
        "so there is no run to continue. To start a new run from its weights, use "
        f"init_from={given}"
    )


@dataclass
class Resumed:
    """The checkpoint a resume continues from, and what it says about the run."""

    ckpt_path: str
    config: dict[str, Any]  # the resolved config the run was trained with
    epoch: int
    global_step: int
    # Lightning's step for the loggers (_batches_that_stepped) when the checkpoint was written: at
    # an epoch's end (ModelCheckpoint) or a SIGTERM stop, the step the resumed run logs first.
    logged_step: int
    logger_runs: dict[str, str] = field(default_factory=dict)


def find(cfg: DictConfig) -> Resumed | None:
    """The checkpoint this command continues: ckpt_path, or in a SLURM job without it the run
    folder's newest checkpoint when it has an hpc_ckpt (the requeued job: Lightning would load it
    itself, unchecked). A null seed becomes the run's. Refused: ckpt_path with init_from, and
    checkpoints that cannot resume (preflight.check_resumable)."""
    if cfg.ckpt_path is not None and cfg.get("init_from") is not None:
        raise UserError(both_given(cfg.ckpt_path, cfg.init_from))
    cfg.ckpt_path = preflight.resolve_resume_path(cfg.ckpt_path)
    run_dir = Path(cfg.paths.output_dir)
    if cfg.ckpt_path is None and SLURMEnvironment.detect() and any(run_dir.glob("hpc_ckpt_*")):
        cfg.ckpt_path = str(preflight.newest_checkpoint(run_dir))
    if cfg.ckpt_path is None:
        return None
    checkpoint = preflight.check_resumable(cfg.ckpt_path)
    loops = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
    resumed = Resumed(
        ckpt_path=cfg.ckpt_path,
        config=checkpoint["config"],
        epoch=checkpoint["epoch"],
        global_step=checkpoint["global_step"],
        logged_step=loops.get("_batches_that_stepped", checkpoint["global_step"]),
        logger_runs=dict(checkpoint.get(LOGGER_RUNS, {})),
    )
    if cfg.seed is None:
        cfg.seed = resumed.config.get("seed")  # the run's, for the order of its images
    # ModelCheckpoint warns of a non-empty folder, meant for a new run that would mix with an old.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    return resumed


def check_same_run(
    cfg: DictConfig, run_config: dict[str, Any], resumed: Resumed | None
) -> dict[str, tuple[Any, Any]]:
    """Stops a resume whose config would change what the run computes (config_diff.py); returns
    the differences that do not, recorded in config.yaml."""
    if resumed is None:
        return {}
    changes = config_diff.check_same_computation(resumed.ckpt_path, resumed.config, cfg, run_config)
    log.info(
        "resumed from epoch %d, step %d (checkpoint %s)",
        resumed.epoch,
        resumed.global_step,
        resumed.ckpt_path,
    )
    return changes


def continue_loggers(loggers: DictConfig, resumed: Resumed | None) -> None:
    """Points the configured loggers at the run's own records before they are built."""
    if resumed is None:
        return
    with open_dict(loggers):
        for logger in loggers.values():
            target = logger.get("_target_", "")
            if target.endswith("TensorBoardLogger"):
                # SummaryWriter(purge_step): TensorBoard hides the events at this step and after
                # that the interrupted process wrote after its checkpoint, so each tag reads back
                # as one series, continued by this process.
                logger.purge_step = resumed.logged_step
            elif target.endswith("WandbLogger") and "wandb" in resumed.logger_runs:
                logger.id, logger.resume = resumed.logger_runs["wandb"], "allow"
            elif target.endswith("MLFlowLogger") and "mlflow" in resumed.logger_runs:
                logger.run_id = resumed.logger_runs["mlflow"]
            elif target.endswith("CSVLogger"):
                logger.resume_step = resumed.logged_step


class LoggerRunIds(pl.Callback):
    """Keeps the W&B and MLflow run ids in every full checkpoint, so that a resume logs into the
    same runs (offline W&B too: no server to ask)."""

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        runs = {}
        for logger in trainer.loggers:
            name = type(logger).__name__
            if name == "WandbLogger" and logger.version:
                runs["wandb"] = str(logger.version)
            elif name == "MLFlowLogger" and trainer.is_global_zero:
                runs["mlflow"] = str(logger.run_id)
        checkpoint[LOGGER_RUNS] = runs


def load_initial_weights(network: Any, init_from: str | None) -> str | None:
    """init_from: the checkpoint's network weights only, into a new run (its own folder, a fresh
    optimizer and schedule). Returns the checkpoint file used."""
    if init_from is None:
        return None
    path = preflight.resolve_resume_path(init_from)
    try:
        network.load_state_dict(network_weights(read_checkpoint(path)))
    except RuntimeError as error:
        raise UserError(
            f"init_from={init_from}: its weights do not fit this run's model ({error}); give the "
            "model settings of the run that wrote it (its config.yaml, model.*)"
        ) from error
    log.info("initialised the network's weights from %s (a new run)", path)
    return path


def write_run_record(
    run_config: dict[str, Any], resumed: Resumed | None, changes: dict[str, tuple[Any, Any]]
) -> None:
    """config.yaml: the resolved config in effect (the seed used, not null), and after each resume
    a record of it: when, the command line, the checkpoint, and what differed from the run."""
    path = Path(run_config["paths"]["output_dir"]) / "config.yaml"
    record = OmegaConf.create(run_config)
    changes = {key: values for key, values in changes.items() if key != "ckpt_path"}
    if resumed is not None:
        earlier = OmegaConf.load(path).get("resumes", []) if path.is_file() else []
        this = {
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": "python -m alexnet_pl.train " + shlex.join(COMMAND_LINE or sys.argv[1:]),
            "checkpoint": resumed.ckpt_path,
            "epoch": resumed.epoch,
            "step": resumed.global_step,
            "changed": {key: {"run": old, "now": new} for key, (old, new) in changes.items()},
        }
        with open_dict(record):
            record.resumes = [*earlier, this]
    OmegaConf.save(record, path)
