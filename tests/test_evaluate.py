"""`python -m alexnet_pl.evaluate`: centre crop and the paper's 10-crop test, from a checkpoint."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alexnet_pl.evaluate import ShardSampler, format_weakest, per_class_rows


def run_evaluate(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    """The command in a subprocess: for DDP, whose launcher runs the command again per rank."""
    return subprocess.run(
        [sys.executable, "-m", "alexnet_pl.evaluate", "data.num_workers=0", *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def evaluate_in_process(run_in_process):
    """The same command in the test process (conftest.run_in_process): one process, no imports."""

    def run(*overrides: str, cwd: Path):
        return run_in_process(
            "data.num_workers=0", *overrides, cwd=cwd, module="alexnet_pl.evaluate"
        )

    return run


def read_per_class(path: Path) -> list[dict]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def weighted_top1(rows: list[dict], view: str) -> float:
    """The overall top-1 the per-class rows imply: each class weighted by its images."""
    hits = sum(
        float(row[f"{view}_top1"]) * int(row["images"]) for row in rows if row["images"] != "0"
    )
    return hits / sum(int(row["images"]) for row in rows)


def test_shards_cover_every_image_exactly_once():
    shards = [list(ShardSampler(19, rank, 4)) for rank in range(4)]
    assert sorted(i for shard in shards for i in shard) == list(range(19))


@pytest.mark.slow
def test_centre_crop_matches_what_training_logged_and_ten_crop_is_reported(
    trained_run, tmp_path, evaluate_in_process
):
    result = evaluate_in_process(
        f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={tmp_path}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    measured = json.loads((tmp_path / "metrics.json").read_text())
    logged = json.loads((trained_run / "metrics.json").read_text())
    assert measured["images"] == 20  # data.root came from the checkpoint: 10 classes x 2
    centre = measured["center_crop"]
    assert centre["top1"] == pytest.approx(logged["val/top1"], abs=1e-6)
    assert centre["top5"] == pytest.approx(logged["val/top5"], abs=1e-6)
    assert centre["loss"] == pytest.approx(logged["val/loss"], rel=1e-4)
    ten = measured["ten_crop"]
    assert 0 <= ten["top1"] <= 1 and ten["top1_error"] == pytest.approx(1 - ten["top1"])
    assert "ten_crop" in result.stdout and "20 images" in result.stdout

    # Per class: every class with its two images, both views, adding up to the totals.
    assert measured["per_class_csv"] == str(tmp_path / "per_class.csv")
    rows = read_per_class(tmp_path / "per_class.csv")
    assert list(rows[0]) == [
        "index",
        "class",
        "name",
        "images",
        "center_crop_top1",
        "ten_crop_top1",
    ]
    assert [row["class"] for row in rows] == sorted(row["class"] for row in rows)
    assert len(rows) == 10 and all(row["images"] == "2" for row in rows)
    for view in ("center_crop", "ten_crop"):
        assert weighted_top1(rows, view) == pytest.approx(measured[view]["top1"], abs=1e-6)
    # Printed after the table: ten classes, lowest ten-crop top-1 first (the log follows them).
    weakest = result.stdout.split("the 10 weakest classes (top-1)")[1].splitlines()[2:12]
    assert {line.split()[-1] for line in weakest} == {row["class"] for row in rows}
    printed = [float(line.split()[0].rstrip("%")) / 100 for line in weakest]
    assert printed == sorted(printed)
    assert printed[0] == pytest.approx(min(float(row["ten_crop_top1"]) for row in rows))


@pytest.mark.slow
def test_two_processes_count_every_image_once_and_skip_broken_ones(
    trained_run, larger_image_root, tmp_path
):
    root = Path(shutil.copytree(larger_image_root, tmp_path / "data"))
    next((root / "val" / "star").iterdir()).unlink()  # 19 images: a padding sampler would count 20
    (root / "val" / "star" / "truncated.JPEG").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 50)
    result = run_evaluate(
        f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}",
        f"data.root={root}",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        f"hydra.run.dir={tmp_path / 'eval'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert results["images"] == 19  # each readable image once
    assert results["skipped_images"] == 1  # the broken file is counted, not fatal
    rows = {row["class"]: row for row in read_per_class(tmp_path / "eval" / "per_class.csv")}
    assert rows["star"]["images"] == "1" and sum(int(r["images"]) for r in rows.values()) == 19
    assert weighted_top1(list(rows.values()), "ten_crop") == pytest.approx(
        results["ten_crop"]["top1"], abs=1e-6
    )  # both processes' per-class counts were summed, as the totals are
    assert "truncated.JPEG" in result.stdout + result.stderr


def test_validation_classes_that_differ_from_the_checkpoint_are_named(
    trained_run, larger_image_root, tmp_path, evaluate_in_process
):
    root = Path(shutil.copytree(larger_image_root, tmp_path / "data"))
    (root / "val" / "star").rename(root / "val" / "moon")
    result = evaluate_in_process(
        f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}",
        f"data.root={root}",
        f"hydra.run.dir={tmp_path / 'eval'}",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "only in the folder: ['moon']; only in the checkpoint: ['star']" in result.stderr


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_a_file_that_is_not_a_training_checkpoint_is_named(tmp_path, evaluate_in_process, content):
    bad = tmp_path / "model.ckpt"
    if content is None:
        torch.save({"state_dict": {}}, bad)  # a torch file, but not one of ours
    else:
        bad.write_bytes(content)
    result = evaluate_in_process(
        f"ckpt_path={bad}", f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path
    )
    assert result.returncode != 0
    assert f"checkpoint {bad}" in result.stderr


def test_per_class_rows_read_imagenet_names_and_the_weakest_come_first():
    wnids = [f"n{index:08d}" for index in range(1000)]
    per_class = {
        "images": [50] * 999 + [0],  # the last class has no validation images
        "center_crop": [0.9] * 1000,
        "ten_crop": [1 - index / 1000 for index in range(1000)],  # class 998 is the weakest
    }
    rows = per_class_rows(per_class, wnids)
    assert (rows[0]["class"], rows[0]["name"]) == ("n00000000", "tench")
    assert rows[999]["ten_crop_top1"] == ""  # no images: no accuracy
    lines = format_weakest(rows).splitlines()
    assert len(lines) == 2 + 10
    assert lines[2].split()[:3] == ["0.20%", "90.00%", "50"] and "(n00000998)" in lines[2]
    assert "(n00000989)" in lines[-1]
