"""data.decode=gpu throughput on one GPU: nvjpeg alone, the batched crop path, the per-image loop it
replaced, and the whole loader (workers, one-buffer batches, decoding ahead on a side stream)
against data.decode=cpu, with and without a simulated training step. Under a minute on an H200
with 16 CPUs, the JPEGs included (generated in parallel, photo-like, ImageNet's common sizes).

    python benchmarks/gpu_decode.py [--images 2048] [--workers N] [--step-ms 6.4]
    python benchmarks/gpu_decode.py --device cpu --images 256   # a smoke run without a GPU
"""

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pipeline.py, beside this file
from pipeline import MEAN, SIZES, STD, loadable_codecs, photo_like_jpeg  # noqa: E402

from alexnet_pl.data import decoding  # noqa: E402
from alexnet_pl.data.decoding import decode_to_crops  # noqa: E402
from alexnet_pl.data.device_prefetch import DecodingAheadLoader  # noqa: E402
from alexnet_pl.data.image_folder import ImageFolderDataset, collate_skipping_bad  # noqa: E402
from alexnet_pl.data.preprocessing import Preprocessing  # noqa: E402
from alexnet_pl.data.transforms import ResizeRandomCropFlip, ToNormalizedFloat  # noqa: E402

BATCH, RESIZE, CROP = 128, 256, 227


def write_jpeg(job: tuple[Path, int]) -> None:
    path, i = job
    width, height = SIZES[i % len(SIZES)]
    path.write_bytes(photo_like_jpeg(np.random.default_rng(i), width, height))


def generate(root: Path, images: int, processes: int) -> Path:
    """`images` JPEGs in 4 class folders under root/train, written in parallel once."""
    if not (root / ".complete").exists():
        jobs = []
        for i in range(images):
            folder = root / "train" / f"class_{i % 4}"
            folder.mkdir(parents=True, exist_ok=True)
            jobs.append((folder / f"{i:06d}.JPEG", i))
        with Pool(processes) as pool:
            pool.map(write_jpeg, jobs, chunksize=16)
        (root / ".complete").touch()
    return root


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(run: Callable[[], int], device: torch.device, repeats: int) -> float:
    """Median images/s of `run` (returns the images it handled), after one warm-up run."""
    run()
    rates = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        count = run()
        synchronize(device)
        rates.append(count / (time.perf_counter() - start))
    return statistics.median(rates)


def batches_of(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items) - size + 1, size)]


def simulated_step(device: torch.device, milliseconds: float) -> Callable[[torch.Tensor], None]:
    """A stand-in for the training step: matrix products that keep the GPU busy `milliseconds`
    per batch (calibrated here), reading the batch so that it must have arrived."""
    if device.type != "cuda" or milliseconds <= 0:
        return lambda images: None
    a = torch.randn(4096, 4096, device=device, dtype=torch.float16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(20):
        a @ a
    torch.cuda.synchronize(device)
    repeats = max(1, round(milliseconds / ((time.perf_counter() - start) / 20 * 1000)))

    def step(images: torch.Tensor) -> None:
        b = a + images[:1, :1, :1, :1].half().mean()
        for _ in range(repeats):
            b = b @ a

    return step


def consume(batches: Iterable, to_float: ToNormalizedFloat, step: Callable, device) -> int:
    count = 0
    for images, labels, *_ in batches:
        images = images.to(device, non_blocking=True)
        step(to_float(images))
        count += len(labels)
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=3, help="median of this many runs")
    parser.add_argument(
        "--step-ms", type=float, default=6.4, help="simulated step per batch (6.4: 20k img/s)"
    )
    parser.add_argument("--cache", type=Path, default=Path("/tmp/alexnet_pl_bench"))
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())

    root = generate(args.cache / f"gpu-decode-{args.images}", args.images, os.cpu_count() or 2)
    train = root / "train"
    view = ResizeRandomCropFlip(Preprocessing(RESIZE, CROP))
    to_float = ToNormalizedFloat(MEAN, STD, lighting_std=0.1)
    dataset = ImageFolderDataset(str(train), view, decode="gpu")
    torch.manual_seed(0)
    collated = [
        collate_skipping_bad([dataset[i] for i in chunk])[0]
        for chunk in batches_of(list(range(len(dataset))), BATCH)
    ]
    files = [batch.jpegs() for batch in collated]
    pinned = (
        [[data.pin_memory() for data in jpegs] for jpegs in files]
        if device.type == "cuda"
        else files
    )
    images = sum(len(jpegs) for jpegs in files)
    kilobytes = np.mean([len(data) for jpegs in files for data in jpegs]) / 1024

    default_codec = decoding.device_jpeg_codec(device)  # what data.decode=gpu uses here

    def nvjpeg_alone(
        source: list[list[torch.Tensor]], codec: decoding.JpegCodec = default_codec
    ) -> Callable[[], int]:
        return lambda: sum(len(codec.decode(j, device=device)) for j in source)

    def batched_crops() -> int:
        return sum(len(decode_to_crops(batch, device)[1]) for batch in collated)

    def per_image_loop() -> int:  # what data.decode=gpu did before: a view per image, stacked
        count = 0
        for jpegs in files:
            decoded = default_codec.decode(jpegs, device=device)
            count += len(torch.stack([view(image) for image in decoded]))
        return count

    def loader(decode: str, step: Callable) -> Callable[[], int]:
        inner = DataLoader(
            ImageFolderDataset(str(train), view, decode=decode),
            batch_size=BATCH,
            shuffle=True,
            drop_last=True,
            num_workers=args.workers,
            pin_memory=device.type == "cuda",
            persistent_workers=True,
            prefetch_factor=4,
            collate_fn=collate_skipping_bad,
        )
        if decode == "gpu":

            def prepare(batch):
                encoded, labels, _ = batch
                crops, kept, _ = decode_to_crops(encoded, device)
                return crops, labels[kept].to(device, non_blocking=True)

            inner = DecodingAheadLoader(inner, prepare, device)
        return lambda: consume(inner, to_float, step, device)

    step = simulated_step(device, args.step_ms)
    rows = [
        ("nvjpeg batched decode alone", nvjpeg_alone(files)),
        ("nvjpeg batched decode alone, bytes pinned", nvjpeg_alone(pinned)),
        ("decode + batched crops (the new path), no loader", batched_crops),
        ("decode + per-image view loop + stack (the old path)", per_image_loop),
        ("loader, data.decode=gpu (workers, decoding ahead)", loader("gpu", lambda x: None)),
        ("loader, data.decode=cpu (workers decode and crop)", loader("cpu", lambda x: None)),
    ]
    # The other JPEG decoders that load here (the default one is the first row's).
    rows += [
        (f"nvjpeg batched decode alone, bytes pinned, {codec.name}", nvjpeg_alone(pinned, codec))
        for codec in loadable_codecs()
        if codec.name != default_codec.name
    ]
    other_codecs = len(rows) - 6
    if device.type == "cuda" and args.step_ms > 0:
        step_alone = [torch.zeros(BATCH, 3, CROP, CROP, dtype=torch.uint8, device=device)] * (
            images // BATCH
        )
        rows += [
            (
                f"simulated step alone ({args.step_ms} ms a batch)",
                lambda: consume(((s, range(BATCH)) for s in step_alone), to_float, step, device),
            ),
            ("loader, data.decode=gpu + simulated step", loader("gpu", step)),
            ("loader, data.decode=cpu + simulated step", loader("cpu", step)),
        ]

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"{name}; torch {torch.__version__}, torchvision {torchvision.__version__}; "
        f"{os.cpu_count()} CPUs, {args.workers} loader workers"
    )
    print(f"JPEG decoder on {device}: {default_codec.name}")
    print(f"{images} JPEGs ({kilobytes:.0f} KB average), batch {BATCH}, {CROP} px crops\n")
    print("| what | img/s | x nvjpeg alone |")
    print("|---|---:|---:|")
    results = []
    for label, run in rows:
        results.append(rate(run, device, args.repeats))
        print(f"| {label} | {results[-1]:,.0f} | {results[-1] / results[0]:.2f} |", flush=True)
    gpu, cpu = results[4], results[5]
    print(f"\nloader decode=gpu / decode=cpu: {gpu / cpu:.2f}")
    if len(results) > 6 + other_codecs:
        alone, gpu_step, cpu_step = results[6 + other_codecs :]
        print(
            f"with the simulated step, gpu / cpu: {gpu_step / cpu_step:.2f}; "
            f"gpu loader + step / step alone: {gpu_step / alone:.2f}"
        )


if __name__ == "__main__":
    main()
