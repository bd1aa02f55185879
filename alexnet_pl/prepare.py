"""Turns a dataset as it is downloaded into the folder the DataModule reads.

    python -m alexnet_pl.prepare imagenet --source DIR --dest DIR [--workers N] [--expect-complete]
    python -m alexnet_pl.prepare resized --source DIR --dest DIR [--size 256] [--quality 90]

The second makes a copy with shorter sides of 256 px, faster to train on (resized_copy.py).

`--source` holds either the official ILSVRC2012 files (ILSVRC2012_img_train.tar,
ILSVRC2012_img_val.tar or a folder of its images, ILSVRC2012_devkit_t12.tar.gz) or the unzipped
Kaggle download (imagenet-object-localization-challenge). `--dest` receives
dest/train/<wnid>/*.JPEG and dest/val/<wnid>/*.JPEG.

Safe to stop and run again: each image is written under a temporary name and renamed into place,
and an image already in place with the right size is not written again.
"""

import argparse
import csv
import io
import os
import shutil
import sys
import tarfile
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import scipy.io

from alexnet_pl.errors import reported_as_user_errors
from alexnet_pl.resized_copy import ResizedCopyError, describe, make_resized_copy

# The official file names (the same as torchvision.datasets.imagenet.ARCHIVE_META).
TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
VAL_FOLDERS = ("ILSVRC2012_img_val", "val")  # where an already-extracted VAL_TAR may lie
DEVKIT_META = "ILSVRC2012_devkit_t12/data/meta.mat"
DEVKIT_VAL_LABELS = "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"
DOWNLOAD_PAGE = "https://image-net.org/challenges/LSVRC/2012/2012-downloads.php"

KAGGLE_CLASSES = "LOC_synset_mapping.txt"
KAGGLE_VAL_LABELS = "LOC_val_solution.csv"
KAGGLE_TRAIN = Path("ILSVRC/Data/CLS-LOC/train")
KAGGLE_VAL = Path("ILSVRC/Data/CLS-LOC/val")

COMPLETE_CLASSES, COMPLETE_TRAIN, COMPLETE_VAL = 1000, 1_281_167, 50_000
COPY_CHUNK = 1 << 20
LIST_AT_MOST = 10  # class names quoted in one message


class PrepareError(Exception):
    """Something in --source or --dest that the user has to fix; the message says what."""


def _names(items: Iterable[str]) -> str:
    items = list(items)
    shown = ", ".join(items[:LIST_AT_MOST])
    more = len(items) - LIST_AT_MOST
    return f"{shown} (and {more} more)" if more > 0 else shown


# ---- writing one image ----------------------------------------------------------------------


def place_file(
    target: Path, size: int, open_source: Callable[[], AbstractContextManager[BinaryIO]]
) -> bool:
    """Copies one image to `target` unless it is already there; True if it was written.

    The size check also catches a file cut short by a power cut after its rename, which the
    temporary name alone cannot prevent without an fsync per image (too slow for 1.3M files).
    A leftover temporary file from an interrupted run is simply overwritten.
    """
    if target.is_file() and target.stat().st_size == size:
        return False
    # A hidden name without the .JPEG suffix: ImageFolder never reads a half-written image.
    partial_file = target.with_name(f".{target.name}.part")
    with open_source() as source, open(partial_file, "wb") as out:
        shutil.copyfileobj(source, out, COPY_CHUNK)
    os.replace(partial_file, target)
    return True


def _member_name(member: tarfile.TarInfo) -> str:
    # Only the base name: a member called ../x must not land outside the class folder.
    return PurePosixPath(member.name).name


def extract_class_tar(archive: Path, header_offset: int, class_dir: Path) -> tuple[int, int]:
    """Extracts one per-class tar (starting at `header_offset` in the train tar) to `class_dir`.

    Runs in a worker process: it opens the big tar itself and jumps straight to its class, so no
    worker reads the 138 GB before it. Returns (images, images written).
    """
    try:
        with open(archive, "rb") as raw:
            raw.seek(header_offset)
            with tarfile.open(fileobj=raw, mode="r:") as train_tar:
                class_tar_info = train_tar.next()
                class_file = train_tar.extractfile(class_tar_info)
                with tarfile.open(fileobj=class_file, mode="r:") as class_tar:
                    members = [m for m in class_tar if m.isfile()]
                    class_dir.mkdir(parents=True, exist_ok=True)
                    written = sum(
                        place_file(
                            class_dir / _member_name(m), m.size, partial(class_tar.extractfile, m)
                        )
                        for m in members
                    )
    except (tarfile.TarError, EOFError) as error:
        raise PrepareError(
            f"{class_dir.name}.tar inside {archive} is corrupt or truncated ({error}); "
            f"download {archive.name} again"
        ) from error
    return len(members), written


def copy_class_folder(source_dir: Path, class_dir: Path) -> tuple[int, int]:
    """Copies the images of one class folder (the Kaggle layout). Returns (images, written)."""
    images = sorted(p for p in source_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    class_dir.mkdir(parents=True, exist_ok=True)
    written = sum(
        place_file(class_dir / p.name, p.stat().st_size, partial(open, p, "rb")) for p in images
    )
    return len(images), written


def run_class_jobs(jobs: dict[str, Callable[[], tuple[int, int]]], workers: int) -> None:
    """Runs one job per train class, `workers` at a time, printing a line as each finishes."""

    def report(done: int, wnid: str, result: tuple[int, int]) -> None:
        images, written = result
        state = f"{written:,} written" if written else "all already in place"
        print(f"train [{done}/{len(jobs)}] {wnid}: {images:,} images, {state}", flush=True)

    if workers == 1:  # in this process: simpler to debug, and no start-up cost for small sets
        for done, (wnid, job) in enumerate(jobs.items(), 1):
            report(done, wnid, job())
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending = {pool.submit(job): wnid for wnid, job in jobs.items()}
        done_count = 0
        while pending:
            finished, _ = wait(pending, return_when=FIRST_EXCEPTION)
            for future in finished:
                wnid = pending.pop(future)
                if future.exception() is not None:
                    pool.shutdown(cancel_futures=True)  # no point extracting the rest
                    raise future.exception()
                done_count += 1
                report(done_count, wnid, future.result())


def place_val_images(
    images: Iterable[tuple[str, int, Callable[[], AbstractContextManager[BinaryIO]]]],
    labels: dict[str, str],
    val_dir: Path,
    label_source: str,
) -> None:
    """Puts each (file name, size, opener) into val_dir/<its wnid>/, the wnid from `labels`."""
    images_seen = written = 0
    for name, size, open_source in images:
        wnid = labels.get(PurePosixPath(name).stem)
        if wnid is None:
            raise PrepareError(f"validation image {name} has no label in {label_source}")
        (val_dir / wnid).mkdir(parents=True, exist_ok=True)
        written += place_file(val_dir / wnid / name, size, open_source)
        images_seen += 1
    state = f"{written:,} written" if written else "all already in place"
    print(f"val: {images_seen:,} images, {state}", flush=True)


# ---- the official ILSVRC2012 files ----------------------------------------------------------


def read_devkit_labels(devkit: Path) -> dict[str, str]:
    """Validation image id (ILSVRC2012_val_00000001) -> wnid, from the devkit.

    The same reading as torchvision's parse_devkit_archive, whose helpers are not importable and
    which insists on the official MD5 and writes meta.bin into the source folder. The ground
    truth numbers are ILSVRC2012_IDs from meta.mat, not positions in the sorted wnids.
    """
    try:
        with tarfile.open(devkit) as tar:
            meta = io.BytesIO(tar.extractfile(DEVKIT_META).read())
            ground_truth = tar.extractfile(DEVKIT_VAL_LABELS).read().decode().split()
    except KeyError as error:
        raise PrepareError(
            f"{devkit} lacks {error.args[0]}; is it the ILSVRC2012 Task 1 & 2 devkit from "
            f"{DOWNLOAD_PAGE}?"
        ) from error
    except (tarfile.TarError, EOFError, OSError) as error:
        raise PrepareError(
            f"{devkit} is corrupt or truncated ({error}); download it again"
        ) from error
    synsets = scipy.io.loadmat(meta, squeeze_me=True)["synsets"]
    # meta.mat also lists the inner nodes of the WordNet tree; only leaves are ILSVRC classes.
    id_to_wnid = {
        int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0
    }
    unknown = sorted(set(ground_truth) - {str(i) for i in id_to_wnid})
    if unknown:
        raise PrepareError(
            f"{devkit}: the validation ground truth holds {_names(unknown)}, not the "
            "ILSVRC2012_ID of any class in its meta.mat; download the devkit again"
        )
    return {
        f"ILSVRC2012_val_{position:08d}": id_to_wnid[int(class_id)]
        for position, class_id in enumerate(ground_truth, 1)
    }


def _official_val(source: Path) -> Path | None:
    """The validation tar, else a folder holding its extracted images, else None."""
    if (source / VAL_TAR).is_file():
        return source / VAL_TAR
    for name in VAL_FOLDERS:
        folder = source / name
        if folder.is_dir() and any(folder.glob("ILSVRC2012_val_*.JPEG")):
            return folder
    return None


def _list_class_tars(train_tar: Path) -> dict[str, int]:
    """wnid -> offset of its per-class tar inside the train tar (headers only: seeks, no reads)."""
    try:
        with tarfile.open(train_tar, mode="r:") as tar:
            members = [m for m in tar if m.isfile()]
    except (tarfile.TarError, EOFError) as error:
        raise PrepareError(
            f"{train_tar} is corrupt, truncated or not a tar ({error}); download it again from "
            f"{DOWNLOAD_PAGE}"
        ) from error
    offsets = {}
    for member in members:
        name = PurePosixPath(member.name)
        if name.suffix != ".tar":
            raise PrepareError(
                f"{train_tar} holds {member.name}; expected only per-class tars like "
                "n01440764.tar: is it the official ILSVRC2012 training archive?"
            )
        offsets[name.stem] = member.offset
    return offsets


def prepare_official(source: Path, dest: Path, workers: int) -> None:
    train_tar, val, devkit = source / TRAIN_TAR, _official_val(source), source / DEVKIT
    print(f"found the official ILSVRC2012 files: {train_tar}, {val}, {devkit}")
    labels = read_devkit_labels(devkit)  # first: a bad devkit should fail in seconds, not hours
    offsets = _list_class_tars(train_tar)
    run_class_jobs(
        {
            wnid: partial(extract_class_tar, train_tar, offset, dest / "train" / wnid)
            for wnid, offset in offsets.items()
        },
        workers,
    )
    if val.is_dir():
        files = sorted(p for p in val.iterdir() if p.is_file() and not p.name.startswith("."))
        images = ((p.name, p.stat().st_size, partial(open, p, "rb")) for p in files)
        place_val_images(images, labels, dest / "val", str(devkit))
        return
    print(f"val: extracting {val}", flush=True)
    try:
        with tarfile.open(val, mode="r:") as tar:
            images = (
                (_member_name(m), m.size, partial(tar.extractfile, m)) for m in tar if m.isfile()
            )
            place_val_images(images, labels, dest / "val", str(devkit))
    except (tarfile.TarError, EOFError) as error:
        raise PrepareError(f"{val} is corrupt or truncated ({error}); download it again") from error


# ---- the Kaggle download --------------------------------------------------------------------


def read_kaggle_labels(source: Path) -> dict[str, str]:
    """Validation image id -> wnid: the first token of PredictionString (a wnid, then a box)."""
    path = source / KAGGLE_VAL_LABELS
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        if not {"ImageId", "PredictionString"} <= set(reader.fieldnames or []):
            raise PrepareError(
                f"{path} has columns {reader.fieldnames}; expected ImageId,PredictionString"
            )
        labels = {}
        for row in reader:
            tokens = row["PredictionString"].split()
            if not tokens:
                raise PrepareError(f"{path}: image {row['ImageId']} has an empty PredictionString")
            labels[row["ImageId"]] = tokens[0]
    return labels


def prepare_kaggle(source: Path, dest: Path, workers: int) -> None:
    print(f"found the Kaggle ImageNet download in {source}")
    known = {
        line.split(maxsplit=1)[0]
        for line in (source / KAGGLE_CLASSES).read_text().splitlines()
        if line.strip()
    }
    labels = read_kaggle_labels(source)
    class_dirs = sorted(p for p in (source / KAGGLE_TRAIN).iterdir() if p.is_dir())
    unknown = sorted({p.name for p in class_dirs} - known) + sorted(set(labels.values()) - known)
    if unknown:
        raise PrepareError(
            f"classes {_names(unknown)} in {source} are not in {KAGGLE_CLASSES}; "
            "the download is mixed up: download it again"
        )
    run_class_jobs(
        {d.name: partial(copy_class_folder, d, dest / "train" / d.name) for d in class_dirs},
        workers,
    )
    files = sorted(
        p for p in (source / KAGGLE_VAL).iterdir() if p.is_file() and not p.name.startswith(".")
    )
    images = ((p.name, p.stat().st_size, partial(open, p, "rb")) for p in files)
    place_val_images(images, labels, dest / "val", str(source / KAGGLE_VAL_LABELS))


# ---- which layout, and checking the result ------------------------------------------------


def _missing_official(source: Path) -> list[str]:
    missing = [] if (source / TRAIN_TAR).is_file() else [TRAIN_TAR]
    if _official_val(source) is None:
        missing.append(f"{VAL_TAR} (or a folder {' or '.join(VAL_FOLDERS)}/ of its images)")
    if not (source / DEVKIT).is_file():
        missing.append(f"{DEVKIT} (it holds the validation labels)")
    return missing


def _missing_kaggle(source: Path) -> list[str]:
    needed = [(KAGGLE_CLASSES, Path.is_file), (KAGGLE_VAL_LABELS, Path.is_file)]
    needed += [(f"{KAGGLE_TRAIN}/", Path.is_dir), (f"{KAGGLE_VAL}/", Path.is_dir)]
    return [name for name, exists in needed if not exists(source / name)]


def detect_layout(source: Path) -> str:
    """'official' or 'kaggle'; otherwise an error saying what was found and what is missing."""
    if not source.is_dir():
        raise PrepareError(
            f"--source {source} is not a folder; pass the folder that holds {TRAIN_TAR}, "
            f"{VAL_TAR} and {DEVKIT}, or the unzipped Kaggle download"
        )
    official_missing, kaggle_missing = _missing_official(source), _missing_kaggle(source)
    if not official_missing:
        return "official"
    if not kaggle_missing:
        return "kaggle"
    if len(official_missing) < 3:
        raise PrepareError(
            f"--source {source} holds part of the official ILSVRC2012 files but lacks "
            f"{'; '.join(official_missing)}: download it from {DOWNLOAD_PAGE} into {source}"
        )
    if len(kaggle_missing) < 4:
        raise PrepareError(
            f"--source {source} holds part of the Kaggle download but lacks "
            f"{', '.join(kaggle_missing)}: is the zip fully extracted?"
        )
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in source.iterdir())
    raise PrepareError(
        f"--source {source} holds neither the official ILSVRC2012 files ({TRAIN_TAR}, {VAL_TAR}, "
        f"{DEVKIT}) nor the unzipped Kaggle download ({KAGGLE_CLASSES}, {KAGGLE_VAL_LABELS}, "
        f"{KAGGLE_TRAIN}/, {KAGGLE_VAL}/); it holds {_names(found) if found else 'nothing'}"
    )


@dataclass(frozen=True)
class FolderCounts:
    """Images per class in dest/train and dest/val."""

    train: dict[str, int]
    val: dict[str, int]


def count_images(dest: Path) -> FolderCounts:
    def per_class(split_dir: Path) -> dict[str, int]:
        if not split_dir.is_dir():
            return {}
        return {
            entry.name: sum(
                1 for f in os.scandir(entry.path) if f.is_file() and not f.name.startswith(".")
            )
            for entry in sorted(os.scandir(split_dir), key=lambda e: e.name)
            if entry.is_dir()
        }

    return FolderCounts(per_class(dest / "train"), per_class(dest / "val"))


def find_inconsistencies(counts: FolderCounts) -> list[str]:
    """What would stop training or give wrong labels: the two splits' classes must be the same."""
    problems = []
    if not counts.train and not counts.val:
        return ["no images were written"]
    if no_val := sorted(set(counts.train) - set(counts.val)):
        problems.append(f"classes with train images but no val images: {_names(no_val)}")
    if no_train := sorted(set(counts.val) - set(counts.train)):
        problems.append(f"classes with val images but no train images: {_names(no_train)}")
    for split, per_class in (("train", counts.train), ("val", counts.val)):
        if empty := [wnid for wnid, n in per_class.items() if n == 0]:
            problems.append(f"empty {split}/ class folders: {_names(empty)}")
    return problems


def find_shortfalls(counts: FolderCounts) -> list[str]:
    """How the folder differs from a complete ImageNet (expected for a small test archive)."""
    found = (len(counts.train), sum(counts.train.values()), sum(counts.val.values()))
    complete = (COMPLETE_CLASSES, COMPLETE_TRAIN, COMPLETE_VAL)
    return [
        f"{n:,} {what}, a complete ImageNet has {expected:,}"
        for what, n, expected in zip(
            ("classes", "train images", "val images"), found, complete, strict=True
        )
        if n != expected
    ]


def prepare_imagenet(source: Path, dest: Path, workers: int = 1) -> FolderCounts:
    """Fills dest/train/<wnid>/ and dest/val/<wnid>/ from --source; returns what is there now."""
    source, dest = Path(source).expanduser(), Path(dest).expanduser()
    layout = detect_layout(source)
    dest.mkdir(parents=True, exist_ok=True)
    if layout == "official":
        prepare_official(source, dest, workers)
    else:
        prepare_kaggle(source, dest, workers)
    return count_images(dest)


# ---- command line -------------------------------------------------------------------------


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m alexnet_pl.prepare",
        description="Turn a downloaded dataset into root/train/<class>/ and root/val/<class>/.",
    )
    datasets = parser.add_subparsers(dest="dataset", required=True)
    imagenet = datasets.add_parser(
        "imagenet", help="ILSVRC2012: the official archives or the Kaggle download"
    )
    imagenet.add_argument("--source", type=Path, required=True, help="the downloaded files")
    imagenet.add_argument("--dest", type=Path, required=True, help="the folder to fill")
    imagenet.add_argument(
        "--workers",
        type=_at_least_one,
        default=os.cpu_count() or 1,
        help="train classes extracted at once (default: the number of CPUs)",
    )
    imagenet.add_argument(
        "--expect-complete",
        action="store_true",
        help="fail unless all 1000 classes, 1,281,167 train and 50,000 val images are there",
    )
    resized = datasets.add_parser(
        "resized", help="a copy of a prepared folder with shorter sides of 256: faster to train on"
    )
    resized.add_argument("--source", type=Path, required=True, help="a prepared image folder")
    resized.add_argument("--dest", type=Path, required=True, help="the folder for the copy")
    resized.add_argument("--size", type=_at_least_one, default=256, help="shorter side (256)")
    resized.add_argument("--quality", type=int, default=90, help="JPEG quality (90)")
    resized.add_argument(
        "--workers",
        type=_at_least_one,
        default=os.cpu_count() or 1,
        help="processes resizing at once (default: the number of CPUs)",
    )
    return parser


def main_resized(args: argparse.Namespace) -> int:
    try:
        outcome = make_resized_copy(args.source, args.dest, args.size, args.quality, args.workers)
    except ResizedCopyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(describe(outcome, args.dest))
    return 1 if outcome.failed else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.dataset == "resized":
        return main_resized(args)
    try:
        counts = prepare_imagenet(args.source, args.dest, args.workers)
    except PrepareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(
        f"{args.dest}: {len(counts.train):,} classes, {sum(counts.train.values()):,} train and "
        f"{sum(counts.val.values()):,} val images"
    )
    problems = find_inconsistencies(counts)
    shortfalls = find_shortfalls(counts)
    for shortfall in shortfalls:
        level = "error" if args.expect_complete else "warning"
        print(f"{level}: {shortfall}", file=sys.stderr)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems or (args.expect_complete and shortfalls) else 0


if __name__ == "__main__":
    with reported_as_user_errors():  # the message alone, no traceback
        sys.exit(main())
