"""The ImageNet-style folder (root/train/<class>/*, root/val/<class>/*) as a LightningDataModule."""

import logging
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Sampler

from alexnet_pl.data.bad_images import BadImageError, BadImageReport
from alexnet_pl.data.decoding import check_decoder, decode_to_crops, jpeg_codec_name
from alexnet_pl.data.device_prefetch import DecodingAheadLoader
from alexnet_pl.data.image_folder import ImageFolderDataset, collate_skipping_bad, strict_message
from alexnet_pl.data.sampling import ResumableShuffleSampler, ShardSampler
from alexnet_pl.data.workers import init_worker
from alexnet_pl.errors import MissingInput, UserError
from alexnet_pl.exact_resume import resume_position

log = logging.getLogger(__name__)
SPLITS = ("train", "val")
LAYOUT_HINT = (
    "expected root/train/<class>/*.JPEG and root/val/<class>/*.JPEG (the torchvision ImageFolder "
    "layout; `python -m alexnet_pl.train experiment=demo` trains on generated data instead)"
)


def list_classes(split_dir: Path) -> list[str]:
    """Class names of one split, sorted: the same order ImageFolder gives its labels."""
    return sorted(entry.name for entry in split_dir.iterdir() if entry.is_dir())


def classes_only_in(first: list[str], second: list[str]) -> tuple[list[str] | str, list[str] | str]:
    """The classes only in `first` and only in `second`, sorted ('none' for an empty side): what
    an error about two class lists should name."""
    return sorted(set(first) - set(second)) or "none", sorted(set(second) - set(first)) or "none"


def per_device_batch_size(global_batch_size: int, world_size: int) -> int:
    """`data.batch_size` is the batch of one optimizer step over all processes, as in the paper."""
    if global_batch_size < world_size or global_batch_size % world_size:
        raise UserError(
            f"data.batch_size={global_batch_size} is the global batch and must divide evenly over "
            f"{world_size} processes (devices x nodes); use a multiple of {world_size}, "
            f"e.g. data.batch_size={max(1, global_batch_size // world_size) * world_size}"
        )
    return global_batch_size // world_size


class ImageFolderDataModule(pl.LightningDataModule):
    """Workers decode and crop to uint8 (`*_transform`, views from transforms.py); the batch is
    made float, lit and normalised on the device (`*_batch_transform`, after the transfer)."""

    def __init__(
        self,
        root: str,
        train_transform: Callable,
        val_transform: Callable,
        train_batch_transform: Callable,
        val_batch_transform: Callable,
        decode: str = "cpu",
        batch_size: int = 128,
        num_workers: int = 8,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        drop_last: bool = True,
        strict: bool = False,
        bad_file_report: str | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(root).expanduser()
        self.train_transform = train_transform
        self.val_transform = val_transform
        self.train_batch_transform = train_batch_transform
        self.val_batch_transform = val_batch_transform
        self.decode = check_decoder(decode)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0  # torch refuses it with 0
        self.batch_size_per_device = batch_size
        self.drop_last = drop_last
        self.strict = strict
        self.bad_file_report = bad_file_report
        self.bad_images = BadImageReport(None)
        self.class_names: list[str] = []
        self.train_set: ImageFolderDataset | None = None
        self.val_set: ImageFolderDataset | None = None
        # The seed of the training order: the checkpoint's on a resume, else the run's seed.
        self.shuffle_seed: int | None = None

    def read_class_names(self) -> list[str]:
        """The classes of the folder, checked to be the same in train/ and val/.

        A class missing from one split would shift every label after it: a week of training on
        wrong labels. So a difference stops the run, naming the classes.
        """
        for split in SPLITS:
            if not (self.root / split).is_dir():
                raise MissingInput(f"data.root={self.root} has no {split}/ folder; {LAYOUT_HINT}")
        train_classes, val_classes = (list_classes(self.root / split) for split in SPLITS)
        if not train_classes:
            raise MissingInput(f"data.root={self.root}/train has no class folders; {LAYOUT_HINT}")
        if train_classes != val_classes:
            only_train, only_val = classes_only_in(train_classes, val_classes)
            raise UserError(
                f"data.root={self.root}: train/ and val/ must hold the same class folders, or the "
                f"labels would not match. Only in train/: {only_train}; only in val/: "
                f"{only_val}. Add or remove class folders so both lists are identical."
            )
        return train_classes

    def setup(self, stage: str | None = None) -> None:
        # Both checks run before any image is opened, on every process.
        self.class_names = self.read_class_names()
        world_size = self.trainer.world_size if self.trainer is not None else 1
        self.batch_size_per_device = per_device_batch_size(self.batch_size, world_size)
        self.train_set, self.val_set = (
            ImageFolderDataset(str(self.root / split), transform, self.decode, self.strict)
            for split, transform in zip(
                SPLITS, (self.train_transform, self.val_transform), strict=True
            )
        )
        if self.decode != "pil" and (self.trainer is None or self.trainer.is_global_zero):
            log.info("data.decode=%s: JPEGs decoded by %s", self.decode, jpeg_codec_name())
        for split, dataset in zip(SPLITS, (self.train_set, self.val_set), strict=True):
            counts = np.bincount(dataset.targets, minlength=len(dataset.classes))
            empty = [name for name, count in zip(dataset.classes, counts, strict=True) if not count]
            if empty:
                log.warning(
                    "%s/%s: %d class folders hold no images: %s",
                    self.root,
                    split,
                    len(empty),
                    empty,
                )
        rank, _ = self._rank_and_world_size()
        if self.bad_file_report is not None:
            report = Path(self.bad_file_report)
            # One report per process: under DDP every rank reads its own share of the files.
            self.bad_images = BadImageReport(
                report if rank == 0 else report.with_suffix(f".rank{rank}.tsv")
            )

    def on_before_batch_transfer(self, batch: tuple, dataloader_idx: int) -> tuple:
        images, labels, bad = batch
        self.bad_images.add(bad)
        return images, labels

    def on_after_batch_transfer(self, batch: tuple, dataloader_idx: int) -> tuple:
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        if images is None:
            return None, None
        to_float = self.train_batch_transform if training else self.val_batch_transform
        return to_float(images), labels

    def decode_batch(self, batch: tuple, device: torch.device) -> tuple:
        """data.decode=gpu, in the decoding thread: a collated batch of files (EncodedBatch) to
        uint8 crops on `device`; files that cannot be decoded are dropped with their labels and
        passed on to be reported in on_before_batch_transfer (or stop the run, strict=true)."""
        encoded, labels, bad = batch
        if encoded is None:  # no file of the batch could even be read
            return None, None, bad
        images, kept, undecodable = decode_to_crops(encoded, device)
        if undecodable and self.strict:
            raise BadImageError(strict_message(undecodable[0]))
        if images is None:
            return None, None, bad + undecodable
        labels = labels[kept] if len(kept) < len(labels) else labels
        return images, labels.to(device, non_blocking=True), bad + undecodable

    def _decoding_ahead(self, loader: DataLoader) -> DataLoader | DecodingAheadLoader:
        """data.decode=gpu: the loader's batches decoded on this process's device by a thread,
        one or two batches ahead of the step (device_prefetch.py)."""
        if self.decode != "gpu":
            return loader
        device = torch.device("cpu") if self.trainer is None else self.trainer.strategy.root_device
        return DecodingAheadLoader(loader, partial(self.decode_batch, device=device), device)

    def teardown(self, stage: str) -> None:
        if len(self.bad_images):
            log.warning(
                "%d images could not be decoded and were skipped; their paths are in %s",
                len(self.bad_images),
                self.bad_images.path or "the log above",
            )

    def _loader(self, dataset: ImageFolderDataset, sampler: Sampler, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size_per_device,
            # Our samplers, also under DDP (trainer.use_distributed_sampler=false): data/sampling.py
            sampler=sampler,
            drop_last=self.drop_last and train,
            num_workers=self.num_workers,
            # Pinning only helps copies to an accelerator; without one torch warns on every loader.
            pin_memory=self.pin_memory and torch.accelerator.is_available(),
            persistent_workers=self.persistent_workers,
            collate_fn=collate_skipping_bad,
            # Workers leave the scheduler's SIGTERM/SIGUSR1 to this process, then seed as Lightning
            # would (data/workers.py).
            worker_init_fn=partial(init_worker, rank=self._rank_and_world_size()[0]),
        )

    def _rank_and_world_size(self) -> tuple[int, int]:
        if self.trainer is None:  # a DataModule used outside training, as in the tests
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def train_dataloader(self) -> DataLoader:
        if self.shuffle_seed is None:
            # seed_everything sets PL_GLOBAL_SEED, the same on every rank (0 as Lightning's own
            # DistributedSampler takes without it, e.g. a DataModule used outside training).
            self.shuffle_seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        sampler = ResumableShuffleSampler(
            len(self.train_set), self.shuffle_seed, *self._rank_and_world_size()
        )
        if self.trainer is not None:
            # On a resume Lightning has restored its loop counters by now. The epoch is set here
            # too: with workers, Lightning starts this loader before it calls set_epoch.
            epoch, batches_done = resume_position(self.trainer)
            sampler.set_epoch(epoch)
            sampler.resume_at(epoch, batches_done * self.batch_size_per_device)
        return self._decoding_ahead(self._loader(self.train_set, sampler, train=True))

    def train_batches_per_epoch(self) -> int:
        """Training batches per epoch on each process, known without building the loader: a
        learning-rate schedule counted in optimizer steps needs it in configure_optimizers, before
        a resume has restored where the loader must start (schedules.py)."""
        rank, world_size = self._rank_and_world_size()
        per_rank = len(ResumableShuffleSampler(len(self.train_set), 0, rank, world_size))
        if self.drop_last:
            return per_rank // self.batch_size_per_device
        return -(-per_rank // self.batch_size_per_device)

    def val_dataloader(self) -> DataLoader:
        sampler = ShardSampler(len(self.val_set), *self._rank_and_world_size())
        return self._decoding_ahead(self._loader(self.val_set, sampler, train=False))

    def state_dict(self) -> dict[str, Any]:
        # Stored in every checkpoint, so a model can be used later without the training folder,
        # and a resumed run shuffles as the checkpoint's run did (also if it drew another seed).
        state: dict[str, Any] = {"class_names": self.class_names}
        if self.shuffle_seed is not None:  # set once training has asked for its loader
            state["shuffle_seed"] = self.shuffle_seed
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("class_names")
        if saved is not None and saved != self.class_names:
            only_saved, only_here = classes_only_in(saved, self.class_names)
            raise UserError(
                f"the checkpoint was trained on classes that differ from those in "
                f"data.root={self.root} (only in the checkpoint: {only_saved}; only in the "
                f"folder: {only_here}); resume on the same classes"
            )
        self.shuffle_seed = state_dict.get("shuffle_seed", self.shuffle_seed)
