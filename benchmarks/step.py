"""Training step throughput: our LightningModule under the Trainer against a plain PyTorch loop
over the same network, optimizer and batches, and against the notebook's loop (default Adam,
float32), all measured in one run.

    python benchmarks/step.py [--size 227] [--batch 32] [--steps 12] [--device cpu|cuda]
    python benchmarks/step.py --device cuda --precision bf16-mixed --channels-last --compile
    python benchmarks/step.py --device cuda --data /tmp/alexnet_pl_bench/resized-2048 --workers 14

With --data, a last row runs the LightningModule on that image folder through the real pipeline
(decode, views in workers, transfer, float on the device): its ratio to the synthetic row is the
share of the model-bound ceiling the input pipeline delivers.

Batches are made once and held in memory, so only the step is measured (the input pipeline has
its own benchmark). Steps are timed from the start of batch `--warmup` to the end of the last, by
the same clock for every contender.
"""

import argparse
import time
from contextlib import nullcontext
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from alexnet_pl.data.datamodule import ImageFolderDataModule, list_classes
from alexnet_pl.data.transforms import ResizeCenterCrop, ResizeRandomCropFlip, ToNormalizedFloat
from alexnet_pl.module import AlexNetModule
from alexnet_pl.network import AlexNet

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def batches(count: int, batch: int, size: int, classes: int) -> list:
    generator = torch.Generator().manual_seed(0)
    return [
        (
            torch.randn(batch, 3, size, size, generator=generator),
            torch.randint(classes, (batch,), generator=generator),
        )
        for _ in range(count)
    ]


def network(classes: int) -> nn.Module:
    torch.manual_seed(0)
    return AlexNet(num_classes=classes, init="paper")


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def plain_loop(
    data, args, fused: bool, channels_last: bool, compile_network: bool, precision: str
) -> float:
    device = torch.device(args.device)
    model = network(args.classes).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    if compile_network:
        model.compile()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=fused or None)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if precision == "bf16-mixed"
        else nullcontext()
    )
    for step, (images, labels) in enumerate(data):
        if step == args.warmup:
            synchronize(args.device)
            start = time.perf_counter()
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        with autocast:
            loss = nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(args.device)
    return (len(data) - args.warmup) * len(data[0][1]) / (time.perf_counter() - start)


class StepClock(pl.Callback):
    def __init__(self, warmup: int, device: str) -> None:
        self.warmup, self.device = warmup, device
        self.start = self.end = 0.0
        self.images = 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            synchronize(self.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.images += len(batch[1])
        synchronize(self.device)
        self.end = time.perf_counter()


def real_data(args) -> ImageFolderDataModule:
    return ImageFolderDataModule(
        root=args.data,
        train_transform=ResizeRandomCropFlip(256, args.size),
        val_transform=ResizeCenterCrop(256, args.size),
        train_batch_transform=ToNormalizedFloat(MEAN, STD, lighting_std=0.1),
        val_batch_transform=ToNormalizedFloat(MEAN, STD),
        decode=args.decode,
        batch_size=args.batch,
        num_workers=args.workers,
    )


def lightning(data, args, datamodule: ImageFolderDataModule | None = None) -> float:
    module = AlexNetModule(
        network(args.classes),
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-4, fused=True),
        scheduler=lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, 30),
        channels_last=args.channels_last,
        compile={} if args.compile else None,
    )
    clock = StepClock(args.warmup, args.device)
    trainer = pl.Trainer(
        accelerator=args.device,
        devices=1,
        precision=args.precision,
        max_steps=args.warmup + args.steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
        log_every_n_steps=50,
    )
    if datamodule is None:
        loader = DataLoader(data, batch_size=None)  # the batches as they are
        trainer.fit(module, train_dataloaders=loader)
    else:
        trainer.fit(module, datamodule=datamodule)
    return clock.images / (clock.end - clock.start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", type=int, default=227)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs each")
    parser.add_argument("--data", help="an image folder (root/train/<class>/*) for a last row")
    parser.add_argument("--decode", default="cpu", choices=["pil", "cpu", "gpu"])
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    # With --data, every row uses its number of classes, so that all run the same network.
    args.classes = len(list_classes(Path(args.data) / "train")) if args.data else 1000
    data = batches(args.steps + args.warmup, args.batch, args.size, args.classes)
    switches = (args.channels_last, args.compile)
    contenders = {
        "plain PyTorch loop, fused Adam (baseline)": lambda: plain_loop(
            data, args, True, *switches, args.precision
        ),
        "alexnet_pl LightningModule + Trainer": lambda: lightning(data, args),
        "notebook loop: default Adam, float32": lambda: plain_loop(
            data, args, False, False, False, "32-true"
        ),
    }
    if args.data:
        name = f"same, real pipeline: {args.data}, decode={args.decode}, {args.workers} workers"
        contenders[name] = lambda: lightning(data, args, real_data(args))
    print(
        f"AlexNet, {args.size} px, batch {args.batch}, {args.steps} timed steps, {args.device}, "
        f"{args.precision}, channels_last={args.channels_last}, compile={args.compile}, "
        f"{torch.get_num_threads()} threads\n"
    )
    print("| loop | img/s | x baseline |")
    print("|---|---:|---:|")
    reference = None
    for name, run in contenders.items():
        rate = max(run() for _ in range(args.repeats))
        reference = reference or rate
        print(f"| {name} | {rate:.1f} | {rate / reference:.3f} |")


if __name__ == "__main__":
    main()
