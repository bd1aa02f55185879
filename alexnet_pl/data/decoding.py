"""Image files to uint8 RGB tensors (3, H, W): three decoders behind `data.decode`.

- pil: PIL for every file. Slowest, reads anything PIL reads.
- cpu: torchvision's libjpeg-turbo decoder for JPEG files (about 1.5x faster than PIL's decode and
  no PIL-to-tensor copy); PIL for every other format, and for a JPEG libjpeg-turbo refuses, so a
  damaged file fails with PIL's message and is skipped as before.
- gpu: the workers only read the bytes; the batch is decoded on the GPU with nvjpeg
  (decode_on_device). CUDA cannot be used in forked workers, so this part runs in the main process.
  Files nvjpeg would get wrong (not JPEG, CMYK) are decoded on the CPU in the worker instead.
"""

import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2.functional import pil_to_tensor

from alexnet_pl.data.bad_images import DECODE_ERRORS, BadImage, load_rgb

# torchvision 0.29 announces that its image codecs will move to TorchCodec; they are still the
# libjpeg-turbo and nvjpeg decoders this project is measured with. Swap when they are removed.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities")

DECODERS = ("pil", "cpu", "gpu")
JPEG_MAGIC = b"\xff\xd8\xff"
# Start-of-frame markers (baseline, progressive, ...), which hold the number of colour components.
START_OF_FRAME = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def check_decoder(decode: str) -> str:
    if decode not in DECODERS:
        raise ValueError(
            f"data.decode={decode} is not a decoder; use one of {', '.join(DECODERS)} "
            "(cpu: libjpeg-turbo in the loader workers, the default; gpu: nvjpeg on the GPU; "
            "pil: PIL for everything)"
        )
    return decode


def read_encoded(path: str) -> np.ndarray:
    return np.fromfile(path, dtype=np.uint8)  # one read into a writable buffer torch can share


def jpeg_components(data: np.ndarray) -> int:
    """The number of colour components of a JPEG (1 grey, 3 YCbCr, 4 CMYK), read from its
    start-of-frame header; 0 if the header is not found."""
    position = 2  # after the start-of-image marker
    while position + 9 < len(data):
        if data[position] != 0xFF:
            return 0
        marker = int(data[position + 1])
        if marker in START_OF_FRAME:
            return int(data[position + 9])
        position += 2 + (int(data[position + 2]) << 8 | int(data[position + 3]))
    return 0


def decode_with_pil(path: str) -> torch.Tensor:
    return pil_to_tensor(load_rgb(path))


def decode_on_cpu(path: str) -> torch.Tensor:
    data = read_encoded(path)
    if data[:3].tobytes() == JPEG_MAGIC:
        try:
            return decode_jpeg(torch.from_numpy(data), mode=ImageReadMode.RGB)
        except RuntimeError:
            pass  # PIL decodes what it can and says what is wrong with the rest
    return decode_with_pil(path)


class EncodedImage(NamedTuple):
    """What a worker returns with data.decode=gpu: the file's bytes (1-D uint8) for nvjpeg, or the
    decoded image (3-D uint8) for a file only the CPU decodes right."""

    path: str
    data: torch.Tensor


def read_for_device(path: str) -> EncodedImage:
    data = read_encoded(path)
    if data[:3].tobytes() == JPEG_MAGIC and jpeg_components(data) in (1, 3):
        return EncodedImage(path, torch.from_numpy(data))
    return EncodedImage(path, decode_on_cpu(path))


class EncodedBatch:
    """The images of one batch before decoding. Deliberately not a list or tuple: Lightning moves
    every tensor in a batch to the device, but nvjpeg wants the bytes on the CPU."""

    def __init__(self, images: list[EncodedImage]) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)


def decode_one(image: EncodedImage, device: torch.device) -> torch.Tensor:
    """One image on its own: nvjpeg, else libjpeg-turbo, else PIL (which raises what is wrong)."""
    if image.data.dim() == 3:  # decoded in the worker
        return image.data.to(device, non_blocking=True)
    try:
        return decode_jpeg(image.data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return decode_on_cpu(image.path).to(device, non_blocking=True)


def decode_on_device(
    batch: EncodedBatch, device: torch.device, view: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor | None, list[int], list[BadImage]]:
    """Decodes a batch on `device` (nvjpeg on a GPU, libjpeg-turbo on a CPU), applies `view` to
    each image there and stacks them. Returns the images, the positions kept, and the files that
    could not be decoded."""
    encoded = [i for i, image in enumerate(batch.images) if image.data.dim() == 1]
    decoded: dict[int, torch.Tensor] = {}
    try:
        if encoded:
            batch_data = [batch.images[i].data for i in encoded]
            together = decode_jpeg(batch_data, mode=ImageReadMode.RGB, device=device)
            decoded.update(zip(encoded, together, strict=True))
    except RuntimeError:
        pass  # one damaged file fails the whole call: the loop below finds it
    bad = []
    for i, image in enumerate(batch.images):
        if i not in decoded:
            try:
                decoded[i] = decode_one(image, device)
            except DECODE_ERRORS as error:
                bad.append(BadImage(image.path, f"{type(error).__name__}: {error}"))
    kept = sorted(decoded)
    if not kept:
        return None, kept, bad
    return torch.stack([view(decoded[i]) for i in kept]), kept, bad
