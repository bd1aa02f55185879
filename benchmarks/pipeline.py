"""Input pipeline throughput: images/s per CPU core and with N loader workers, against the
baseline a user writes (torchvision ImageFolder + PIL + RandomResizedCrop/flip/ToTensor/Normalize),
measured in the same run on the same generated ImageNet-sized JPEGs.

    python benchmarks/pipeline.py [--images 512] [--workers 2] [--cache /tmp/alexnet_pl_bench]

Every pipeline gives 227x227 training crops. Ours hand uint8 crops to the device, where they are
made float, lit and normalised (the last table row shows what that costs if done on the CPU).
"""

import argparse
import io
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler, default_collate
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from alexnet_pl.data import decoding
from alexnet_pl.data.image_folder import ImageFolderDataset, collate_skipping_bad
from alexnet_pl.data.preprocessing import Preprocessing
from alexnet_pl.data.transforms import ResizeRandomCropFlip, ToNormalizedFloat
from alexnet_pl.resized_copy import make_resized_copy

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CROP, RESIZE = 227, 256
# ImageNet's commonest sizes; its JPEGs average about 110 KB, which these match at quality 90.
SIZES = [(500, 375), (500, 333), (375, 500), (500, 500), (400, 300)]


def photo_like_jpeg(rng: np.random.Generator, width: int, height: int) -> bytes:
    """Smooth colour fields plus sensor-like noise: compresses (and decodes) like a photograph."""
    coarse = rng.integers(0, 256, (height // 20 + 1, width // 20 + 1, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
    noisy = smooth.astype(np.int16) + rng.normal(0, 24, smooth.shape).astype(np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def generate(root: Path, images: int) -> Path:
    """`images` train images in 4 classes, and 2 val images per class (step.py --data trains on
    the folder, and the DataModule wants both splits)."""
    marker = root / ".complete"
    if not marker.exists():
        rng = np.random.default_rng(0)
        splits = [("train", i) for i in range(images)] + [("val", i) for i in range(8)]
        for split, i in splits:
            folder = root / split / f"class_{i % 4}"
            folder.mkdir(parents=True, exist_ok=True)
            width, height = SIZES[i % len(SIZES)]
            (folder / f"{i:06d}.JPEG").write_bytes(photo_like_jpeg(rng, width, height))
        marker.touch()
    return root


def baseline(root: Path) -> ImageFolder:
    """What the torchvision reference script and most tutorials do."""
    transform = T.Compose(
        [
            T.RandomResizedCrop(CROP),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )
    return ImageFolder(str(root / "train"), transform)


def ours(root: Path, decode: str) -> ImageFolderDataset:
    return ImageFolderDataset(
        str(root / "train"), ResizeRandomCropFlip(Preprocessing(RESIZE, CROP)), decode
    )


def loadable_codecs() -> list[decoding.JpegCodec]:
    """Each JPEG decoder that loads here (TorchCodec, torchvision's codecs): a table row each."""
    codecs = []
    for load in decoding.JPEG_CODECS.values():
        try:
            codecs.append(load())
        except (ImportError, OSError, RuntimeError):
            pass
    return codecs


def loader_rate(
    dataset,
    collate: Callable,
    batch: int,
    workers: int,
    samples: int,
    codec: decoding.JpegCodec | None = decoding.JPEG_CODEC,
) -> float:
    """Images/s delivered by a DataLoader with `workers` processes (one thread each), after the
    first batch. With one worker: the rate of one CPU core, all of a worker's work included
    (read, decode, transform, collate into shared memory). `codec`: the JPEG decoder of
    data.decode=cpu and gpu (the workers, forked at iter(), take the one set here)."""
    decoding.JPEG_CODEC = codec
    loader = DataLoader(
        dataset,
        batch_size=batch,
        sampler=RandomSampler(dataset, replacement=True, num_samples=samples),
        num_workers=workers,
        collate_fn=collate,
        prefetch_factor=4,
    )
    batches = iter(loader)
    next(batches)  # worker start-up is paid once per run, not per image
    start, count = time.perf_counter(), 0
    for images, *_ in batches:
        count += len(images)
    return count / (time.perf_counter() - start)


def device_side_on_cpu(batch: int, repeats: int = 5) -> float:
    images = torch.randint(0, 256, (batch, 3, CROP, CROP), dtype=torch.uint8)
    to_float = ToNormalizedFloat(MEAN, STD, lighting_std=0.1)
    start = time.perf_counter()
    for _ in range(repeats):
        to_float(images)
    return batch * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="median of this many runs")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/alexnet_pl_bench"))
    args = parser.parse_args()

    originals = generate(args.cache / f"originals-{args.images}", args.images)
    prepared = args.cache / f"resized-{args.images}"
    make_resized_copy(originals, prepared, RESIZE, quality=90, workers=args.workers)
    kb = np.mean([p.stat().st_size for p in (originals / "train").rglob("*.JPEG")]) / 1024
    kb_prepared = np.mean([p.stat().st_size for p in (prepared / "train").rglob("*.JPEG")]) / 1024

    default = decoding.JPEG_CODEC
    codec_rows = [
        (f"ours, data.decode=cpu, {codec.name}", "originals", ours(originals, "cpu"), codec)
        for codec in loadable_codecs()
        if default is None or codec.name != default.name
    ]
    rows = [
        ("baseline: ImageFolder + PIL, float on CPU", "originals", baseline(originals), None),
        ("ours, data.decode=pil", "originals", ours(originals, "pil"), None),
        ("ours, data.decode=cpu (default)", "originals", ours(originals, "cpu"), default),
        *codec_rows,  # the other JPEG decoders that load here
        ("baseline: ImageFolder + PIL, float on CPU", "prepared 256", baseline(prepared), None),
        ("ours, data.decode=cpu (default)", "prepared 256", ours(prepared, "cpu"), default),
    ]
    print(f"{args.images} JPEGs, originals {kb:.0f} KB average, prepared copy {kb_prepared:.0f} KB")
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; per core = one loader worker")
    print(f"the default JPEG decoder: {decoding.jpeg_codec_name()}\n")
    workers = f"{args.workers} workers"
    print(f"| pipeline | data | img/s per core | x baseline | img/s, {workers} | x baseline |")
    print("|---|---|---:|---:|---:|---:|")
    # Round robin: every repeat measures every row, so a machine that slows down for a while
    # (a shared VM) slows all rows alike; the table shows the median of each.
    rates: dict[int, list[tuple[float, float]]] = {i: [] for i in range(len(rows))}
    for _ in range(args.repeats):
        for i, (_, _, dataset, codec) in enumerate(rows):
            collate = default_collate if isinstance(dataset, ImageFolder) else collate_skipping_bad
            core = loader_rate(dataset, collate, args.batch, 1, 4 * args.batch, codec)
            samples = 4 * args.workers * args.batch
            rates[i].append(
                (core, loader_rate(dataset, collate, args.batch, args.workers, samples, codec))
            )
    medians = [tuple(statistics.median(r[k] for r in rates[i]) for k in (0, 1)) for i in rates]
    for (name, data, _, _), (core, loader) in zip(rows, medians, strict=True):
        print(
            f"| {name} | {data} | {core:.0f} | {core / medians[0][0]:.2f} | {loader:.0f} | "
            f"{loader / medians[0][1]:.2f} |"
        )
    rate = device_side_on_cpu(args.batch)
    print(
        f"\nours' device-side step (float, lighting, normalise) if run on the CPU: {rate:.0f} img/s"
    )


if __name__ == "__main__":
    main()
