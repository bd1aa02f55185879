"""Callbacks that leave a run's record behind: its configuration and class names in every
checkpoint, and the final validation metrics as JSON for scripts."""

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

log = logging.getLogger(__name__)
FINAL_METRICS = ("val/loss", "val/top1", "val/top5")


class RunInfoInCheckpoint(pl.Callback):
    """Stores the resolved run configuration (seed included) under checkpoint["config"] and the
    class names under checkpoint["class_names"], so that a checkpoint alone says how to rebuild its
    model and data transforms and what its outputs mean."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        checkpoint["config"] = self.config
        checkpoint["class_names"] = list(getattr(trainer.datamodule, "class_names", []))


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
        metrics.update(epochs_trained=trainer.current_epoch, global_step=trainer.global_step)
        for checkpoint in trainer.checkpoint_callbacks:
            if checkpoint.monitor and checkpoint.best_model_path:
                metrics["best_checkpoint"] = checkpoint.best_model_path
        write_json_atomically(self.path, metrics)
        log.info("finished: %s", summary(metrics, self.path.parent))


def summary(metrics: dict[str, Any], run_folder: Path) -> str:
    """A few lines for the terminal at the end of a run."""
    lines = [f"{name:<18} {metrics[name]:.4f}" for name in FINAL_METRICS if name in metrics]
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
