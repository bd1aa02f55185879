"""data.decode=gpu: the batched crops against the per-image CPU views, the thread that decodes
ahead (order, errors, shutdown), and on a CUDA machine nvjpeg against the CPU. A real DDP run with
it (each rank its own share, the run ends on its own): test_launchers.py's torchrun run.

The CUDA tests need no Hydra (nor conftest.py): on a machine without it,
    python -m pytest --noconftest tests/test_gpu_decode.py -k cuda
"""

import io
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_lightning.utilities.combined_loader import _shutdown_workers_and_reset_iterator
from torch.utils.data import DataLoader

from alexnet_pl.data.batched_crops import crop_batch
from alexnet_pl.data.datamodule import ImageFolderDataModule
from alexnet_pl.data.decoding import decode_to_crops
from alexnet_pl.data.device_prefetch import DecodingAheadLoader
from alexnet_pl.data.image_folder import ImageFolderDataset, collate_skipping_bad
from alexnet_pl.data.preprocessing import Preprocessing
from alexnet_pl.data.random_resized_crop import RandomResizedCropFlip
from alexnet_pl.data.transforms import (
    Placement,
    ResizeCenterCrop,
    ResizeRandomCropFlip,
    ToNormalizedFloat,
    resize_shorter_side,
)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# (width, height): ImageNet's common shapes, portrait, a prepared copy's (shorter side already
# 256: no resampling), one smaller than 256 (enlarged), and a large one (its own group).
SIZES = [(500, 375), (375, 500), (500, 333), (341, 256), (200, 150), (800, 600)]


def smooth_photo(rng: np.random.Generator, width: int, height: int) -> torch.Tensor:
    """A photo-like uint8 (3, H, W) image: smooth colour fields at the scale of objects."""
    coarse = rng.integers(0, 256, (height // 24 + 2, width // 24 + 2, 3), dtype=np.uint8)
    smooth = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.array(smooth)).permute(2, 0, 1)


@pytest.fixture(scope="module")
def photos() -> list[torch.Tensor]:
    rng = np.random.default_rng(0)
    return [smooth_photo(rng, width, height) for width, height in SIZES]


def views_and_windows(view, images: list[torch.Tensor]) -> tuple[list, torch.Tensor]:
    """The CPU view of each image and its window, from the same random draws."""
    crops, windows = [], []
    for seed, image in enumerate(images):
        torch.manual_seed(seed)
        crops.append(view(image))
        torch.manual_seed(seed)
        windows.append(view.window(*image.shape[-2:]))
    return crops, torch.tensor(windows, dtype=torch.float64)


@pytest.mark.parametrize(
    ("view", "dtype"),
    [
        (
            ResizeRandomCropFlip(Preprocessing(256, 227)),
            torch.float32,
        ),  # the paper's, from the central square
        (
            ResizeRandomCropFlip(Preprocessing(256, 227, square=False)),
            torch.float16,
        ),  # the GPU's arithmetic
        (ResizeCenterCrop(Preprocessing(256, 227)), torch.float32),
        (
            ResizeCenterCrop(Preprocessing(None, 227)),
            torch.float32,
        ),  # the notebook's: pads with black
    ],
    ids=["paper", "rectangle-float16", "centre", "notebook"],
)
def test_batched_crops_give_the_pixels_of_the_per_image_views(photos, view, dtype):
    expected, windows = views_and_windows(view, photos)
    crops = crop_batch(photos, windows, dtype=dtype)
    assert crops.shape == (len(photos), 3, 227, 227) and crops.dtype == torch.uint8
    assert crops.is_contiguous(memory_format=torch.channels_last)
    for size, crop, want in zip(SIZES, crops, expected, strict=True):
        difference = (crop.int() - want.int()).abs()
        # torchvision rounds to uint8 between its two passes; this computes both in float.
        assert difference.float().mean() < 0.5 and difference.max() <= 2, size
        if size == (341, 256) or view.resize is None:  # no resampling: the very pixels
            assert torch.equal(crop, want), size


def marked_image(scale: int) -> torch.Tensor:
    """A grey 341x256 image (times `scale`) with a red 10x10 block (times `scale`) at the top-left
    corner of its central 256x256 square (columns 42..51)."""
    image = torch.full((3, 256 * scale, 341 * scale), 128, dtype=torch.uint8)
    image[:, : 10 * scale, 42 * scale : 52 * scale] = torch.tensor([255, 0, 0])[:, None, None]
    return image


@pytest.mark.parametrize("scale", [1, 2])  # 2: a 682x512 photo, halved by the resize
def test_batched_crops_cut_from_the_right_place_and_mirror(scale):
    image = marked_image(scale)
    height, width = image.shape[-2:]
    corner = [Placement((256, 341), 0, 42, 227, flip) for flip in (False, True)]
    elsewhere = Placement((256, 341), 29, 71, 227, False)  # the square's bottom-right crop
    windows = torch.tensor([p.window(height, width) for p in [*corner, elsewhere]])
    plain, mirrored, far = crop_batch([image] * 3, windows)
    red, grey = torch.tensor([255, 0, 0]), torch.tensor([128, 128, 128])
    blur = scale - 1  # halving blurs the block's edges (not the image's top) over a pixel
    assert (plain[:, : 10 - blur, blur : 10 - blur] == red[:, None, None]).all()
    assert (plain[:, 11:, :] == grey[:, None, None]).all()
    assert (plain[:, :, 11:] == grey[:, None, None]).all()
    assert torch.equal(mirrored, plain.flip(-1))
    assert (far == grey[:, None, None]).all()
    expected = [p.cut(resize_shorter_side(image, 256)) for p in [*corner, elsewhere]]
    for crop, want in zip((plain, mirrored, far), expected, strict=True):
        assert (crop.int() - want.int()).abs().max() <= 2


def toy_loader(batches: int = 6, batch_size: int = 3, **options) -> DataLoader:
    return DataLoader(torch.arange(batches * batch_size), batch_size=batch_size, **options)


def test_decoding_ahead_gives_each_batch_prepared_in_order_and_shows_lightning_the_loader():
    inner = toy_loader()
    loader = DecodingAheadLoader(inner, lambda batch: batch * 10, torch.device("cpu"))
    expected = [batch * 10 for batch in inner]
    for _ in range(2):  # every pass starts again, like a DataLoader's
        assert [b.tolist() for b in loader] == [b.tolist() for b in expected]
    assert len(loader) == len(inner) == 6
    # What Lightning reads or sets: set_epoch goes to these, its worker seeding to the inner one.
    assert loader.sampler is inner.sampler and loader.batch_sampler is inner.batch_sampler
    assert loader.dataset is inner.dataset
    loader.worker_init_fn = print
    assert inner.worker_init_fn is print


def test_decoding_ahead_prepares_batches_before_they_are_asked_for():
    prepared = []
    loader = DecodingAheadLoader(
        toy_loader(), lambda b: prepared.append(b) or b, torch.device("cpu")
    )
    batches = iter(loader)
    next(batches)
    deadline = time.monotonic() + 10
    while len(prepared) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # it stops there: the one taken, two ready, one waiting for room
    assert len(prepared) == 1 + 2 + 1 and batches.thread.is_alive()
    loader.close()
    assert not batches.thread.is_alive()


def failing_at_third(batch: torch.Tensor) -> torch.Tensor:
    if int(batch[0]) == 6:
        raise ValueError("cannot prepare batch 3")
    return batch


@pytest.mark.parametrize("workers", [0, 1])
def test_an_error_while_loading_or_preparing_is_raised_in_the_training_thread(workers):
    class Failing(torch.utils.data.Dataset):  # an error in a loader worker process
        def __len__(self) -> int:
            return 12

        def __getitem__(self, index: int) -> int:
            if index == 7:
                raise KeyError(f"no sample {index}")
            return index

    for inner, error, message in (
        (toy_loader(num_workers=workers), ValueError, "cannot prepare batch 3"),
        (DataLoader(Failing(), batch_size=3, num_workers=workers), KeyError, "no sample 7"),
    ):
        batches = iter(DecodingAheadLoader(inner, failing_at_third, torch.device("cpu")))
        assert next(batches).tolist() == [0, 1, 2]
        with pytest.raises(error, match=message):
            for _ in batches:
                pass
        assert not batches.thread.is_alive()
        with pytest.raises(StopIteration):
            next(batches)


def test_an_unfinished_pass_stops_when_the_next_begins_or_lightning_resets_the_loader():
    loader = DecodingAheadLoader(toy_loader(batches=20), lambda b: b, torch.device("cpu"))
    first = iter(loader)
    next(first)  # as Lightning's sanity check leaves a validation loader
    second = iter(loader)
    assert not first.thread.is_alive()
    assert [int(b[0]) for b in second] == list(range(0, 60, 3))  # from the start, all of it
    third = iter(loader)
    next(third)
    _shutdown_workers_and_reset_iterator(loader)  # what Lightning does at the end of fit
    assert not third.thread.is_alive() and loader.running is None
    fourth = iter(DecodingAheadLoader(toy_loader(batches=20), lambda b: b, torch.device("cpu")))
    next(fourth)
    thread = fourth.thread
    del fourth  # dropped unfinished, with its loader: freed at once (no reference cycle)
    thread.join(timeout=5)
    assert not thread.is_alive()


def photo_jpegs(root: Path, sizes: list[tuple[int, int]]) -> Path:
    """A train/val folder of photo-like JPEGs (quality 90), one class."""
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        folder = root / split / "a"
        folder.mkdir(parents=True)
        for i, (width, height) in enumerate(sizes):
            pixels = smooth_photo(rng, width, height).permute(1, 2, 0).numpy()
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
            (folder / f"{i}.JPEG").write_bytes(buffer.getvalue())
    return root


@CUDA
@pytest.mark.parametrize(
    "view",
    [
        ResizeRandomCropFlip(Preprocessing(256, 227)),
        ResizeCenterCrop(Preprocessing(256, 227)),
        RandomResizedCropFlip(Preprocessing(256, 227)),  # transforms=rrc: CPU and GPU, one window
    ],
)
def test_cuda_crops_match_the_cpu_path(tmp_path, view):
    root = photo_jpegs(tmp_path, SIZES * 4)
    dataset = ImageFolderDataset(str(root / "train"), view, decode="gpu")
    torch.manual_seed(0)
    encoded, _, _ = collate_skipping_bad([dataset[i] for i in range(len(dataset))])
    on_cpu, kept_cpu, _ = decode_to_crops(encoded, torch.device("cpu"))
    on_gpu, kept_gpu, bad = decode_to_crops(encoded, torch.device("cuda"))
    assert on_gpu.device.type == "cuda" and kept_gpu == kept_cpu and bad == []
    difference = (on_gpu.cpu().int() - on_cpu.int()).abs().float()
    # nvjpeg and libjpeg-turbo differ in their inverse DCT and upsampling by a level or two.
    assert difference.mean() < 1.0, difference.mean()
    # Per image, measured on an H200 (torch 2.11): 0.3 to 2.3 levels, the two decoders and the
    # float16 arithmetic of the GPU path together.
    assert difference.mean(dim=(1, 2, 3)).max() < 3.0


@CUDA
def test_a_damaged_jpeg_in_a_cuda_batch_is_skipped_and_reported(tmp_path):
    root = photo_jpegs(tmp_path, SIZES * 2)
    damaged = root / "val" / "a" / "damaged.JPEG"  # passes the worker (it only reads)
    damaged.write_bytes((root / "val" / "a" / "0.JPEG").read_bytes()[:400])
    datamodule = ImageFolderDataModule(
        str(root),
        ResizeRandomCropFlip(Preprocessing(256, 227)),
        ResizeCenterCrop(Preprocessing(256, 227)),
        ToNormalizedFloat([0.5] * 3, [0.5] * 3),
        ToNormalizedFloat([0.5] * 3, [0.5] * 3),
        decode="gpu",
        batch_size=13,
        num_workers=0,
        pin_memory=False,
    )
    datamodule.setup("fit")
    cuda = torch.device("cuda", torch.cuda.current_device())
    streams = []

    def prepare(batch):
        streams.append(torch.cuda.current_stream())
        return datamodule.decode_batch(batch, cuda)

    inner = datamodule.val_dataloader().loader  # the DataLoader; wrapped here for the GPU
    images, labels, bad = next(iter(DecodingAheadLoader(inner, prepare, cuda)))
    assert streams[0] != torch.cuda.default_stream()  # decoded on its own stream
    assert images.device == labels.device == cuda
    images, labels = datamodule.on_after_batch_transfer(
        datamodule.on_before_batch_transfer((images, labels, bad), 0), 0
    )
    assert images.shape == (12, 3, 227, 227) and images.dtype == torch.float32
    assert labels.tolist() == [0] * 12
    assert list(datamodule.bad_images.seen) == [str(damaged)]
