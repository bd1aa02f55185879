"""The three decoders (pil, cpu, gpu) give the same batches; the compact index lists what
ImageFolder lists."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from alexnet_pl.data.decoding import EncodedBatch, jpeg_components, read_encoded
from alexnet_pl.data.image_folder import ImageFolderDataset, ImageIndex
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
    assert torch.equal(views["cpu"][0], views["gpu"][0])  # the same decoder, here on a CPU


def test_gpu_decode_leaves_bytes_to_the_device_except_for_files_nvjpeg_gets_wrong(
    colour_coded_root,
):
    dataset = ImageFolderDataset(str(colour_coded_root / "train"), None, decode="gpu")
    items = {Path(dataset.index.path(i)).name: dataset[i][0] for i in range(len(dataset))}
    assert items["0.JPEG"].data.dim() == 1  # raw bytes, decoded after the transfer
    assert items["cmyk.JPEG"].data.shape == (3, 80, 90)  # decoded in the worker
    assert items["png_inside.JPEG"].data.shape == (3, 80, 90)


def test_a_damaged_jpeg_in_a_gpu_batch_is_reported_and_its_label_dropped(image_root, tmp_path):
    root = Path(shutil.copytree(image_root, tmp_path / "copy"))
    star = root / "val" / "star"
    damaged = star / "damaged.JPEG"  # passes the worker (it only reads), fails to decode
    damaged.write_bytes(next(star.iterdir()).read_bytes()[:400])
    datamodule = small_datamodule(root, batch_size=11, decode="gpu")
    datamodule.setup("fit")
    batch = next(iter(datamodule.val_dataloader()))
    assert isinstance(batch[0], EncodedBatch) and len(batch[0]) == 11
    images, labels = through_the_hooks(datamodule, batch)
    good = [i for i in range(11) if datamodule.val_set.index.path(i) != str(damaged)]
    assert images.shape[0] == 10
    assert labels.tolist() == datamodule.val_set.targets[good].tolist()
    assert list(datamodule.bad_images.seen) == [str(damaged)]


def test_jpeg_header_tells_grey_colour_and_cmyk_apart(tmp_path):
    for mode, components in (("L", 1), ("RGB", 3), ("CMYK", 4)):
        path = tmp_path / f"{mode}.JPEG"
        Image.new(mode, (16, 16)).save(path)
        assert jpeg_components(read_encoded(str(path))) == components


def test_unknown_decoder_is_rejected_with_the_choices(image_root):
    with pytest.raises(ValueError, match="data.decode=nvjpeg .* pil, cpu, gpu"):
        ImageFolderDataset(str(image_root / "val"), ResizeCenterCrop(72, 67), decode="nvjpeg")
