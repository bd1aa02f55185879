"""DataModules for the data-wait tests (tests/test_host_cost.py), importable by a CLI run as
`data._target_=tests.probes_data_wait.<Class>`: the real ImageFolderDataModule on real files, with
a training loader slowed on purpose, or with its batches read once and then served from memory."""

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from alexnet_pl.data.datamodule import ImageFolderDataModule


class SleepThenCollate:
    """The loader's collate_fn after a sleep: every batch arrives `seconds` late."""

    def __init__(self, collate: Callable[[list], Any], seconds: float) -> None:
        self.collate, self.seconds = collate, seconds

    def __call__(self, samples: list) -> Any:
        time.sleep(self.seconds)
        return self.collate(samples)


class SlowLoaderDataModule(ImageFolderDataModule):
    def __init__(self, seconds_per_batch: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seconds_per_batch = seconds_per_batch

    def train_dataloader(self) -> DataLoader:
        loader = super().train_dataloader()
        loader.collate_fn = SleepThenCollate(loader.collate_fn, self.seconds_per_batch)
        return loader


def each_item_is_a_batch(batch: Any) -> Any:
    return batch


class ResidentBatchesDataModule(ImageFolderDataModule):
    """The first epoch's batches, decoded once in setup and then handed out from memory."""

    def train_dataloader(self) -> DataLoader:
        batches = list(super().train_dataloader())
        return DataLoader(batches, batch_size=None, collate_fn=each_item_is_a_batch)


class BatchTimes(pl.Callback):
    """Writes each training batch's start and end (perf_counter) to `path` as JSON at the end."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.starts: list[float] = []
        self.ends: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends.append(time.perf_counter())

    def on_fit_end(self, trainer, pl_module) -> None:
        self.path.write_text(json.dumps({"starts": self.starts, "ends": self.ends}))
