"""List every image that cannot be decoded, before training: `python -m alexnet_pl.scan <root>`.

Decodes each file of root/train and root/val in parallel (one process per CPU by default) exactly
as training would, prints the bad ones with the reason, then writes them to a report in the current
folder (or --report), never into the data: a shared ImageNet is often read-only. Exit status 1 when
any file is bad, so it can gate a job script, whether or not the report could be written.
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
from alexnet_pl.errors import reported_as_user_errors

CHUNK = 256  # files per task: amortises process round trips over many small decodes
DEFAULT_REPORT = Path("bad_files.tsv")  # in the current folder: the user's, not the dataset's


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
    parser.add_argument(
        "--report", type=Path, default=DEFAULT_REPORT, help="default: ./bad_files.tsv"
    )
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
    # The list first: the hours of decoding are not lost if the report cannot be written.
    for path, error in bad.items():
        print(f"{path}\t{error}", flush=True)
    summary = f"{len(paths)} images, {len(bad)} cannot be decoded"
    if not bad:
        print(summary, file=sys.stderr)
        return 0
    try:
        args.report.write_text("".join(f"{path}\t{error}\n" for path, error in bad.items()))
        print(f"{summary} (listed above and in {args.report})", file=sys.stderr)
    except OSError as error:
        print(
            f"{summary} (listed above). The report could not be written to {args.report} "
            f"({error}); give a writable path with --report",
            file=sys.stderr,
        )
    return 1


if __name__ == "__main__":
    with reported_as_user_errors():  # the message alone, no traceback
        sys.exit(main())
