"""Loader worker memory over one epoch of a 1.28M-image index (ImageNet's train set), for
torchvision ImageFolder's list of (path, label) tuples against alexnet_pl's numpy ImageIndex.

    python benchmarks/worker_memory.py [--entries 1281167] [--workers 2]

Each worker reads every entry once, in random order, as a training epoch does; no files are
opened, so only the index is measured. A forked worker shares the parent's pages until it writes
to them; reading a Python object writes its reference count, so the list's pages are copied into
every worker (pytorch issue 13246). "Private" is the memory a worker holds alone (Private_Clean +
Private_Dirty in /proc/<pid>/smaps_rollup): what adds up over 8 workers x 8 GPUs.
"""

import argparse
import os
import resource
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from alexnet_pl.data.image_folder import ImageIndex

CLASSES = 1000


def imagenet_like_samples(entries: int) -> list[tuple[str, int]]:
    per_class = -(-entries // CLASSES)
    return [
        (f"/data/imagenet/train/n{label:08d}/n{label:08d}_{i}.JPEG", label)
        for label in range(CLASSES)
        for i in range(per_class)
    ][:entries]


class TupleListIndex(Dataset):
    """torchvision's ImageFolder keeps exactly this: self.samples, a list of tuples."""

    def __init__(self, samples: list[tuple[str, int]]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> int:
        path, label = self.samples[index]
        return label + len(path)  # use both, as a loader would


class NumpyIndex(Dataset):
    def __init__(self, samples: list[tuple[str, int]]) -> None:
        self.index = ImageIndex([f"n{label:08d}" for label in range(CLASSES)], samples)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> int:
        return int(self.index.labels[index]) + len(self.index.path(index))


def memory_mb(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":")] = int(value) / 1024
    return {
        "rss": fields["Rss"],
        "private": fields["Private_Clean"] + fields["Private_Dirty"],
    }


def one_epoch(dataset: Dataset, workers: int, batch: int) -> tuple[list[dict], list[dict]]:
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers)
    batches = iter(loader)
    next(batches)
    pids = [worker.pid for worker in batches._workers]  # a benchmark may look inside
    start = [memory_mb(pid) for pid in pids]
    for _ in range(len(loader) - 2):  # all but the last batch: the workers are still alive
        next(batches)
    end = [memory_mb(pid) for pid in pids]
    for _ in batches:
        pass
    return start, end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_281_167)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(1)

    print(f"{args.entries:,} entries, {args.workers} workers, one epoch in random order\n")
    print("| index | worker private MB, start | after one epoch | growth | worker RSS MB, end |")
    print("|---|---:|---:|---:|---:|")
    for name, kind in (("list of tuples (ImageFolder)", TupleListIndex), ("numpy", NumpyIndex)):
        dataset = kind(imagenet_like_samples(args.entries))  # the list is freed for NumpyIndex
        start, end = one_epoch(dataset, args.workers, args.batch)
        first, last = (sum(m["private"] for m in ms) / len(ms) for ms in (start, end))
        rss = sum(m["rss"] for m in end) / len(end)
        print(f"| {name} | {first:.0f} | {last:.0f} | {last - first:+.0f} | {rss:.0f} |")
        del dataset
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nmain process peak RSS {peak:.0f} MB (pid {os.getpid()})")


if __name__ == "__main__":
    main()
