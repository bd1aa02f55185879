"""`python -m alexnet_pl.prepare imagenet` on tiny archives in the official and Kaggle formats."""

import csv
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from alexnet_pl.data.datamodule import list_classes
from alexnet_pl.prepare import DEVKIT, TRAIN_TAR, VAL_TAR, main, read_devkit_labels
from tests.conftest import small_datamodule

# ILSVRC2012_ID -> wnid. As in the real devkit, the ids do not follow the sorted wnids, so a
# reader that confused the two would put validation images in the wrong class.
CLASSES = {1: "n02119789", 2: "n01440764", 3: "n01443537"}
VAL_IDS = [3, 1, 2, 2, 3, 1]  # the ground truth: one ILSVRC2012_ID per validation image
TRAIN_PER_CLASS = 2


def jpeg(seed: int) -> bytes:
    """A small real JPEG; its size and colour depend on `seed`, so every file differs."""
    image = Image.new("RGB", (70 + seed % 13, 75 + seed % 7), (seed * 37 % 256, 90, 160))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def tar_of(files: dict[str, bytes], path: Path | None = None) -> bytes:
    """An uncompressed tar of `files`, as bytes (and written to `path` when given)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    if path is not None:
        path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def train_images() -> dict[str, dict[str, bytes]]:
    """wnid -> {file name: JPEG}: the contents of each per-class tar."""
    return {
        wnid: {f"{wnid}_{n}.JPEG": jpeg(10 * class_id + n) for n in range(TRAIN_PER_CLASS)}
        for class_id, wnid in CLASSES.items()
    }


def val_images(count: int = len(VAL_IDS)) -> dict[str, bytes]:
    return {f"ILSVRC2012_val_{i:08d}.JPEG": jpeg(100 + i) for i in range(1, count + 1)}


def expected_val_wnids() -> dict[str, str]:
    return {name: CLASSES[i] for name, i in zip(val_images(), VAL_IDS, strict=True)}


def write_devkit(path: Path, classes: dict[int, str], val_ids: list[int]) -> None:
    """ILSVRC2012_devkit_t12.tar.gz with meta.mat in the layout torchvision reads by position."""
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children"]
    fields += ["wordnet_height", "num_train_images"]
    # The real meta.mat also lists inner WordNet nodes (num_children > 0) after the 1000 leaves.
    rows = [(i, wnid, f"{wnid} words, more words", 0, []) for i, wnid in classes.items()]
    rows.append((len(classes) + 1, "n00001740", "entity", len(classes), list(classes)))
    synsets = np.zeros((len(rows), 1), dtype=[(name, "O") for name in fields])
    for row, (class_id, wnid, words, num_children, children) in enumerate(rows):
        children_array = np.array(children, dtype=np.float64).reshape(1, -1)
        synsets[row, 0] = (class_id, wnid, words, "a gloss", num_children, children_array, 0, 0)
    meta = io.BytesIO()
    scipy.io.savemat(meta, {"synsets": synsets})
    ground_truth = "".join(f"{i}\n" for i in val_ids).encode()
    with tarfile.open(path, mode="w:gz") as tar:
        for name, data in (
            ("ILSVRC2012_devkit_t12/data/meta.mat", meta.getvalue()),
            ("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", ground_truth),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def make_official(source: Path, val_as: str = "tar", devkit: bool = True) -> Path:
    """The three official files: train tar of per-class tars, flat val tar (or folder), devkit."""
    source.mkdir(parents=True, exist_ok=True)
    tar_of(
        {f"{wnid}.tar": tar_of(files) for wnid, files in train_images().items()}, source / TRAIN_TAR
    )
    if val_as == "tar":
        tar_of(val_images(), source / VAL_TAR)
    else:  # the validation tar already extracted by the user
        (source / "ILSVRC2012_img_val").mkdir()
        for name, data in val_images().items():
            (source / "ILSVRC2012_img_val" / name).write_bytes(data)
    if devkit:
        write_devkit(source / DEVKIT, CLASSES, VAL_IDS)
    return source


def make_kaggle(source: Path) -> Path:
    """The unzipped imagenet-object-localization-challenge download."""
    images = source / "ILSVRC" / "Data" / "CLS-LOC"
    for wnid, files in train_images().items():
        (images / "train" / wnid).mkdir(parents=True)
        for name, data in files.items():
            (images / "train" / wnid / name).write_bytes(data)
    (images / "val").mkdir()
    for name, data in val_images().items():
        (images / "val" / name).write_bytes(data)
    (source / "LOC_synset_mapping.txt").write_text(
        "".join(f"{wnid} {wnid} words, more words\n" for wnid in sorted(CLASSES.values()))
    )
    with open(source / "LOC_val_solution.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["ImageId", "PredictionString"])
        for name, wnid in expected_val_wnids().items():
            # A wnid and a box, repeated for every object in the image.
            writer.writerow([Path(name).stem, f"{wnid} 255 142 454 329 {wnid} 44 21 322 295 "])
    return source


def prepare(capsys, source: Path, dest: Path, *extra: str) -> tuple[int, str, str]:
    code = main(
        ["imagenet", "--source", str(source), "--dest", str(dest), "--workers", "1", *extra]
    )
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def files_under(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file, hidden ones included."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def expected_dest() -> dict[str, bytes]:
    expected = {
        f"train/{wnid}/{name}": data
        for wnid, files in train_images().items()
        for name, data in files.items()
    }
    wnids = expected_val_wnids()
    expected.update({f"val/{wnids[name]}/{name}": data for name, data in val_images().items()})
    return expected


@pytest.mark.parametrize("val_as", ["tar", "folder"])
def test_official_archives_become_class_folders_with_devkit_labels(tmp_path, capsys, val_as):
    source = make_official(tmp_path / "download", val_as=val_as)
    code, out, err = prepare(capsys, source, tmp_path / "imagenet")
    assert code == 0, err
    assert files_under(tmp_path / "imagenet") == expected_dest()
    assert list_classes(tmp_path / "imagenet" / "train") == sorted(CLASSES.values())
    assert list_classes(tmp_path / "imagenet" / "val") == sorted(CLASSES.values())
    assert "3 classes, 6 train and 6 val images" in out
    assert "warning: 3 classes, a complete ImageNet has 1,000" in err


def test_devkit_labels_agree_with_torchvision(tmp_path, monkeypatch):
    """The fake devkit has torchvision's layout, and our reading gives torchvision's labels."""
    from torchvision.datasets import imagenet

    write_devkit(tmp_path / DEVKIT, CLASSES, VAL_IDS)
    monkeypatch.setitem(imagenet.ARCHIVE_META, "devkit", (DEVKIT, None))  # no MD5: a fake
    imagenet.parse_devkit_archive(str(tmp_path))
    torchvision_wnids = imagenet.load_meta_file(str(tmp_path))[1]
    assert list(read_devkit_labels(tmp_path / DEVKIT).values()) == torchvision_wnids


def test_kaggle_layout_becomes_class_folders_with_csv_labels(tmp_path, capsys):
    code, out, err = prepare(capsys, make_kaggle(tmp_path / "kaggle"), tmp_path / "imagenet")
    assert code == 0, err
    assert "Kaggle" in out
    assert files_under(tmp_path / "imagenet") == expected_dest()


def test_second_run_writes_nothing(tmp_path, capsys):
    source, dest = make_official(tmp_path / "download"), tmp_path / "imagenet"
    prepare(capsys, source, dest)
    files = [dest / "train" / "n01440764" / "n01440764_0.JPEG", dest / "val" / "n02119789"]
    files[1] = next(files[1].iterdir())
    mtimes = [f.stat().st_mtime_ns for f in files]
    code, out, err = prepare(capsys, source, dest)
    assert code == 0, err
    assert "written" not in out
    assert out.count("all already in place") == len(CLASSES) + 1  # each train class, and val
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert files_under(dest) == expected_dest()


def test_interrupted_run_is_completed_on_the_next_run(tmp_path, capsys):
    source, dest = make_official(tmp_path / "download"), tmp_path / "imagenet"
    prepare(capsys, source, dest)
    # What a killed run leaves: a half-written image under its temporary name (the real one
    # missing), a class not started, and (after a power cut) an image cut short.
    half_done = dest / "train" / "n01440764" / "n01440764_1.JPEG"
    half_done.with_name(f".{half_done.name}.part").write_bytes(half_done.read_bytes()[:50])
    half_done.unlink()
    for image in (dest / "train" / "n02119789").iterdir():
        image.unlink()
    (dest / "train" / "n02119789").rmdir()
    cut_short = next((dest / "val" / "n01443537").iterdir())
    cut_short.write_bytes(cut_short.read_bytes()[:50])
    untouched = dest / "train" / "n01443537" / "n01443537_0.JPEG"
    untouched_mtime = untouched.stat().st_mtime_ns

    code, out, err = prepare(capsys, source, dest)
    assert code == 0, err
    assert files_under(dest) == expected_dest()  # also: no .part file is left
    assert untouched.stat().st_mtime_ns == untouched_mtime


def test_missing_devkit_is_named_in_the_error(tmp_path, capsys):
    source = make_official(tmp_path / "download", devkit=False)
    code, _, err = prepare(capsys, source, tmp_path / "imagenet")
    assert code == 1
    assert DEVKIT in err and "validation labels" in err
    assert not (tmp_path / "imagenet").exists()  # nothing is extracted before the check


def test_missing_source_folder_is_named_in_the_error(tmp_path, capsys):
    code, _, err = prepare(capsys, tmp_path / "no-such-folder", tmp_path / "imagenet")
    assert code == 1
    assert f"--source {tmp_path / 'no-such-folder'} is not a folder" in err


def test_source_with_neither_layout_says_what_it_found_and_what_is_expected(tmp_path, capsys):
    (tmp_path / "download").mkdir()
    (tmp_path / "download" / "imagenet.zip").write_bytes(b"")
    code, _, err = prepare(capsys, tmp_path / "download", tmp_path / "imagenet")
    assert code == 1
    assert "holds neither" in err and "imagenet.zip" in err
    assert TRAIN_TAR in err and "LOC_val_solution.csv" in err


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_train_tar_is_named_in_the_error(tmp_path, capsys, damage):
    source = make_official(tmp_path / "download")
    data = (source / TRAIN_TAR).read_bytes()
    damaged = b"not a tar at all" * 100 if damage == "garbage" else data[: len(data) // 2]
    (source / TRAIN_TAR).write_bytes(damaged)
    code, _, err = prepare(capsys, source, tmp_path / "imagenet")
    assert code == 1
    assert f"{source / TRAIN_TAR} is corrupt" in err


def test_corrupt_class_tar_inside_the_train_tar_is_named_in_the_error(tmp_path, capsys):
    source = make_official(tmp_path / "download")
    class_tars = {f"{wnid}.tar": tar_of(files) for wnid, files in train_images().items()}
    class_tars["n01440764.tar"] = b"not a tar at all" * 100
    tar_of(class_tars, source / TRAIN_TAR)
    code, _, err = prepare(capsys, source, tmp_path / "imagenet")
    assert code == 1
    assert f"n01440764.tar inside {source / TRAIN_TAR} is corrupt" in err


def test_val_classes_must_match_train_classes(tmp_path, capsys):
    source = make_official(tmp_path / "download")
    # A fourth class with validation images but no training tar.
    write_devkit(source / DEVKIT, {**CLASSES, 4: "n09999999"}, [*VAL_IDS[:-1], 4])
    code, _, err = prepare(capsys, source, tmp_path / "imagenet")
    assert code == 1
    assert "classes with val images but no train images: n09999999" in err


def test_expect_complete_fails_on_a_small_dataset(tmp_path, capsys):
    code, _, err = prepare(
        capsys, make_official(tmp_path / "download"), tmp_path / "imagenet", "--expect-complete"
    )
    assert code == 1
    assert "error: 6 train images, a complete ImageNet has 1,281,167" in err


def test_command_line_extracts_classes_in_worker_processes(tmp_path, run_in_process):
    # The command line in the test process; its two worker processes are real, forked from it.
    source, dest = make_official(tmp_path / "download"), tmp_path / "imagenet"
    result = run_in_process(
        *("imagenet", "--source", str(source), "--dest", str(dest), "--workers", "2"),
        cwd=tmp_path,
        module="alexnet_pl.prepare",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("train [") == len(CLASSES)
    assert files_under(dest) == expected_dest()


def test_prepared_folder_feeds_the_datamodule(tmp_path, capsys):
    dest = tmp_path / "imagenet"
    prepare(capsys, make_official(tmp_path / "download"), dest)
    datamodule = small_datamodule(dest)
    datamodule.setup("fit")
    images, labels, undecodable = next(iter(datamodule.train_dataloader()))
    assert undecodable == []  # the loader passes skipped files along for the report
    assert images.shape == (4, 3, 67, 67)
    assert datamodule.class_names == sorted(CLASSES.values())
    assert set(labels.tolist()) <= {0, 1, 2}
