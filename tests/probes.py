"""Callbacks that tests add to a real CLI run (`+callbacks.<name>._target_=tests.probes.<Class>`)
to see what each process did. run_train_cli puts the project root on PYTHONPATH so that the
training process (and every DDP rank it launches) can import them."""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

# indexed_root (conftest.py) paints image i (in ImageFolder order over its train split, then its
# val split) one flat colour: red and green encode i on a grid with 12 levels between neighbours, so
# JPEG's rounding (a level or two) never confuses two images. Crops and flips keep a flat colour.
CODE_BASE, CODE_STEP, CODE_ROW = 30, 12, 16


def colour_of_index(index: int) -> tuple[int, int, int]:
    if not 0 <= index < CODE_ROW * CODE_ROW:
        raise ValueError(f"index {index} is outside the {CODE_ROW * CODE_ROW} colours of the code")
    return (
        CODE_BASE + CODE_STEP * (index % CODE_ROW),
        CODE_BASE + CODE_STEP * (index // CODE_ROW),
        128,
    )


def index_of_colour(red: float, green: float) -> int:
    column = round((red - CODE_BASE) / CODE_STEP)
    row = round((green - CODE_BASE) / CODE_STEP)
    return row * CODE_ROW + column


def image_indices(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> list[int]:
    """The index each image of a normalised float batch (N, 3, H, W) encodes. Needs the run's
    lighting off (transforms.lighting_std=0), which would shift the colours."""
    pixels = images.detach().float().mean(dim=(2, 3)).cpu()
    rgb = (pixels * torch.tensor(list(std)) + torch.tensor(list(mean))) * 255
    return [index_of_colour(float(r), float(g)) for r, g, _ in rgb.tolist()]


class BatchRecorder(pl.Callback):
    """Appends one JSON line per training batch to <path>/rank<R>.jsonl: epoch, batch index, global
    step, and the indices of the images in the batch (as the network receives it, after the
    transfer and the float conversion). Appends, so a resumed run continues the same file."""

    def __init__(self, path: str, mean: Sequence[float], std: Sequence[float]) -> None:
        self.path = Path(path)
        self.mean, self.std = list(mean), list(std)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        images = batch[0]
        record = {
            "epoch": trainer.current_epoch,
            "batch_idx": batch_idx,
            "global_step": trainer.global_step,
            "indices": [] if images is None else image_indices(images, self.mean, self.std),
        }
        self.path.mkdir(parents=True, exist_ok=True)
        with (self.path / f"rank{trainer.global_rank}.jsonl").open("a") as file:
            file.write(json.dumps(record) + "\n")


def read_records(path: Path) -> dict[int, list[dict]]:
    """BatchRecorder's records by rank."""
    return {
        int(file.stem.removeprefix("rank")): [
            json.loads(line) for line in file.read_text().splitlines()
        ]
        for file in sorted(Path(path).glob("rank*.jsonl"))
    }


def recorder_overrides(path: Path) -> list[str]:
    """The CLI overrides that add a BatchRecorder writing to `path`, with lighting off."""
    return [
        "+callbacks.batch_recorder._target_=tests.probes.BatchRecorder",
        f"+callbacks.batch_recorder.path={path}",
        "+callbacks.batch_recorder.mean=${transforms.mean}",
        "+callbacks.batch_recorder.std=${transforms.std}",
        "transforms.lighting_std=0",
    ]
