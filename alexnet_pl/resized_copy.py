"""A copy of an image folder with every image's shorter side at 256 (JPEG quality 90), so that the
paper's training view is decode + random crop + flip, with no resize: several times less work per
image than the originals (benchmarks/pipeline.py).

    python -m alexnet_pl.prepare resized --source ~/imagenet --dest ~/imagenet-256 [--workers 8]

The tree is mirrored (train/<class>/x.JPEG -> same path), so the copy is a data.root like any
other. Parallel and resumable: each image is written to a hidden partial file and renamed, and a
second run skips what is already there. A file that cannot be decoded is listed, not copied.
"""

import io
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS
from tqdm import tqdm

from alexnet_pl.data.bad_images import DECODE_ERRORS

SETTINGS_FILE = ".resized.json"  # the size and quality a copy was made with
ERRORS_FILE = "resize_errors.tsv"
CHUNK = 64  # images per task: amortises process round trips over many small files


class ResizedCopyError(Exception):
    """A copy that cannot be made as asked: the message says why and what to do."""


class Outcome(NamedTuple):
    written: int
    skipped: int  # already in the copy (a resumed run)
    failed: list[tuple[str, str]]  # (source path, error)


def target_size(width: int, height: int, shorter_side: int) -> tuple[int, int]:
    scale = shorter_side / min(width, height)
    if width <= height:
        return shorter_side, max(shorter_side, round(height * scale))
    return max(shorter_side, round(width * scale)), shorter_side


def resized_jpeg(source: Path, shorter_side: int, quality: int) -> bytes:
    """The copy's bytes: the source's own if it is already an RGB JPEG of the size (nothing lost),
    else the resized image encoded anew. Raises DECODE_ERRORS for a file that cannot be decoded."""
    with Image.open(source) as image:
        size = target_size(*image.size, shorter_side)
        unchanged = image.format == "JPEG" and image.mode == "RGB" and image.size == size
        # JPEG: let libjpeg-turbo scale by 1/2, 1/4 or 1/8 while decoding (never below the
        # target size), which makes large photos several times faster to shrink.
        image.draft("RGB", size)
        rgb = image.convert("RGB")  # decodes the whole file: a damaged one fails here
    if unchanged:
        return source.read_bytes()
    buffer = io.BytesIO()
    rgb.resize(size, Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def resize_file(source: Path, dest: Path, shorter_side: int, quality: int) -> str | None:
    """Writes `dest`; returns None, or why the source could not be decoded."""
    try:
        data = resized_jpeg(source, shorter_side, quality)
    except DECODE_ERRORS as error:
        return f"{type(error).__name__}: {error}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.name}.partial")  # hidden, and not an image extension
    partial.write_bytes(data)
    os.replace(partial, dest)  # an interrupted run never leaves a half-written image
    return None


def _resize_chunk(jobs: list[tuple[Path, Path]], shorter_side: int, quality: int) -> list:
    return [
        (str(source), resize_file(source, dest, shorter_side, quality)) for source, dest in jobs
    ]


def image_files(source: Path) -> list[Path]:
    """Every file ImageFolder would read, relative to `source`, sorted."""
    found = (
        path.relative_to(source)
        for path in source.rglob("*")
        if path.suffix.lower() in IMG_EXTENSIONS and not path.name.startswith(".")
    )
    return sorted(found)


def check_settings(dest: Path, shorter_side: int, quality: int) -> None:
    settings = {"shorter_side": shorter_side, "quality": quality}
    recorded = dest / SETTINGS_FILE
    if recorded.is_file():
        earlier = json.loads(recorded.read_text())
        if earlier != settings:
            raise ResizedCopyError(
                f"--dest {dest} holds a copy made with {earlier}, not {settings}; finish it with "
                "the same settings, or choose another --dest"
            )
        return
    dest.mkdir(parents=True, exist_ok=True)
    recorded.write_text(json.dumps(settings))


def make_resized_copy(
    source: Path, dest: Path, shorter_side: int = 256, quality: int = 90, workers: int = 1
) -> Outcome:
    if not source.is_dir():
        raise ResizedCopyError(f"--source {source} is not a folder")
    if dest.resolve() == source.resolve() or source.resolve() in dest.resolve().parents:
        raise ResizedCopyError(f"--dest {dest} must be outside --source {source}")
    if not 1 <= quality <= 100 or shorter_side < 1:
        raise ResizedCopyError(
            f"--size {shorter_side} --quality {quality}: the size must be >= 1 and the JPEG "
            "quality in 1..100 (defaults: 256 and 90)"
        )
    files = image_files(source)
    if not files:
        raise ResizedCopyError(f"--source {source} holds no images ({', '.join(IMG_EXTENSIONS)})")
    check_settings(dest, shorter_side, quality)
    todo = [(source / name, dest / name) for name in files if not (dest / name).exists()]
    chunks = [todo[i : i + CHUNK] for i in range(0, len(todo), CHUNK)]
    failed = []
    progress = tqdm(total=len(todo), unit="img", desc=f"resizing to {shorter_side} px")
    with ProcessPoolExecutor(max_workers=workers) as pool:
        args = ([shorter_side] * len(chunks), [quality] * len(chunks))
        for results in pool.map(_resize_chunk, chunks, *args):
            failed += [(path, error) for path, error in results if error is not None]
            progress.update(len(results))
    progress.close()
    if failed:
        with (dest / ERRORS_FILE).open("w") as report:
            report.writelines(f"{path}\t{error}\n" for path, error in failed)
    return Outcome(len(todo) - len(failed), len(files) - len(todo), failed)


def describe(outcome: Outcome, dest: Path) -> str:
    lines = [f"{outcome.written} images written, {outcome.skipped} already there, in {dest}"]
    if outcome.failed:
        lines.append(
            f"{len(outcome.failed)} files could not be decoded and are not in the copy; "
            f"they are listed in {dest / ERRORS_FILE}"
        )
    return "\n".join(lines)
