"""What leaves a run's record behind: its configuration in every logger (and the W&B run closed at
the end), and the final validation metrics as JSON for scripts. (The configuration and class names
in every checkpoint are written by AlexNetModule.on_save_checkpoint: see there why not here.)"""

import csv
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger, Logger, MLFlowLogger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.utilities.rank_zero import rank_zero_only

log = logging.getLogger(__name__)
FINAL_METRICS = ("val/loss", "val/top1", "val/top5")
# The share of the training loop's time spent waiting for the next batch (monitoring.Throughput),
# of the last window before the end: near 1, the input pipeline limits the speed.
DATA_WAIT = "train/data_wait_fraction"


class ConfigToLoggers(pl.Callback):
    """Logs the resolved run configuration (seed and num_classes as used) as the hyperparameters of
    every configured logger when fitting starts: TensorBoard's and CSV's hparams.yaml, the W&B run's
    config, the MLflow run's parameters (flattened: model/num_classes)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for logger in trainer.loggers:  # each logger writes on rank 0 only
            if trainer.ckpt_path is not None and isinstance(logger, MLFlowLogger):
                # A resume continues the MLflow run (resume.py), whose parameters cannot change
                # once logged: it keeps those of the run's start; config.yaml records each resume.
                continue
            logger.log_hyperparams(self.config)


def end_wandb_run(loggers: list[Logger]) -> None:
    """Finishes the W&B run of a run configured with a WandbLogger. W&B keeps one run per process
    until it is finished, and a new WandbLogger joins the run in progress: the next job of a Hydra
    sweep (`-m`, one process) would log into this job's run and folder. Not in a callback: the
    loggers are finalised after the callbacks' last hook, and finalising may still use the run."""
    if any(isinstance(logger, WandbLogger) for logger in loggers):
        import wandb  # installed: a WandbLogger exists

        wandb.finish()


class FinalMetricsWriter(pl.Callback):
    """Writes the last validation metrics (fractions, synced over all processes) to a JSON file."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        logged = trainer.callback_metrics
        metrics: dict[str, Any] = {
            name: float(logged[name]) for name in FINAL_METRICS if name in logged
        }
        if DATA_WAIT in logged:
            metrics[DATA_WAIT] = round(float(logged[DATA_WAIT]), 4)
        metrics.update(epochs_trained=trainer.current_epoch, global_step=trainer.global_step)
        for checkpoint in trainer.checkpoint_callbacks:
            if checkpoint.monitor and checkpoint.best_model_path:
                metrics["best_checkpoint"] = checkpoint.best_model_path
        write_json_atomically(self.path, metrics)
        log.info("finished: %s", summary(metrics, self.path.parent))


def summary(metrics: dict[str, Any], run_folder: Path) -> str:
    """A few lines for the terminal at the end of a run."""
    lines = [f"{name:<18} {metrics[name]:.4f}" for name in FINAL_METRICS if name in metrics]
    if DATA_WAIT in metrics:
        lines.append(f"{'waiting for data':<18} {metrics[DATA_WAIT]:.0%} of the training loop")
    lines += [
        f"{'epochs trained':<18} {metrics['epochs_trained']}",
        f"{'run folder':<18} {run_folder}",
    ]
    if "best_checkpoint" in metrics:
        lines.append(f"{'best checkpoint':<18} {metrics['best_checkpoint']}")
    return "\n" + "\n".join(lines)


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    """Writes a temporary file, then renames it: readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(partial, path)


class ContinuedCSVLogger(CSVLogger):
    """Lightning's CSVLogger, which deletes an existing metrics.csv when it starts; given
    `resume_step` (a resume: resume.continue_loggers), it keeps the rows logged before that step
    and appends after them, so that a resumed run has one metrics.csv. (Rows at that step and
    after were written by the interrupted process after its checkpoint; this one logs them again.)
    """

    def __init__(self, *args: Any, resume_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is not None or self.resume_step is None or rank_zero_only.rank != 0:
            return super().experiment
        path = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
        rows, fields = [], []
        if path.is_file():
            with path.open(newline="") as file:
                reader = csv.DictReader(file)
                fields = list(reader.fieldnames or [])
                rows = [row for row in reader if int(float(row["step"])) < self.resume_step]
        with warnings.catch_warnings():  # "will be deleted": it is, and written again below
            warnings.simplefilter("ignore")
            writer = super().experiment
        if fields and writer is not None:
            with path.open("w", newline="") as file:
                table = csv.DictWriter(file, fieldnames=fields)
                table.writeheader()
                table.writerows(rows)
            writer.metrics_keys = sorted(fields)
        return writer
