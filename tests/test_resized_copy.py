"""`python -m alexnet_pl.prepare resized`: a copy with shorter sides of a fixed size."""

import shutil
from pathlib import Path

import pytest
from PIL import Image

from alexnet_pl.prepare import main
from alexnet_pl.resized_copy import ERRORS_FILE, image_files


@pytest.fixture
def source(image_root: Path, tmp_path: Path) -> Path:
    root = Path(shutil.copytree(image_root, tmp_path / "source"))
    star = root / "train" / "star"
    with Image.open(next(star.iterdir())) as image:
        image.save(star / "png_inside.JPEG", format="PNG")
        image.convert("CMYK").save(star / "cmyk.JPEG")
        image.resize((64, 48)).save(star / "already_48.JPEG")
    (star / "truncated.JPEG").write_bytes((star / "cmyk.JPEG").read_bytes()[:300])
    (star / "notes.txt").write_text("not an image")
    return root


def resized(source: Path, dest: Path, *extra: str) -> int:
    return main(["resized", "--source", str(source), "--dest", str(dest), "--size", "48", *extra])


def test_copy_has_every_decodable_image_at_the_shorter_side_as_rgb_jpeg(source, tmp_path, capsys):
    dest = tmp_path / "copy"
    assert resized(source, dest, "--workers", "2") == 1  # one file could not be decoded
    out, err = capsys.readouterr()
    expected = [name for name in image_files(source) if name.name != "truncated.JPEG"]
    assert image_files(dest) == expected
    for name in expected:
        with Image.open(source / name) as original, Image.open(dest / name) as copy:
            assert copy.format == "JPEG" and copy.mode == "RGB"
            assert min(copy.size) == 48
            # The aspect ratio is kept to the pixel.
            long_side = max(original.size) * 48 / min(original.size)
            assert abs(max(copy.size) - long_side) <= 1
    assert "1 files could not be decoded" in out and "resizing to 48 px" in err
    assert "truncated.JPEG" in (dest / ERRORS_FILE).read_text()


def test_image_already_at_the_size_is_copied_byte_for_byte(source, tmp_path, capsys):
    dest = tmp_path / "copy"
    resized(source, dest)
    name = Path("train/star/already_48.JPEG")
    assert (dest / name).read_bytes() == (source / name).read_bytes()


def test_second_run_resumes_and_writes_only_what_is_missing(source, tmp_path, capsys):
    dest = tmp_path / "copy"
    resized(source, dest)
    (dest / "train" / "star" / "cmyk.JPEG").unlink()  # as if the first run had stopped there
    capsys.readouterr()
    resized(source, dest)
    total = len(image_files(source)) - 1  # the truncated file is never in the copy
    assert f"1 images written, {total - 1} already there" in capsys.readouterr().out


def test_finishing_a_copy_with_other_settings_is_refused(source, tmp_path, capsys):
    dest = tmp_path / "copy"
    resized(source, dest)
    assert main(["resized", "--source", str(source), "--dest", str(dest)]) == 1
    assert "made with {'shorter_side': 48, 'quality': 90}" in capsys.readouterr().err


def test_copy_inside_the_source_is_refused(source, capsys):
    assert resized(source, source / "inside") == 1
    assert "must be outside --source" in capsys.readouterr().err


def test_damaged_jpeg_already_at_the_size_is_listed_not_copied(source, tmp_path, capsys):
    star = source / "train" / "star"
    (star / "cut_48.JPEG").write_bytes((star / "already_48.JPEG").read_bytes()[:300])
    dest = tmp_path / "copy"
    resized(source, dest)
    assert not (dest / "train" / "star" / "cut_48.JPEG").exists()
    assert "cut_48.JPEG" in (dest / ERRORS_FILE).read_text()
