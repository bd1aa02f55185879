"""Callbacks that tests/test_launchers.py adds to real multi-process runs
(`+callbacks.<name>._target_=tests.probes_ranks.<Class>`) to see what each rank did: the seed and
random draws it trained with, the exception it stopped on, and faults injected on one rank only.
Each writes <path>/<what>_rank<R>.json."""

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

LIGHTING_STD = 0.1  # the paper's, for the lighting draw when the run itself has lighting off


def write_json(path: Path, what: str, rank: int, record: dict[str, Any]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / f"{what}_rank{rank}.json").write_text(json.dumps(record))


def read_json(path: Path, what: str) -> dict[int, dict[str, Any]]:
    """The records `what` of every rank that wrote one, by rank."""
    return {
        int(file.stem.rsplit("_rank", 1)[1]): json.loads(file.read_text())
        for file in sorted(Path(path).glob(f"{what}_rank*.json"))
    }


class RandomDraws(pl.Callback):
    """At the start of training (seeds agreed, DDP's weights in place) records on each rank: the
    seed of the data order (PL_GLOBAL_SEED), a checksum of the network's weights, and the next
    draws of training's randomness through the real modules: the network's first dropout on a
    fixed input, and the DataModule's train_batch_transform (lighting on) on a fixed uint8 batch.
    Drawn on forks of the generators, so the run's own draws are those it would have made.

    Also counts torch.distributed.broadcast calls during the training batches (Lightning 2.6
    broadcasts its SIGTERM flag before every batch under DDP)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.record: dict[str, Any] = {}
        self.broadcasts = 0
        self.original_broadcast = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        network = pl_module.network
        dropout = next(m for m in network.modules() if isinstance(m, nn.Dropout))
        lighting = copy.copy(trainer.datamodule.train_batch_transform)
        lighting.lighting_std = LIGHTING_STD
        with torch.random.fork_rng(devices=[]):
            was_training = dropout.training
            dropout.train()
            mask = (dropout(torch.ones(256)) != 0).int().tolist()
            dropout.train(was_training)
            lit = lighting(torch.full((4, 3, 2, 2), 128, dtype=torch.uint8))
        self.record = {
            "pl_global_seed": int(os.environ["PL_GLOBAL_SEED"]),
            "weights_checksum": float(sum(p.double().sum() for p in network.parameters())),
            "dropout_mask": mask,
            "lighting": lit[:, :, 0, 0].tolist(),
        }

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.original_broadcast = torch.distributed.broadcast

        def counting_broadcast(*args: Any, **kwargs: Any) -> Any:
            self.broadcasts += 1
            return self.original_broadcast(*args, **kwargs)

        torch.distributed.broadcast = counting_broadcast

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch.distributed.broadcast = self.original_broadcast

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.record["broadcasts_in_training_batches"] = self.broadcasts
        self.record["batches"] = trainer.fit_loop.epoch_loop.batch_progress.total.completed
        write_json(self.path, "draws", trainer.global_rank, self.record)


class NanInputOnRank(pl.Callback):
    """Fills one rank's input images with NaN at one batch: a loss that stops being a number on
    that rank only (the gradient all-reduce then carries it to the others' weights)."""

    def __init__(self, rank: int, epoch: int, batch: int) -> None:
        self.rank, self.epoch, self.batch = rank, epoch, batch

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if (trainer.global_rank, trainer.current_epoch, batch_idx) == (
            self.rank,
            self.epoch,
            self.batch,
        ):
            batch[0].fill_(float("nan"))


class ExceptionRecorder(pl.Callback):
    """Records the exception each rank stopped on, and the step and batch it stopped at."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.batch_idx = -1

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.batch_idx = batch_idx

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        record = {
            "type": type(exception).__name__,
            "message": str(exception),
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "last_batch_idx": self.batch_idx,
        }
        write_json(self.path, "exception", trainer.global_rank, record)


class MarkBatch(pl.Callback):
    """Writes <path>/reached_rank<R>.json when batch `batch` of epoch `epoch` starts: a test waits
    for it to signal a run in mid-epoch."""

    def __init__(self, path: str, epoch: int, batch: int) -> None:
        self.path = Path(path)
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            write_json(self.path, "reached", trainer.global_rank, {"step": trainer.global_step})
