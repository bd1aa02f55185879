import shutil
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from alexnet_pl.data.datamodule import per_device_batch_size
from alexnet_pl.data.demo_data import SHAPES, generate_demo_dataset
from tests.conftest import small_datamodule


def copy_of(image_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(image_root, tmp_path / "copy"))


def test_labels_follow_the_sorted_class_folders(image_root):
    datamodule = small_datamodule(image_root)
    datamodule.setup("fit")
    assert datamodule.class_names == sorted(SHAPES)
    index = datamodule.val_set.index
    for i, label in enumerate(index.labels):
        assert Path(index.path(i)).parent.name == datamodule.class_names[label]


def test_loaders_give_uint8_batches_of_the_per_device_size_made_float_on_the_device(image_root):
    datamodule = small_datamodule(image_root, batch_size=4)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    images, labels, undecodable = batch
    assert undecodable == []  # the loader passes skipped files along for the report
    assert images.shape == (4, 3, 67, 67) and images.dtype == torch.uint8
    # Stacked in the decoder's height-width-channel memory: a plain copy, no transpose.
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert labels.dtype == torch.int64 and labels.max() < len(SHAPES)
    images, labels = datamodule.on_after_batch_transfer(
        datamodule.on_before_batch_transfer(batch, 0), 0
    )
    assert images.dtype == torch.float32
    assert images.min() >= -1.0 - 1e-6 and images.max() <= 1.0 + 1e-6


def test_global_batch_is_split_over_processes():
    assert per_device_batch_size(128, 1) == 128
    assert per_device_batch_size(128, 4) == 32
    assert per_device_batch_size(256, 8) == 32


@pytest.mark.parametrize(("batch", "world"), [(128, 3), (2, 4)])
def test_global_batch_that_does_not_divide_is_rejected(batch, world):
    with pytest.raises(ValueError, match=f"data.batch_size={batch} .* over {world} processes"):
        per_device_batch_size(batch, world)


def test_val_classes_must_match_train_classes(image_root, tmp_path):
    root = copy_of(image_root, tmp_path)
    shutil.rmtree(root / "val" / "star")
    (root / "val" / "zebra").mkdir()
    with pytest.raises(ValueError, match=r"Only in train/: \['star'\]; only in val/: \['zebra'\]"):
        small_datamodule(root).setup("fit")


def test_missing_root_names_the_expected_layout_and_the_demo(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no train/ folder.*experiment=demo"):
        small_datamodule(tmp_path / "nowhere").setup("fit")


def test_root_without_val_folder_is_rejected(image_root, tmp_path):
    root = copy_of(image_root, tmp_path)
    shutil.rmtree(root / "val")
    with pytest.raises(FileNotFoundError, match="has no val/ folder"):
        small_datamodule(root).setup("fit")


def test_class_names_are_kept_in_the_checkpoint_state(image_root):
    datamodule = small_datamodule(image_root)
    datamodule.setup("fit")
    assert datamodule.state_dict() == {"class_names": sorted(SHAPES)}
    with pytest.raises(ValueError, match=r"only in the checkpoint: \['unicorn'\]"):
        datamodule.load_state_dict({"class_names": [*sorted(SHAPES)[:-1], "unicorn"]})


def test_demo_dataset_is_deterministic_and_made_of_real_jpegs(tmp_path):
    recipe = dict(train_per_class=2, val_per_class=1, min_side=60, max_side=120, seed=3)
    generate_demo_dataset(tmp_path / "a", **recipe)
    generate_demo_dataset(tmp_path / "b", **recipe)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.JPEG"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.JPEG"))
    assert len(files_a) == len(SHAPES) * 3 and files_a == files_b
    for name in files_a:
        data = (tmp_path / "a" / name).read_bytes()
        assert data[:2] == b"\xff\xd8"  # JPEG start-of-image marker
        assert data == (tmp_path / "b" / name).read_bytes()


def test_demo_images_vary_in_size_and_colour(image_root):
    from PIL import Image

    sizes, corners = set(), set()
    for path in (image_root / "train").rglob("*.JPEG"):
        with Image.open(path) as image:
            sizes.add(image.size)
            corners.add(image.convert("RGB").getpixel((0, 0)))
    assert len(sizes) > 10  # many sizes and aspect ratios, not one fixed shape
    assert len(corners) > 10  # backgrounds differ: the colour does not give the class away


def test_demo_dataset_is_generated_once_and_reused(tmp_path):
    root = tmp_path / "demo"
    generate_demo_dataset(root, train_per_class=1, val_per_class=1, min_side=60, max_side=80)
    some_file = next(root.rglob("*.JPEG"))
    stamp = some_file.stat().st_mtime_ns
    generate_demo_dataset(root, train_per_class=1, val_per_class=1, min_side=60, max_side=80)
    assert some_file.stat().st_mtime_ns == stamp


def test_demo_never_overwrites_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not a generated demo dataset"):
        generate_demo_dataset(tmp_path / "mine", 1, 1, 60, 80)
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "precious"


def test_demo_config_builds_the_demo_datamodule(compose_config, tmp_path):
    cfg = compose_config("experiment=demo", f"data.root={tmp_path / 'demo'}")
    datamodule = instantiate(cfg.data)
    assert type(datamodule).__name__ == "DemoDataModule"
    assert datamodule.batch_size == cfg.data.batch_size
