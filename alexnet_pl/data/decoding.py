"""Image files to uint8 RGB tensors (3, H, W): three decoders behind `data.decode`.

- pil: PIL for every file. Slowest, reads anything PIL reads.
- cpu: a libjpeg-turbo JPEG decoder (about 1.5x faster than PIL's decode and no PIL-to-tensor
  copy); PIL for every other format, and for a JPEG libjpeg-turbo refuses, so a damaged file fails
  with PIL's message and is skipped as before.
- gpu: the workers read the bytes, read each JPEG's size from its header and draw the view's crop
  window there (read_for_device); a batch travels as one buffer (EncodedBatch). In the main process
  (CUDA cannot run in forked workers), a thread decodes it on the GPU with nvjpeg in one call and
  cuts all crops at once (decode_to_crops, batched_crops.py) while the step runs
  (device_prefetch.py). Files nvjpeg would get wrong (not JPEG, CMYK) are decoded and cropped on
  the CPU in the worker instead.

The JPEG decoder of cpu and gpu is TorchCodec's `decode_jpeg` when TorchCodec is installed, else
torchvision's (deprecated from torchvision 0.29, which names TorchCodec as its successor; both are
libjpeg-turbo on the CPU and nvjpeg on CUDA, and give the same pixels), else none: PIL decodes
every file. JPEG_CODEC says which; every JPEG of this project is decoded through this module.
"""

import functools
import io
import logging
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor

from alexnet_pl.data.bad_images import DECODE_ERRORS, BadImage, load_rgb
from alexnet_pl.data.batched_crops import crop_batch
from alexnet_pl.data.transforms import CropWindow

log = logging.getLogger(__name__)


class JpegCodec(NamedTuple):
    """A JPEG decoder: decode(bytes or a list of them, device) -> RGB uint8 (3, H, W) tensor(s);
    a damaged file raises RuntimeError. A list on CUDA is decoded in one nvjpeg call."""

    name: str  # the package and its version, as the run's log names it
    decode: Callable[..., torch.Tensor | list[torch.Tensor]]


def torchcodec_jpeg() -> JpegCodec:
    import torchcodec
    from torchcodec.decoders import decode_jpeg  # images need no FFmpeg

    def decode(data, device: torch.device | str = "cpu"):
        return decode_jpeg(data, mode="RGB", device=device)

    return JpegCodec(f"torchcodec {torchcodec.__version__}", decode)


def torchvision_jpeg() -> JpegCodec:
    import torchvision
    from torchvision.io import ImageReadMode, decode_jpeg  # to be removed after torchvision 0.29

    def decode(data, device: torch.device | str = "cpu"):
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)

    return JpegCodec(f"torchvision {torchvision.__version__}", decode)


# In the order they are tried. TorchCodec declares no torch version: one built for another torch
# installs but does not load (OSError), or may load and fail; a decoder is used only once it has
# decoded a small JPEG here to the pixels PIL gives.
JPEG_CODECS = {"torchcodec": torchcodec_jpeg, "torchvision": torchvision_jpeg}


def probe_jpeg() -> tuple[bytes, torch.Tensor]:
    """A small JPEG and its pixels as PIL decodes them (libjpeg-turbo, as both codecs)."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 40, 90)).save(buffer, format="JPEG")
    with Image.open(buffer) as image:
        return buffer.getvalue(), pil_to_tensor(image.convert("RGB"))


def find_jpeg_codec() -> tuple[JpegCodec | None, dict[str, str]]:
    """The first JPEG decoder that loads and decodes the probe right (None: PIL decodes every
    file), and why each one before it was passed over."""
    data, pixels = probe_jpeg()
    passed_over = {}
    for name, load in JPEG_CODECS.items():
        try:
            codec = load()
            decoded = codec.decode(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        except ModuleNotFoundError as error:
            passed_over[name] = f"not installed ({error})"
            continue
        except (ImportError, OSError, RuntimeError) as error:
            passed_over[name] = f"{type(error).__name__}: {error}"
            continue
        if not torch.equal(decoded, pixels):
            passed_over[name] = "decoded a test JPEG to other pixels than PIL"
            continue
        return codec, passed_over
    return None, passed_over


JPEG_CODEC, JPEG_CODECS_PASSED_OVER = find_jpeg_codec()


def device_jpeg_codec(device: torch.device) -> JpegCodec | None:
    """The JPEG decoder of data.decode=gpu on `device`: JPEG_CODEC on a CPU; on an accelerator the
    first of JPEG_CODECS that decodes the probe there (TorchCodec's nvjpeg, else torchvision's),
    chosen once and logged. None: the CPU decodes each image (decode_on_cpu)."""
    return JPEG_CODEC if device.type == "cpu" else accelerator_jpeg_codec(device)


@functools.cache
def accelerator_jpeg_codec(device: torch.device) -> JpegCodec | None:
    data, pixels = probe_jpeg()
    for name, load in JPEG_CODECS.items():
        try:
            codec = load()
            decoded = codec.decode([torch.frombuffer(bytearray(data), dtype=torch.uint8)], device)
        except (ImportError, OSError, RuntimeError) as error:
            log.info("data.decode=gpu: %s does not decode on %s (%s)", name, device, error)
            continue
        # nvjpeg may round a level differently from libjpeg-turbo.
        if (decoded[0].cpu().int() - pixels.int()).abs().max() <= 8:
            log.info("data.decode=gpu: JPEGs decoded on %s by %s", device, codec.name)
            return codec
    log.warning("data.decode=gpu: no JPEG decoder runs on %s; the CPU decodes each image", device)
    return None


def jpeg_codec_name() -> str:
    """What decodes the JPEGs of data.decode=cpu and gpu, and why not the ones before it: for the
    run's log."""
    used = JPEG_CODEC.name if JPEG_CODEC is not None else "PIL (no JPEG codec of torch loads)"
    reasons = "; ".join(f"{name}: {why}" for name, why in JPEG_CODECS_PASSED_OVER.items())
    return f"{used} ({reasons})" if reasons else used


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


class JpegHeader(NamedTuple):
    height: int
    width: int
    components: int  # 1 grey, 3 YCbCr, 4 CMYK


def jpeg_header(data: np.ndarray) -> JpegHeader | None:
    """Size and colour components of a JPEG, read from its start-of-frame segment without decoding;
    None if there is none (not a JPEG, or a damaged one)."""
    position = 2  # after the start-of-image marker
    while position + 9 < len(data):
        if data[position] != 0xFF:
            return None
        marker = int(data[position + 1])
        if marker in START_OF_FRAME:
            # length (2 bytes), sample precision (1), height (2), width (2), components (1)
            height = int(data[position + 5]) << 8 | int(data[position + 6])
            width = int(data[position + 7]) << 8 | int(data[position + 8])
            return JpegHeader(height, width, int(data[position + 9]))
        position += 2 + (int(data[position + 2]) << 8 | int(data[position + 3]))
    return None


def jpeg_components(data: np.ndarray) -> int:
    """The number of colour components of a JPEG (1 grey, 3 YCbCr, 4 CMYK); 0 if not found."""
    header = jpeg_header(data)
    return 0 if header is None else header.components


def decode_with_pil(path: str) -> torch.Tensor:
    return pil_to_tensor(load_rgb(path))


def decode_on_cpu(path: str) -> torch.Tensor:
    data = read_encoded(path)
    if JPEG_CODEC is not None and data[:3].tobytes() == JPEG_MAGIC:
        try:
            return JPEG_CODEC.decode(torch.from_numpy(data))
        except RuntimeError:
            pass  # PIL decodes what it can and says what is wrong with the rest
    return decode_with_pil(path)


class WindowedView(Protocol):
    """A view that can say where its crop lies before the image is decoded (transforms.py's
    ResizeRandomCropFlip and ResizeCenterCrop), as data.decode=gpu needs."""

    crop: int

    def window(self, height: int, width: int) -> CropWindow: ...

    def __call__(self, image: torch.Tensor) -> torch.Tensor: ...


class EncodedImage(NamedTuple):
    """What a worker returns with data.decode=gpu: a JPEG's bytes (1-D uint8) with its size and the
    view's crop window in its pixels, or, for a file only the CPU decodes right, the finished crop
    (3-D uint8; window and size None)."""

    path: str
    data: torch.Tensor
    window: CropWindow | None = None
    size: tuple[int, int] | None = None  # (height, width) from the JPEG header


def read_for_device(path: str, view: WindowedView) -> EncodedImage:
    """The worker's part of data.decode=gpu: read the file, its size from the JPEG header, and draw
    the view's crop there (the random draws come from the seeded worker, as with the CPU views)."""
    data = read_encoded(path)
    if JPEG_CODEC is None:  # no JPEG decoder for the device: PIL in the worker
        return EncodedImage(path, view(decode_with_pil(path)))
    header = jpeg_header(data) if data[:3].tobytes() == JPEG_MAGIC else None
    if header is not None and header.components in (1, 3) and header.height and header.width:
        size = (header.height, header.width)
        return EncodedImage(path, torch.from_numpy(data), view.window(*size), size)
    return EncodedImage(path, view(decode_on_cpu(path)))


class EncodedBatch:
    """The images of one data.decode=gpu batch in a few tensors. Each tensor crosses from a worker
    as one shared-memory segment: the files of a batch travel as one buffer, not one each. Not a
    list or tuple, so the DataLoader's pinning calls pin_memory() below.

    Positions are places in the batch (the sampler's order), which decoding keeps."""

    def __init__(self, images: Sequence[EncodedImage]) -> None:
        self.paths = [image.path for image in images]
        is_jpeg = [image.window is not None for image in images]
        jpegs = [image for image, jpeg in zip(images, is_jpeg, strict=True) if jpeg]
        ready = [image.data for image, jpeg in zip(images, is_jpeg, strict=True) if not jpeg]
        self.jpeg_at = torch.tensor(
            [i for i, jpeg in enumerate(is_jpeg) if jpeg], dtype=torch.int64
        )
        self.ready_at = torch.tensor(
            [i for i, jpeg in enumerate(is_jpeg) if not jpeg], dtype=torch.int64
        )
        nothing = torch.empty(0, dtype=torch.uint8)
        self.data = torch.cat([image.data for image in jpegs]) if jpegs else nothing
        self.ends = torch.tensor([len(image.data) for image in jpegs], dtype=torch.int64).cumsum(0)
        self.windows = torch.tensor([image.window for image in jpegs], dtype=torch.float64)
        self.sizes = torch.tensor([image.size for image in jpegs], dtype=torch.int64)
        self.crop = int(jpegs[0].window.size) if jpegs else ready[0].shape[-1]
        self.ready = torch.empty((len(ready), 3, self.crop, self.crop), dtype=torch.uint8)
        if ready:  # stacked channels-last, like the CPU decoder's batches (stack_images)
            self.ready = torch.stack([crop.permute(1, 2, 0) for crop in ready]).permute(0, 3, 1, 2)

    def __len__(self) -> int:
        return len(self.paths)

    def jpegs(self) -> list[torch.Tensor]:
        """Each JPEG's bytes: views into the one buffer."""
        ends = self.ends.tolist()
        return [self.data[start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True)]

    def pin_memory(self) -> "EncodedBatch":
        """With data.pin_memory=true, the bytes for nvjpeg and the finished crops are copied to the
        GPU from page-locked memory, without blocking."""
        self.data, self.ready = self.data.pin_memory(), self.ready.pin_memory()
        return self


def decode_jpegs(
    batch: EncodedBatch, device: torch.device
) -> tuple[list[torch.Tensor], list[int], list[BadImage]]:
    """The batch's JPEGs decoded on `device` (nvjpeg on a GPU, libjpeg-turbo on a CPU) in one call.
    One damaged file fails that call as a whole; then they are decoded one by one (nvjpeg, else
    libjpeg-turbo, else PIL, which says what is wrong) and the ones that fail are returned as bad.
    Returns the images, their indices among the batch's JPEGs, and the bad files."""
    jpegs = batch.jpegs()
    if not jpegs:
        return [], [], []
    paths = [batch.paths[i] for i in batch.jpeg_at.tolist()]
    codec = device_jpeg_codec(device)
    try:
        decoded = dict(enumerate(codec.decode(jpegs, device=device))) if codec else {}
    except RuntimeError:
        decoded = {}
    bad = []
    if not decoded:
        for i, (path, data) in enumerate(zip(paths, jpegs, strict=True)):
            try:
                try:
                    if codec is None:
                        raise RuntimeError("no JPEG decoder for the device")
                    decoded[i] = codec.decode(data, device=device)
                except RuntimeError:
                    decoded[i] = decode_on_cpu(path).to(device, non_blocking=True)
            except DECODE_ERRORS as error:
                bad.append(BadImage(path, f"{type(error).__name__}: {error}"))
    sizes = batch.sizes.tolist()
    for i, image in list(decoded.items()):
        if list(image.shape[-2:]) != sizes[i]:  # its window was drawn for the header's size
            del decoded[i]
            shape = tuple(image.shape[-2:])
            bad.append(BadImage(paths[i], f"decoded as {shape}, its header says {tuple(sizes[i])}"))
    kept = sorted(decoded)
    return [decoded[i] for i in kept], kept, bad


def decode_to_crops(
    batch: EncodedBatch, device: torch.device
) -> tuple[torch.Tensor | None, list[int], list[BadImage]]:
    """The main process's part of data.decode=gpu: the batch's uint8 crops (N, 3, crop, crop) on
    `device`, channels-last, in batch order; the positions kept (the others could not be decoded);
    the files that could not. None for the crops if none could."""
    images, kept, bad = decode_jpegs(batch, device)
    jpeg_positions = batch.jpeg_at[kept].tolist()
    ready_positions = batch.ready_at.tolist()
    positions = sorted(jpeg_positions + ready_positions)
    if not positions:
        return None, [], bad
    crops = crop_batch(images, batch.windows[kept]) if images else None
    if crops is not None and not ready_positions:
        return crops, positions, bad  # the usual batch: all JPEGs, in batch order
    out = torch.empty((len(positions), 3, batch.crop, batch.crop), dtype=torch.uint8, device=device)
    out = out.contiguous(memory_format=torch.channels_last)
    place = {position: i for i, position in enumerate(positions)}
    for at, pixels in ((jpeg_positions, crops), (ready_positions, batch.ready)):
        if at:
            index = torch.tensor([place[p] for p in at], device=device)
            out[index] = pixels.to(device, non_blocking=True)
    return out, positions, bad
