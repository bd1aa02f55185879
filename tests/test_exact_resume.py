"""A run interrupted and resumed trains on exactly the images, in exactly the order, and with
exactly the learning rates and ReduceLROnPlateau state of the same run uninterrupted.

All on the colour-coded images (conftest.indexed_root: 40 training images, read back from each
batch by tests/probes.py BatchRecorder), in batches of 10 (four steps per epoch), with a plateau
scheduler that divides the learning rate after every epoch but the first (patience 0, and an
improvement threshold no accuracy can meet).

In-process, with a tiny network, for three epochs: a checkpoint written in epoch 1 at each place
this project writes one (mid-epoch, at the end of the epoch's last batch, at the end of its
validation, at the epoch's end), then a new Trainer resumed from it, against the same run
uninterrupted.

Through the real CLI (run in this process, as run_in_process does: the command line, Hydra, the
exit status and the signal are those of `python -m alexnet_pl.train`), with AlexNet and the
paper's recipe, for two epochs: a run of one epoch (its last.ckpt is written at the end of the
epoch's validation, before Lightning's plateau step), resumed in its folder and stopped by a real
SIGTERM in epoch 1 (last.ckpt written mid-epoch), resumed again to the end, in the same folder.
The same under DDP (two processes, a SIGTERM to the whole process group): test_launchers.py.
"""

import json
import math
import shutil
import signal
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from alexnet_pl.data.datamodule import ImageFolderDataModule
from alexnet_pl.data.preprocessing import Preprocessing
from alexnet_pl.data.transforms import ResizeCenterCrop, ResizeRandomCropFlip, ToNormalizedFloat
from alexnet_pl.exact_resume import PlateauStepInCheckpoint
from tests.conftest import SMALL_RUN, run_module_in_process
from tests.probes import BatchRecorder, read_records, recorder_overrides
from tests.probes_resume import LearningRateRecorder, read_learning_rates

EPOCHS, STEPS_PER_EPOCH, IMAGES = 3, 4, 40

# ---- In-process: every place a checkpoint is written ----------------------------------------

MEAN, STD = [0.5] * 3, [0.25] * 3


class TinyModule(pl.LightningModule):
    """A linear layer on each image's mean colour (training takes milliseconds). Validation logs a
    constant val/top1, so the plateau scheduler divides the learning rate after every epoch but
    the first."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 4)

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        return nn.functional.cross_entropy(self.layer(images.mean(dim=(2, 3))), labels)

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        self.log("val/top1", 0.5)

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.01)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", patience=0, threshold=2, threshold_mode="abs"
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val/top1"},
        }


class Interrupted(Exception):
    """Ends a fit right after a checkpoint was written, as a kill would."""


class SaveAndStop(pl.Callback):
    """Writes `path` at one place of epoch `epoch`, then stops the run. `where`: "batch <i>" (the
    end of batch i, where the SIGTERM stop writes last.ckpt), "validation" (the end of the epoch's
    validation, where ModelCheckpoint writes it) or "epoch" (the epoch's end)."""

    def __init__(self, path: Path, epoch: int, where: str) -> None:
        self.path, self.epoch, self.where = path, epoch, where

    def stop_if(self, trainer: pl.Trainer, where: str) -> None:
        if trainer.current_epoch == self.epoch and where == self.where:
            trainer.save_checkpoint(self.path)
            raise Interrupted

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.stop_if(trainer, f"batch {batch_idx}")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.stop_if(trainer, "validation")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.stop_if(trainer, "epoch")


def fit_tiny(
    root: Path,
    records: Path,
    *callbacks: pl.Callback,
    ckpt_path: Path | None = None,
    seed: int = 3,
    decode: str = "cpu",
):
    """Three epochs of TinyModule on the DataModule, loader worker included (with one, Lightning
    starts the loader before it sets the epoch), recording every batch to `records`. With
    decode="gpu" on a CUDA GPU, where a thread decodes batches ahead of the step."""
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("PL_GLOBAL_SEED", str(seed))  # restored after: seed_everything sets it
        pl.seed_everything(seed)
        datamodule = ImageFolderDataModule(
            str(root),
            ResizeRandomCropFlip(Preprocessing(72, 67)),
            ResizeCenterCrop(Preprocessing(72, 67)),
            ToNormalizedFloat(MEAN, STD),  # no lighting: the colours must stay readable
            ToNormalizedFloat(MEAN, STD),
            decode=decode,
            batch_size=10,
            num_workers=1,
            pin_memory=False,
        )
        trainer = pl.Trainer(
            accelerator="gpu" if decode == "gpu" else "cpu",
            devices=1,
            max_epochs=EPOCHS,
            use_distributed_sampler=False,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            # The stop first, as the SIGTERM stop comes before this project's other callbacks.
            callbacks=[
                *callbacks,
                BatchRecorder(str(records), MEAN, STD),
                LearningRateRecorder(str(records)),
                PlateauStepInCheckpoint(),
            ],
        )
        trainer.fit(TinyModule(), datamodule=datamodule, ckpt_path=ckpt_path)
    return trainer


@pytest.fixture(scope="module")
def tiny_uninterrupted(indexed_root, tmp_path_factory) -> Path:
    records = tmp_path_factory.mktemp("tiny") / "records"
    fit_tiny(indexed_root, records)
    return records


@pytest.mark.parametrize(
    ("where", "plateau_exact"),
    [
        ("batch 1", True),  # mid-epoch: Lightning restarts the epoch at batch 2
        # The end of the epoch's last batch (where Lightning's own SIGUSR1 handler may save;
        # StopTogether waits for the epoch's end instead): Lightning counts the epoch as done and
        # skips its validation, hence that epoch's plateau step: only the order is exact.
        ("batch 3", False),
        ("validation", True),  # the plateau step is still to come when the checkpoint is written
        ("epoch", True),  # on_train_epoch_end: Lightning's plateau step comes after it, too
    ],
)
def test_every_kind_of_checkpoint_resumes_with_the_images_and_learning_rates_it_stopped_at(
    where, plateau_exact, tiny_uninterrupted, indexed_root, tmp_path
):
    records, checkpoint = tmp_path / "records", tmp_path / "stopped.ckpt"
    with pytest.raises(Interrupted):
        fit_tiny(indexed_root, records, SaveAndStop(checkpoint, epoch=1, where=where))
    # Resumed with another seed: the order is the checkpoint's, which holds the seed it used.
    fit_tiny(indexed_root, records, ckpt_path=checkpoint, seed=4)

    assert read_records(records)[0] == read_records(tiny_uninterrupted)[0]
    if plateau_exact:
        assert read_learning_rates(records) == read_learning_rates(tiny_uninterrupted)
        final = (records / "scheduler_rank0.json").read_text()
        assert final == (tiny_uninterrupted / "scheduler_rank0.json").read_text()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="data.decode=gpu needs a CUDA GPU")
@pytest.mark.parametrize("where", ["batch 1", "batch 3"])
def test_with_gpu_decoding_a_resume_continues_with_the_images_it_stopped_at(
    where, tiny_uninterrupted, indexed_root, tmp_path
):
    # The decoding thread starts the loader ahead of the step; the order must still be the one
    # the uninterrupted run (decoded on the CPU) had.
    records, checkpoint = tmp_path / "records", tmp_path / "stopped.ckpt"
    with pytest.raises(Interrupted):
        stop = SaveAndStop(checkpoint, epoch=1, where=where)
        fit_tiny(indexed_root, records, stop, decode="gpu")
    fit_tiny(indexed_root, records, ckpt_path=checkpoint, decode="gpu")
    assert read_records(records)[0] == read_records(tiny_uninterrupted)[0]


# ---- Through the CLI: AlexNet, the paper's recipe, a real SIGTERM ----------------------------

PLATEAU_EVERY_EPOCH = [
    "experiment=paper",
    "scheduler.patience=0",
    "+scheduler.threshold_mode=abs",
    "+scheduler.threshold=2",  # val/top1 never beats the first epoch's by 2: every later is bad
]
NO_CHECKPOINTS = ["~callbacks.best_checkpoint", "~callbacks.last_checkpoint"]
CLI_EPOCHS = 2  # the second is resumed mid-epoch: its plateau step shows in the final state


def run(root: Path, folder: Path, *overrides: str) -> int:
    """One training run of the scenario, in this process; its batches and learning rates go to
    folder.parent. Returns the exit status. The run must hand the test process its SIGTERM
    handling back (Lightning restores the handlers it found), or a later SIGTERM would be lost."""
    records = folder.parent / "records"
    sigterm_handler = signal.getsignal(signal.SIGTERM)
    arguments = [
        *SMALL_RUN,
        "model.num_classes=4",
        "data.batch_size=10",
        f"data.root={root}",
        "seed=3",
        *PLATEAU_EVERY_EPOCH,
        *recorder_overrides(records),
        "+callbacks.learning_rates._target_=tests.probes_resume.LearningRateRecorder",
        f"+callbacks.learning_rates.path={records}",
        f"hydra.run.dir={folder}",
        *overrides,
    ]
    with pytest.MonkeyPatch.context() as patch:
        status = run_module_in_process("alexnet_pl.train", arguments, folder.parent, patch)
    assert signal.getsignal(signal.SIGTERM) == sigterm_handler
    return status


def succeeded(status: int) -> None:
    assert status == 0, "the run failed: its output is in the captured output above"


@pytest.fixture(scope="module")
def uninterrupted(indexed_root, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("uninterrupted")
    succeeded(run(indexed_root, base / "run", f"trainer.max_epochs={CLI_EPOCHS}", *NO_CHECKPOINTS))
    return base / "records"


@pytest.fixture(scope="module")
def interrupted(indexed_root, tmp_path_factory) -> Path:
    """One run in base/run, stopped twice; the checkpoint of each stop kept as base/<stop>.ckpt
    (the next part of the run writes its own last.ckpt in the same folder)."""
    base = tmp_path_factory.mktemp("interrupted")
    folder, last = base / "run", base / "run" / "checkpoints" / "last.ckpt"
    succeeded(run(indexed_root, folder, "trainer.max_epochs=1"))
    shutil.copy(last, base / "first_epoch.ckpt")
    stopped = run(
        indexed_root,
        folder,
        f"trainer.max_epochs={CLI_EPOCHS}",
        f"ckpt_path={folder}",
        "+callbacks.sigterm._target_=tests.probes_resume.SigtermAt",
        "+callbacks.sigterm.epoch=1",
        "+callbacks.sigterm.batch=1",
        "~callbacks.best_checkpoint",
    )
    assert stopped == 128 + signal.SIGTERM  # 143, as a process killed by it
    shutil.copy(last, base / "stopped.ckpt")
    # A worker process here: with workers, Lightning starts the loader before it sets the epoch.
    finished = run(
        indexed_root,
        folder,
        f"trainer.max_epochs={CLI_EPOCHS}",
        f"ckpt_path={folder}",
        "data.num_workers=1",
        *NO_CHECKPOINTS,
    )
    succeeded(finished)
    return base


def checkpoint(path: Path) -> dict:
    return torch.load(path, weights_only=False)


@pytest.mark.slow
def test_a_run_stopped_mid_epoch_resumes_with_the_same_images_in_the_same_order(
    uninterrupted, interrupted
):
    stopped = checkpoint(interrupted / "stopped.ckpt")  # the run stops at the next check batch
    assert stopped["epoch"] == 1 and STEPS_PER_EPOCH < stopped["global_step"] < 2 * STEPS_PER_EPOCH

    expected, seen = read_records(uninterrupted)[0], read_records(interrupted / "records")[0]
    assert len(expected) == CLI_EPOCHS * STEPS_PER_EPOCH
    assert seen == expected  # epoch, batch index, global step and images of every batch
    for epoch in range(CLI_EPOCHS):
        images = [i for record in seen if record["epoch"] == epoch for i in record["indices"]]
        assert sorted(images) == list(range(IMAGES))  # each image once per epoch, none twice
    epochs = [[i for r in seen if r["epoch"] == epoch for i in r["indices"]] for epoch in (0, 1)]
    assert epochs[0] != epochs[1]  # every epoch its own permutation


@pytest.mark.slow
def test_the_plateau_scheduler_resumes_with_the_learning_rates_of_the_uninterrupted_run(
    uninterrupted, interrupted
):
    expected = read_learning_rates(uninterrupted)
    # Epoch 0's step sets the best value, epoch 1's divides the learning rate.
    assert {r["lr"][0] for r in expected} == {0.01}

    # The checkpoint of the first run was written at the end of epoch 0's validation, before
    # Lightning's plateau step: it holds the scheduler as it is after that step.
    first = checkpoint(interrupted / "first_epoch.ckpt")
    after_epoch_0 = next(r for r in expected if r["epoch"] == 1)
    assert first["lr_schedulers"][0] == after_epoch_0["scheduler"]
    assert first["lr_schedulers"][0]["last_epoch"] == 1

    # Every batch of the resumed runs trains with the learning rate and the scheduler state of
    # the uninterrupted run's same batch, and the runs end in the same state: epoch 1's step is
    # taken in the run resumed mid-epoch, which Lightning itself skips.
    seen = read_learning_rates(interrupted / "records")
    assert seen == expected
    final = json.loads((interrupted / "records" / "scheduler_rank0.json").read_text())
    assert final == json.loads((uninterrupted / "scheduler_rank0.json").read_text())
    assert final["last_epoch"] == CLI_EPOCHS and math.isclose(final["_last_lr"][0], 1e-3)
