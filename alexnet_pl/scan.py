"""List every image that cannot be decoded, before training: `python -m alexnet_pl.scan <root>`.

Decodes each file of root/train and root/val in parallel (one process per CPU by default) exactly
as training would, prints the bad ones with the reason and writes them to a report. Exit status 1
when any file is bad, so it can gate a job script.
"""

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from torchvision.datasets import ImageFolder
from tqdm import tqdm

from alexnet_pl.data.bad_images import DECODE_ERRORS
from alexnet_pl.data.datamodule import SPLITS
from alexnet_pl.data.decoding import decode_on_cpu

CHUNK = 256  # files per task: amortises process round trips over many small decodes


def decode_error(path: str) -> str | None:
    try:
        decode_on_cpu(path)  # the decoder training uses
    except DECODE_ERRORS as error:
        return f"{type(error).__name__}: {error}"
    return None


def image_paths(root: Path) -> list[str]:
    """The files training would read: ImageFolder's own listing (image extensions, symlinks)."""
    paths = []
    for split in SPLITS:
        if (root / split).is_dir():
            paths += [path for path, _ in ImageFolder(str(root / split), allow_empty=True).samples]
    if not paths:
        raise SystemExit(f"{root} holds no images under train/ or val/")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alexnet_pl.scan", description=__doc__)
    parser.add_argument("root", type=Path, help="the data folder (with train/ and val/)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--report", type=Path, help="default: <root>/bad_files.tsv")
    args = parser.parse_args(argv)

    paths = image_paths(args.root)
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        errors = list(
            tqdm(
                pool.map(decode_error, paths, chunksize=CHUNK),
                total=len(paths),
                desc="decoding",
                unit="img",
            )
        )
    bad = {path: error for path, error in zip(paths, errors, strict=True) if error}
    report = args.report or args.root / "bad_files.tsv"
    if bad:
        report.write_text("".join(f"{path}\t{error}\n" for path, error in bad.items()))
        for path, error in bad.items():
            print(f"{path}\t{error}")
    print(
        f"{len(paths)} images, {len(bad)} cannot be decoded"
        + (f" (listed in {report})" if bad else ""),
        file=sys.stderr,
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
