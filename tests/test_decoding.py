"""The three decoders (pil, cpu, gpu) give the same batches; the compact index lists what
ImageFolder lists."""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.transforms.v2 import Lambda

from alexnet_pl.data.bad_images import BadImageError
from alexnet_pl.data.decoding import decode_to_crops, jpeg_components, jpeg_header, read_encoded
from alexnet_pl.data.image_folder import ImageFolderDataset, ImageIndex, collate_skipping_bad
from alexnet_pl.data.preprocessing import Preprocessing
from alexnet_pl.data.transforms import ResizeCenterCrop
from tests.conftest import small_datamodule

DECODERS = ["pil", "cpu", "gpu"]


@pytest.fixture(scope="module")
def colour_coded_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Class k is a flat colour with red = 40 + 50 k, so a batch shows whether labels are right.
    Images of varied sizes; one class also holds a PNG and a CMYK JPEG (decoded on the CPU)."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        for k in range(4):
            folder = root / split / f"class_{k}"
            folder.mkdir(parents=True)
            for i in range(count):
                size = (int(rng.integers(70, 140)), int(rng.integers(70, 140)))
                image = Image.new("RGB", size, (40 + 50 * k, 120, 200))
                image.save(folder / f"{i}.JPEG", quality=95)
    odd = root / "train" / "class_2"
    Image.new("RGB", (90, 80), (140, 120, 200)).save(odd / "png_inside.JPEG", format="PNG")
    Image.new("RGB", (90, 80), (140, 120, 200)).convert("CMYK").save(odd / "cmyk.JPEG")
    return root


def through_the_hooks(datamodule, batch):
    return datamodule.on_after_batch_transfer(datamodule.on_before_batch_transfer(batch, 0), 0)


def red_of(images: torch.Tensor) -> torch.Tensor:
    """Mean red of each image as 0..255, from a batch normalised with mean 0.5, std 0.5."""
    return (images[:, 0].mean(dim=(1, 2)) * 0.5 + 0.5) * 255


def test_compact_index_lists_the_files_imagefolder_lists_in_its_order(colour_coded_root):
    folder = ImageFolder(str(colour_coded_root / "train"))
    index = ImageIndex.scan(str(colour_coded_root / "train"))
    assert index.classes == folder.classes
    assert [(index.path(i), int(index.labels[i])) for i in range(len(index))] == folder.samples


@pytest.mark.parametrize("decode", DECODERS)
def test_every_decoder_gives_normalised_float_batches_with_the_right_labels(
    colour_coded_root, decode
):
    datamodule = small_datamodule(colour_coded_root, batch_size=18, decode=decode)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))  # all 18 train images, shuffled
    images, labels = through_the_hooks(datamodule, batch)
    assert images.shape == (18, 3, 67, 67) and images.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert images.min() >= -1 - 1e-5 and images.max() <= 1 + 1e-5
    # Training adds PCA lighting (a shift of a few levels), JPEG a level or two.
    assert red_of(images).sub(40 + 50 * labels).abs().max() < 12


def test_cpu_and_gpu_decoders_see_the_pixels_pil_sees(image_root):
    """Validation views (no randomness) of the shapes folder, decoded three ways."""
    views = {}
    for decode in DECODERS:
        datamodule = small_datamodule(image_root, batch_size=10, decode=decode)
        datamodule.setup("fit")
        images, labels = through_the_hooks(datamodule, next(iter(datamodule.val_dataloader())))
        views[decode] = (images, labels)
    for decode in ("cpu", "gpu"):
        assert torch.equal(views[decode][1], views["pil"][1])
        # PIL and torchvision both use libjpeg-turbo; at most rounding in chroma upsampling.
        difference = (views[decode][0] - views["pil"][0]).abs().mean() * 0.5 * 255
        assert difference < 1.0
    # The same decoder here on a CPU; the crops come from batched_crops, which computes the resize
    # in float where torchvision rounds between its two passes: within a level.
    difference = (views["cpu"][0] - views["gpu"][0]).abs() * 0.5 * 255
    assert difference.mean() < 0.3 and difference.max() < 1.5


def test_gpu_decode_leaves_bytes_to_the_device_except_for_files_nvjpeg_gets_wrong(
    colour_coded_root,
):
    view = ResizeCenterCrop(Preprocessing(72, 67))
    train = colour_coded_root / "train"
    dataset = ImageFolderDataset(str(train), view, decode="gpu")
    items = {dataset.index.path(i): dataset[i][0] for i in range(len(dataset))}
    jpeg = items[str(train / "class_0" / "0.JPEG")]
    assert jpeg.data.dim() == 1  # raw bytes, decoded in the main process ...
    height, width = Image.open(train / "class_0" / "0.JPEG").size[::-1]
    assert jpeg.size == (height, width) and jpeg.window == view.window(height, width)  # ... here
    for odd in ("cmyk.JPEG", "png_inside.JPEG"):  # decoded and cropped in the worker
        item = items[str(train / "class_2" / odd)]
        assert item.data.shape == (3, 67, 67) and item.window is None


def test_gpu_decode_needs_a_view_that_can_place_its_crop_before_decoding(colour_coded_root):
    with pytest.raises(ValueError, match="decode=gpu needs a view .* Lambda has none"):
        ImageFolderDataset(str(colour_coded_root / "train"), Lambda(lambda x: x), decode="gpu")


def test_a_gpu_batch_travels_as_one_buffer_and_keeps_its_order(colour_coded_root):
    view = ResizeCenterCrop(Preprocessing(72, 67))
    dataset = ImageFolderDataset(str(colour_coded_root / "train"), view, decode="gpu")
    samples = [dataset[i] for i in range(len(dataset))]  # class_2 holds the PNG and the CMYK
    encoded, labels, bad = collate_skipping_bad(samples)
    assert len(encoded) == len(samples) and bad == []
    files = [read_encoded(dataset.index.path(i)) for i in encoded.jpeg_at.tolist()]
    assert encoded.data.numel() == sum(len(f) for f in files)  # every JPEG's bytes, one tensor
    assert all(np.array_equal(a.numpy(), b) for a, b in zip(encoded.jpegs(), files, strict=True))
    assert len(encoded.ready) == 2 and encoded.ready.shape[1:] == (3, 67, 67)
    crops, kept, undecodable = decode_to_crops(encoded, torch.device("cpu"))
    assert kept == list(range(len(samples))) and undecodable == []
    # Every image keeps its place: its flat colour says its class (red = 40 + 50 k).
    red = crops[:, 0].float().mean(dim=(1, 2))
    assert red.sub(40 + 50 * labels).abs().max() < 3


@pytest.fixture(scope="module")
def root_with_a_damaged_jpeg(image_root, tmp_path_factory) -> tuple[Path, Path]:
    root = Path(shutil.copytree(image_root, tmp_path_factory.mktemp("damaged") / "copy"))
    star = root / "val" / "star"
    damaged = star / "damaged.JPEG"  # passes the worker (it only reads), fails to decode
    damaged.write_bytes(next(star.iterdir()).read_bytes()[:400])
    return root, damaged


def test_a_damaged_jpeg_in_a_gpu_batch_is_reported_and_its_label_dropped(
    root_with_a_damaged_jpeg,
):
    root, damaged = root_with_a_damaged_jpeg
    datamodule = small_datamodule(root, batch_size=11, decode="gpu")
    datamodule.setup("fit")
    batch = next(iter(datamodule.val_dataloader()))  # decoded by the thread, all 11 files
    images, labels = through_the_hooks(datamodule, batch)
    good = [i for i in range(11) if datamodule.val_set.index.path(i) != str(damaged)]
    assert images.shape[0] == 10
    assert labels.tolist() == datamodule.val_set.targets[good].tolist()
    assert list(datamodule.bad_images.seen) == [str(damaged)]


def test_strict_mode_stops_a_gpu_batch_at_the_damaged_jpeg_with_its_path(
    root_with_a_damaged_jpeg,
):
    root, damaged = root_with_a_damaged_jpeg
    datamodule = small_datamodule(root, batch_size=11, decode="gpu")
    datamodule.strict = True
    datamodule.setup("fit")
    batches = iter(datamodule.val_dataloader())
    with pytest.raises(BadImageError, match=f"cannot decode {re.escape(str(damaged))}.*strict"):
        next(batches)  # raised in the decoding thread, re-raised here
    assert not batches.thread.is_alive()


def test_jpeg_header_tells_size_and_grey_colour_and_cmyk_apart(tmp_path):
    for mode, components in (("L", 1), ("RGB", 3), ("CMYK", 4)):
        path = tmp_path / f"{mode}.JPEG"
        Image.new(mode, (37, 16)).save(path)
        assert jpeg_components(read_encoded(str(path))) == components
        assert jpeg_header(read_encoded(str(path))) == (16, 37, components)
    progressive = tmp_path / "progressive.JPEG"
    Image.new("RGB", (300, 200)).save(progressive, progressive=True)
    assert jpeg_header(read_encoded(str(progressive))) == (200, 300, 3)
    (tmp_path / "text.JPEG").write_bytes(b"not an image")
    assert jpeg_header(read_encoded(str(tmp_path / "text.JPEG"))) is None


def test_unknown_decoder_is_rejected_with_the_choices(image_root):
    with pytest.raises(ValueError, match="data.decode=nvjpeg .* pil, cpu, gpu"):
        ImageFolderDataset(
            str(image_root / "val"), ResizeCenterCrop(Preprocessing(72, 67)), decode="nvjpeg"
        )
