"""Bad files in real data: the odd ones load, the broken ones are skipped, counted and named."""

import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from alexnet_pl.data.bad_images import BadImage
from alexnet_pl.data.image_folder import ImageFolderDataset, collate_skipping_bad
from alexnet_pl.data.preprocessing import Preprocessing
from alexnet_pl.data.transforms import ResizeCenterCrop
from tests.conftest import SMALL_RUN

BROKEN = {"truncated.JPEG", "zero_bytes.JPEG", "broken_link.JPEG"}
ODD_BUT_FINE = {"png_inside.JPEG", "cmyk.JPEG", "grey.JPEG", "tiny.JPEG"}


@pytest.fixture
def messy_root(image_root: Path, tmp_path: Path) -> Path:
    """The small shapes folder plus the files real ImageNet copies and user folders contain."""
    root = Path(shutil.copytree(image_root, tmp_path / "messy"))
    folder = root / "train" / "star"
    with Image.open(next(folder.iterdir())) as image:
        image.save(folder / "png_inside.JPEG", format="PNG")  # ImageNet has a few of these
        image.convert("CMYK").save(folder / "cmyk.JPEG")
        image.convert("L").save(folder / "grey.JPEG")
        image.resize((10, 8)).save(folder / "tiny.JPEG")  # far smaller than the crop
        image.save(folder / "whole.JPEG")
    (folder / "truncated.JPEG").write_bytes((folder / "whole.JPEG").read_bytes()[:400])
    (folder / "zero_bytes.JPEG").write_bytes(b"")
    os.symlink(tmp_path / "gone.JPEG", folder / "broken_link.JPEG")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "notes.txt").write_text("not an image")
    for split in ("train", "val"):
        (root / split / "zz_empty_class").mkdir()
    return root


@pytest.mark.parametrize("decode", ["cpu", "pil"])
def test_odd_files_load_and_broken_ones_become_bad_images(messy_root, decode):
    dataset = ImageFolderDataset(
        str(messy_root / "train"), ResizeCenterCrop(Preprocessing(72, 67)), decode
    )
    results = {Path(dataset.index.path(i)).name: dataset[i] for i in range(len(dataset))}
    assert {name for name, item in results.items() if isinstance(item, BadImage)} == BROKEN
    for name in ODD_BUT_FINE:
        image, label = results[name]
        assert image.shape == (3, 67, 67) and dataset.classes[label] == "star"
        assert image.dtype == torch.uint8
    assert ".DS_Store" not in results and "notes.txt" not in results  # not images by extension


def test_batches_drop_bad_images_and_carry_them_along():
    good = (torch.zeros(3, 4, 4), 1)
    images, labels, bad = collate_skipping_bad([good, BadImage("x.JPEG", "OSError"), good])
    assert images.shape == (2, 3, 4, 4) and labels.tolist() == [1, 1]
    assert bad == [BadImage("x.JPEG", "OSError")]
    assert collate_skipping_bad([BadImage("x.JPEG", "OSError")])[:2] == (None, None)


@pytest.mark.slow
def test_training_skips_broken_files_in_a_worker_and_reports_each_once(
    messy_root, tmp_path, run_in_process
):
    # The worker is a real process, forked from the one that runs the command (here, pytest's).
    run_dir = tmp_path / "run"
    result = run_in_process(
        *SMALL_RUN,
        "model.num_classes=11",  # the ten shapes and the empty class
        f"data.root={messy_root}",
        "data.num_workers=1",  # a real worker process decodes the files
        # Every file read in both epochs, whatever the seed draws: 28 files in batches of 8 with
        # drop_last=true would leave 4 unread each epoch, a broken one among them now and then.
        "data.drop_last=false",
        "seed=0",
        "trainer.max_epochs=2",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    lines = (run_dir / "bad_files.tsv").read_text().splitlines()
    assert {Path(line.split("\t")[0]).name for line in lines} == BROKEN
    assert len(lines) == 3  # two epochs, but each file reported once
    log = (run_dir / "train.log").read_text()
    assert "skipped an image that cannot be decoded" in log
    assert "3 images could not be decoded and were skipped" in log
    assert "1 class folders hold no images: ['zz_empty_class']" in log


def test_strict_mode_stops_at_the_first_broken_file_with_its_path(
    messy_root, tmp_path, run_in_process
):
    result = run_in_process(
        *SMALL_RUN,
        "model.num_classes=11",
        f"data.root={messy_root}",
        "data.strict=true",
        "data.batch_size=64",  # every training file in the first batch ...
        "data.drop_last=false",  # ... which is then not dropped for being short
        "trainer.fast_dev_run=true",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "BadImageError: cannot decode" in result.stderr
    assert any(f"star/{name}" in result.stderr for name in BROKEN)


@pytest.fixture
def run_scan(run_in_process):
    """`python -m alexnet_pl.scan <root> --workers 2 ...` in the test process: its two decoding
    processes are real, forked from this one."""

    def run(root: Path, *args: str, cwd: Path):
        return run_in_process(str(root), "--workers", "2", *args, cwd=cwd, module="alexnet_pl.scan")

    return run


def files_under(root: Path) -> set[Path]:
    return {path for path in root.rglob("*") if not path.is_dir() or path.is_symlink()}


def test_scan_lists_every_broken_file_and_reports_outside_a_read_only_dataset(
    messy_root, tmp_path, run_scan
):
    """A shared ImageNet is read-only: the report goes to the current folder. (As root, chmod does
    not stop writes, so the test also checks that nothing appeared in the data.)"""
    before = files_under(messy_root)
    folders = [messy_root, *(path for path in messy_root.rglob("*") if path.is_dir())]
    for folder in folders:
        folder.chmod(0o555)
    work = tmp_path / "work"
    work.mkdir()
    try:
        result = run_scan(messy_root, cwd=work)
    finally:
        for folder in folders:
            folder.chmod(0o755)
    assert result.returncode == 1
    assert {Path(line.split("\t")[0]).name for line in result.stdout.splitlines()} == BROKEN
    lines = (work / "bad_files.tsv").read_text().splitlines()
    assert {Path(line.split("\t")[0]).name for line in lines} == BROKEN
    assert files_under(messy_root) == before  # nothing written into the data
    assert "cannot be decoded (listed above and in bad_files.tsv)" in result.stderr


def test_scan_keeps_the_printed_list_when_the_report_cannot_be_written(
    messy_root, tmp_path, run_scan
):
    (tmp_path / "a_file").write_text("")  # a report "inside" a file fails for root too
    unwritable = tmp_path / "a_file" / "bad.tsv"
    result = run_scan(messy_root, "--report", str(unwritable), cwd=tmp_path)
    assert result.returncode == 1  # the files are still bad
    assert {Path(line.split("\t")[0]).name for line in result.stdout.splitlines()} == BROKEN
    assert f"The report could not be written to {unwritable}" in result.stderr
