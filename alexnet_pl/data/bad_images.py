"""Real image folders hold files that cannot be decoded (truncated downloads, zero-byte files,
broken symlinks). One such file must not end a week-long run in epoch 40, and must not vanish
silently either: it is skipped, counted, named in a report and a warning, or, with strict=True,
stops the run at once with its path."""

import logging
from pathlib import Path
from typing import NamedTuple

from PIL import Image

log = logging.getLogger(__name__)

# What PIL and the filesystem raise for a file that is not a whole, readable image. SyntaxError is
# PIL's own for some damaged PNG and GIF headers.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class BadImageError(RuntimeError):
    """An image that cannot be decoded, with data.strict=true."""


class BadImage(NamedTuple):
    """What a dataset returns in place of a sample it could not decode. A NamedTuple, so that
    Lightning's batch transfer (apply_to_collection) can pass it through."""

    path: str
    error: str


def load_rgb(path: str) -> Image.Image:
    """Decodes the whole file now (a truncated JPEG fails here, not later) and converts greyscale,
    CMYK, palette and RGBA images to RGB. PIL reads the format from the content, so a PNG saved
    with a .JPEG name (ImageNet has some) loads too."""
    with open(path, "rb") as file, Image.open(file) as image:
        return image.convert("RGB")


class BadImageReport:
    """Counts the skipped files and writes each one once to a tab-separated report."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.seen: dict[str, str] = {}

    def add(self, bad_images: list[BadImage]) -> None:
        for bad in bad_images:
            if bad.path in self.seen:
                continue
            self.seen[bad.path] = bad.error
            log.warning("skipped an image that cannot be decoded: %s (%s)", bad.path, bad.error)
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a") as report:  # appended at once: survives a crash
                    report.write(f"{bad.path}\t{bad.error}\n")

    def __len__(self) -> int:
        return len(self.seen)
