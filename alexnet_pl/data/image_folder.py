"""An ImageFolder (root/<class>/<image>) as a Dataset of uint8 images, with a compact index.

torchvision's ImageFolder keeps `samples` as a Python list of (path, label) tuples: 1.28M string
and tuple objects for ImageNet. Every worker inherits them by fork, and merely reading one updates
its reference count, which copies the page it lives on into that worker (pytorch issue 13246):
worker memory grows over an epoch until the machine swaps. ImageIndex holds the same information
in three numpy arrays, which reading never writes to. benchmarks/worker_memory.py shows the
difference.
"""

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from alexnet_pl.data.bad_images import DECODE_ERRORS, BadImage, BadImageError
from alexnet_pl.data.decoding import (
    EncodedBatch,
    EncodedImage,
    check_decoder,
    decode_on_cpu,
    decode_with_pil,
    read_for_device,
)
from alexnet_pl.errors import UserError


class ImageIndex:
    """Paths and labels of an image folder, in ImageFolder's order, as numpy arrays."""

    def __init__(self, classes: list[str], samples: Sequence[tuple[str, int]]) -> None:
        self.classes = classes
        encoded = [path.encode() for path, _ in samples]
        self.path_bytes = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self.path_ends = np.cumsum([len(path) for path in encoded], dtype=np.int64)
        self.labels = np.array([label for _, label in samples], dtype=np.int32)

    @classmethod
    def scan(cls, root: str) -> "ImageIndex":
        """The files ImageFolder would list, in its order (classes sorted, then files sorted)."""
        classes, class_to_index = find_classes(root)
        # allow_empty: a class folder without images is reported by the DataModule, not fatal.
        samples = make_dataset(root, class_to_index, IMG_EXTENSIONS, allow_empty=True)
        return cls(classes, samples)  # the list of tuples is dropped here, before any fork

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> str:
        start = self.path_ends[index - 1] if index > 0 else 0
        return self.path_bytes[start : self.path_ends[index]].tobytes().decode()


class ImageFolderDataset(Dataset):
    """(image, label) pairs of an image folder. The image is `transform(uint8 (3, H, W) tensor)`,
    or with decode="gpu" an EncodedImage: the file's bytes and the transform's crop window, for
    decoding on the device. A file that cannot be decoded comes back as a BadImage (skipped,
    counted and reported), or with strict=True stops the run."""

    def __init__(
        self,
        root: str,
        transform: Callable | None = None,
        decode: str = "cpu",
        strict: bool = False,
    ) -> None:
        self.root = root
        self.index = ImageIndex.scan(root)
        self.classes = self.index.classes
        self.transform = transform
        self.decode = check_decoder(decode)
        readers = {"pil": decode_with_pil, "cpu": decode_on_cpu, "gpu": self._read_for_device}
        self.read = readers[decode]
        if decode == "gpu" and not callable(getattr(transform, "window", None)):
            raise UserError(
                f"data.decode=gpu needs a view that places its crop before decoding (a window() "
                f"method: View in alexnet_pl/data/transforms.py); "
                f"{type(transform).__name__} has none: use data.decode=cpu with it"
            )
        self.strict = strict

    @property
    def targets(self) -> np.ndarray:
        return self.index.labels

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> Any:
        path, label = self.index.path(index), int(self.index.labels[index])
        try:
            image = self.read(path)
        except DECODE_ERRORS as error:
            bad = BadImage(path, f"{type(error).__name__}: {error}")
            if self.strict:
                raise BadImageError(strict_message(bad)) from error
            return bad
        if self.transform is not None and self.decode != "gpu":
            image = self.transform(image)
        return image, label

    def _read_for_device(self, path: str) -> EncodedImage:
        return read_for_device(path, self.transform)


def strict_message(bad: BadImage) -> str:
    return (
        f"cannot decode {bad.path}: {bad.error} (data.strict=true stops at the first bad file; "
        "data.strict=false skips such files and lists them in bad_files.tsv)"
    )


def collate_skipping_bad(samples: list) -> tuple:
    """default_collate over the good samples; the bad ones travel along as a third element, so the
    main process can count and report them (workers are separate processes)."""
    good = [sample for sample in samples if not isinstance(sample, BadImage)]
    bad = [sample for sample in samples if isinstance(sample, BadImage)]
    if not good:
        return None, None, bad
    images, labels = zip(*good, strict=True)
    if isinstance(images[0], EncodedImage):  # decode=gpu: decoded in the main process
        return EncodedBatch(images), default_collate(labels), bad
    return stack_images(images), default_collate(labels), bad


def stack_images(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stacks uint8 (3, H, W) images into a (N, 3, H, W) batch laid out channels-last in memory.

    libjpeg-turbo decodes into height-width-channel memory, and the views keep it. Stacking in
    that layout is a plain copy, ten times faster than transposing every image to channel-first
    memory (0.02 against 0.21 ms per 227 px image), and channels-last is the layout the GPU's
    convolutions prefer. Ten-crop stacks (10, 3, H, W) are stacked as they are.
    """
    if images[0].dim() != 3:
        return torch.stack(images)
    return torch.stack([image.permute(1, 2, 0) for image in images]).permute(0, 3, 1, 2)
