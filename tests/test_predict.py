"""`python -m alexnet_pl.predict`: top-5 names for images of any format; bad files named."""

import json
from pathlib import Path

import pytest
from PIL import Image

from alexnet_pl.data.demo_data import SHAPES
from alexnet_pl.predict import readable_class_names


@pytest.fixture
def run_predict(run_in_process):
    """The command, its arguments parsed from the command line, in the test process."""

    def run(*args: str, cwd: Path):
        return run_in_process(*args, cwd=cwd, module="alexnet_pl.predict")

    return run


@pytest.fixture
def odd_images(larger_image_root: Path, tmp_path: Path) -> Path:
    """One demo picture saved in the modes users throw at a model, and two bad files."""
    folder = tmp_path / "images"
    folder.mkdir()
    with Image.open(next((larger_image_root / "val" / "star").iterdir())) as image:
        image.convert("L").save(folder / "grey.jpg")
        image.convert("CMYK").save(folder / "cmyk.jpg")
        image.convert("RGBA").save(folder / "alpha.png")
        image.convert("P").save(folder / "palette.png")
        image.resize((900, 40)).save(folder / "wide.JPEG")
    (folder / "truncated.jpg").write_bytes((folder / "grey.jpg").read_bytes()[:300])
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_every_readable_image_gets_top5_names_and_bad_files_are_named(
    trained_run, odd_images, run_predict
):
    result = run_predict(
        str(trained_run / "checkpoints" / "last.ckpt"), str(odd_images), "--json", cwd=odd_images
    )
    assert result.returncode == 1  # some files failed, and the exit status says so
    report = json.loads(result.stdout)
    predicted = {Path(path).name for path in report["predictions"]}
    assert predicted == {"grey.jpg", "cmyk.jpg", "alpha.png", "palette.png", "wide.JPEG"}
    for top5 in report["predictions"].values():
        assert len(top5) == 5 and {guess["class"] for guess in top5} <= set(SHAPES)
        probabilities = [guess["probability"] for guess in top5]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0001
    assert {Path(path).name for path in report["failures"]} == {"truncated.jpg", "notes.txt"}
    assert "truncated.jpg" in result.stderr and "2 of 7 files could not be read" in result.stderr


def test_table_output_lists_ranked_classes(trained_run, odd_images, run_predict):
    result = run_predict(
        str(trained_run / "checkpoints" / "last.ckpt"), str(odd_images / "grey.jpg"), cwd=odd_images
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("grey.jpg")
    assert [line.split()[0] for line in lines[1:6]] == ["1.", "2.", "3.", "4.", "5."]


def test_imagenet_wordnet_ids_become_readable_names():
    wnids = [f"n{index:08d}" for index in range(1000)]
    names = readable_class_names(wnids)
    assert names[0] == "tench" and names[1] == "goldfish" and len(names) == 1000
    assert readable_class_names(["cat", "dog"]) == ["cat", "dog"]
