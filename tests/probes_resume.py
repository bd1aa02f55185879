"""Callbacks that tests/test_exact_resume.py adds to real CLI runs
(`+callbacks.<name>._target_=tests.probes_resume.<Class>`): a SIGTERM that lands at a chosen
batch, and a record of the learning rate every batch trained with."""

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytorch_lightning as pl


def at(trainer: pl.Trainer, batch_idx: int, epoch: int, batch: int) -> bool:
    return trainer.current_epoch == epoch and batch_idx == batch


class SigtermAt(pl.Callback):
    """Sends SIGTERM to its own process when batch `batch` of epoch `epoch` has trained: what a
    cluster does at a time limit, landing mid-epoch at a known place."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        if at(trainer, idx, self.epoch, self.batch):
            os.kill(os.getpid(), signal.SIGTERM)


class LearningRateRecorder(pl.Callback):
    """Appends one JSON line per training batch to <path>/lr_rank<R>.jsonl: epoch, batch index, the
    learning rates the batch trains with and the first scheduler's state_dict. Appends, so a
    resumed run continues the same file. At the end of training it writes the scheduler's final
    state to <path>/scheduler_rank<R>.json."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        record = {
            "epoch": trainer.current_epoch,
            "batch_idx": batch_idx,
            "lr": [group["lr"] for group in trainer.optimizers[0].param_groups],
            "scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict(),
        }
        self.path.mkdir(parents=True, exist_ok=True)
        with (self.path / f"lr_rank{trainer.global_rank}.jsonl").open("a") as file:
            file.write(json.dumps(record) + "\n")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        final = trainer.lr_scheduler_configs[0].scheduler.state_dict()
        (self.path / f"scheduler_rank{trainer.global_rank}.json").write_text(json.dumps(final))


def read_learning_rates(path: Path, rank: int = 0) -> list[dict]:
    return [json.loads(line) for line in (path / f"lr_rank{rank}.jsonl").read_text().splitlines()]


def scalar_steps(tensorboard_dir: Path, tag: str) -> list[int]:
    """The steps of one tag's scalars as TensorBoard reads them back from every events file of the
    folder (an interrupted process's events after its checkpoint are hidden by the resumed one's
    purge step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tensorboard_dir))
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


class ScoreByEpoch(pl.Callback):
    """Logs `probe/score` = scores[epoch] after each validation: a metric whose best epoch is
    known in advance, for a checkpoint callback to monitor (`callbacks.best_checkpoint.monitor`)."""

    def __init__(self, scores: list[float]) -> None:
        self.scores = list(scores)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            pl_module.log("probe/score", float(self.scores[trainer.current_epoch]))


class NetworkChecksum(pl.Callback):
    """Writes the sum of the network's weights at the start of training to <path>."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = sum(
            float(weight.double().sum()) for weight in pl_module.network.state_dict().values()
        )
        self.path.write_text(json.dumps({"sum": total, "global_step": trainer.global_step}))
