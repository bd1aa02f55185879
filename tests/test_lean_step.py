"""The training step stays on the device: the host reads a device value back only at check batches
(alexnet_pl/step_cadence.py), and what it reads there is right.

On a GPU every read of a device value (`.item()`, `.tolist()`, a float() of a tensor, a progress
bar showing a tensor) makes the host wait for the GPU, so the queue of kernels drains at every step.
A CPU has no queue, so the CPU test counts the reads themselves: it patches every way Python can
read a tensor's value and notes the training batch each read happens in. On CUDA the same run is
checked by torch's own detector of synchronising calls (torch.cuda.set_sync_debug_mode).
"""

import traceback
import warnings
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from pytorch_lightning.loops.training_epoch_loop import _TrainingEpochLoop
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchmetrics.classification import MulticlassAccuracy

from alexnet_pl.module import AlexNetModule, batch_hits, window_counts
from alexnet_pl.train import train
from tests.conftest import CONFIG_DIR, SMALL_RUN

# image_root has 20 training images: batches of 4 make 5 batches an epoch, two epochs 10 (half
# the images of 5 batches of 8: the cadence is in the batches, the time in the images).
# With log_every_n_steps=3 the host looks after the 3rd, 6th and 9th batch of the run (Lightning's
# logging cadence counts batches over the whole run, so the 6th is the first of epoch 1) and after
# each epoch's last batch.
BATCH, EPOCHS, EVERY = 4, 2, 3
CHECK_BATCHES = {(0, 2), (0, 4), (1, 0), (1, 3), (1, 4)}  # (epoch, batch index)
# InputSamples copies the first batch's images to the host once per run, for TensorBoard.
ONE_TIME_READS = {(0, 0)}
READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")


class ReadLog:
    """Which training batch each host read happened in, and where in the code."""

    def __init__(self) -> None:
        self.batch: tuple[int, int] | None = None  # (epoch, batch index) being run
        self.trainer = None
        self.reads: dict[tuple[int, int], list[str]] = defaultdict(list)

    def record(self, what: str) -> None:
        trainer = self.trainer
        if trainer is None or self.batch is None or not trainer.training:
            return  # setup, the sanity check and validation are not training steps
        stack = traceback.extract_stack()[:-2]
        if any("/torch/utils/data/" in frame.filename for frame in stack):
            return  # the loader's work on host data (in worker processes when num_workers > 0)
        self.reads[self.batch].append(f"{what} at {caller(stack)}")


def caller(stack: traceback.StackSummary) -> str:
    """The innermost frame of the code that asked for the read (not torch's, not this file's)."""
    for frame in reversed(stack):
        if "/torch/" not in frame.filename and not frame.filename.endswith("test_lean_step.py"):
            return f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"
    return "?"


@pytest.fixture(scope="module")
def lean_run(image_root: Path, tmp_path_factory) -> Iterator[dict]:
    """One real run of the default config (default callbacks, progress bar, TensorBoard) for two
    short epochs, every host read noted by batch, and every batch's loss kept on the device."""
    output_dir = tmp_path_factory.mktemp("lean_run")
    log = ReadLog()
    losses: dict[tuple[int, int], torch.Tensor] = {}
    real_step, real_advance = AlexNetModule.training_step, _TrainingEpochLoop.advance

    def recording_step(self, batch, batch_idx):
        log.trainer = self.trainer
        loss = real_step(self, batch, batch_idx)
        losses[(self.current_epoch, batch_idx)] = loss.detach().clone()  # a device copy, no read
        return loss

    def advance(self, data_fetcher):
        # Everything from fetching a batch to handing its metrics to the loggers happens in here.
        log.batch = (self.trainer.current_epoch, self.batch_progress.current.ready)
        return real_advance(self, data_fetcher)

    def counted(name: str):
        real = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            log.record(name)
            return real(self, *args, **kwargs)

        return read

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                *SMALL_RUN,
                f"data.root={image_root}",
                f"data.batch_size={BATCH}",
                f"trainer.max_epochs={EPOCHS}",
                f"trainer.log_every_n_steps={EVERY}",
                "seed=3",
                "+trainer.limit_val_batches=1",  # validation is not a training step: keep it short
                # Checkpoints are written at epoch ends, never per step; leaving them out saves
                # writing 700 MB files.
                "~callbacks.best_checkpoint",
                "~callbacks.last_checkpoint",
            ],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg.hydra
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AlexNetModule, "training_step", recording_step)
        patch.setattr(_TrainingEpochLoop, "advance", advance)
        for name in READS:
            patch.setattr(torch.Tensor, name, counted(name))
        trainer = train(cfg)
    GlobalHydra.instance().clear()
    events = EventAccumulator(str(output_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    yield {"trainer": trainer, "reads": log.reads, "losses": losses, "events": events}


def test_host_reads_device_values_only_at_check_batches(lean_run):
    reads = lean_run["reads"]
    allowed = CHECK_BATCHES | ONE_TIME_READS
    off_cadence = {batch: where for batch, where in reads.items() if batch not in allowed}
    assert not off_cadence, "reads between check batches:\n" + "\n".join(
        f"epoch {epoch} batch {index}: {', '.join(sorted(set(where)))}"
        for (epoch, index), where in sorted(off_cadence.items())
    )
    # The check batches do read (the window of metrics below), so the probe does see reads.
    assert all(reads.get(batch) for batch in CHECK_BATCHES)


def test_loggers_get_each_windows_mean_loss_at_lightnings_log_steps(lean_run):
    events, losses = lean_run["events"], lean_run["losses"]
    logged = {e.step: e.value for e in events.Scalars("train/loss")}
    # Lightning writes step metrics after batches 3, 6 and 9 of the run, at steps 2, 5 and 8 (it
    # counts from 0). Each value is the mean over the batches since the previous check batch;
    # epoch 0's last batch, (0, 4), was one, so the window of step 5 is batch (1, 0) alone.
    windows = {
        2: [(0, 0), (0, 1), (0, 2)],
        5: [(1, 0)],
        8: [(1, 1), (1, 2), (1, 3)],
    }
    assert sorted(logged) == sorted(windows)
    for step, batches in windows.items():
        mean = torch.stack([losses[batch] for batch in batches]).mean().item()
        assert logged[step] == pytest.approx(mean, rel=1e-5), step
    for name in ("train/top1", "train/top5"):
        assert [e.step for e in events.Scalars(name)] == sorted(windows)
    top1 = [e.value for e in events.Scalars("train/top1")]
    top5 = [e.value for e in events.Scalars("train/top5")]
    assert all(0 <= a <= b <= 1 for a, b in zip(top1, top5, strict=True))


def test_progress_bar_and_callbacks_see_the_last_windows_plain_numbers(lean_run):
    trainer, losses = lean_run["trainer"], lean_run["losses"]
    last_window = losses[(1, 4)].item()  # epoch 1's last batch is a window of its own
    shown = trainer.progress_bar_metrics
    assert {"train/loss", "train/top1", "train/top5", "images/s"} <= set(shown)
    assert all(isinstance(shown[name], float) for name in ("train/loss", "train/top1", "images/s"))
    assert shown["train/loss"] == pytest.approx(last_window, rel=1e-5)
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(last_window, rel=1e-5)


def test_window_counts_agree_with_torchmetrics_and_the_mean_loss():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 10, generator=generator)
    labels = torch.randint(10, (64,), generator=generator)
    # A window of two batches of different sizes (a batch can lose undecodable images).
    window = [
        (
            torch.nn.functional.cross_entropy(logits[part], labels[part]),
            batch_hits(logits[part], labels[part], top_k=5),
        )
        for part in (slice(0, 40), slice(40, 64))
    ]

    loss_sum, top1_hits, top5_hits, images = window_counts(window).tolist()

    top1 = MulticlassAccuracy(10, top_k=1, average="micro")(logits, labels)
    top5 = MulticlassAccuracy(10, top_k=5, average="micro")(logits, labels)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    assert images == 64
    assert loss_sum / images == pytest.approx(loss.item(), rel=1e-6)
    assert top1_hits / images == pytest.approx(top1.item())
    assert top5_hits / images == pytest.approx(top5.item())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_no_cuda_synchronisation_between_check_batches(image_root, compose_config):
    """The same cadence on a GPU, seen by torch's detector of synchronising calls: eager (no
    compile, so it runs in seconds), pinned batches, the default callbacks and progress bar."""
    syncs: dict[tuple[int, int], list[str]] = defaultdict(list)
    batch: list[tuple[int, int] | None] = [None]
    real_advance = _TrainingEpochLoop.advance

    def advance(self, data_fetcher):
        batch[0] = (self.trainer.current_epoch, self.batch_progress.current.ready)
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = real_advance(self, data_fetcher)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        found = [
            f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)
        ]
        syncs[batch[0]].extend(found)
        return result

    cfg = compose_config(
        *SMALL_RUN,
        "trainer.accelerator=cuda",
        "data.pin_memory=true",
        "+trainer.limit_val_batches=1",
        f"data.root={image_root}",
        f"data.batch_size={BATCH}",
        f"trainer.max_epochs={EPOCHS}",
        f"trainer.log_every_n_steps={EVERY}",
        "compile=null",
        "~callbacks.best_checkpoint",
        "~callbacks.last_checkpoint",
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_TrainingEpochLoop, "advance", advance)
        train(cfg)
    off_cadence = {b: s for b, s in syncs.items() if s and b not in CHECK_BATCHES | ONE_TIME_READS}
    assert not off_cadence, off_cadence
    assert all(syncs.get(b) for b in CHECK_BATCHES), syncs  # the detector does see the reads
