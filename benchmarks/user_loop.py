"""The baseline: what a user writes to train AlexNet without this project, timed on an image
folder. torchvision's ImageFolder with PIL, RandomResizedCrop + flip + ToTensor + Normalize in the
loader workers (the torchvision reference script's recipe), torchvision.models.alexnet, SGD,
float32 eager, pinned batches copied without blocking.

    python benchmarks/user_loop.py --data /tmp/alexnet_pl_gpu/originals --workers 14 [--device cuda]

Prints images per second over the batches after `--warmup` (the workers start and fill their
prefetch queues first, so a short run would time the queue, not the pipeline).
"""

import argparse
import json
import time
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms as T

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="root/train/<class>/*")
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--workers", type=int, default=14)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--crop", type=int, default=227)
    parser.add_argument("--warmup", type=int, default=40, help="untimed batches")
    parser.add_argument("--batches", type=int, default=120, help="batches in all")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()

    transform = T.Compose(
        [
            T.RandomResizedCrop(args.crop),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )
    dataset = torchvision.datasets.ImageFolder(str(args.data / "train"), transform)
    loader = DataLoader(
        dataset,
        batch_size=args.batch,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=args.device == "cuda",
        drop_last=True,
        persistent_workers=args.workers > 0,
    )
    device = torch.device(args.device)
    model = torchvision.models.alexnet(num_classes=len(dataset.classes)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    criterion = nn.CrossEntropyLoss()
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True

    done, start, timed_images = 0, 0.0, 0
    while done < args.batches:
        for images, labels in loader:
            if done == args.warmup:
                if args.device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            loss = criterion(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if done >= args.warmup:
                timed_images += len(labels)
            done += 1
            if done == args.batches:
                break
    if args.device == "cuda":
        torch.cuda.synchronize()
    rate = timed_images / (time.perf_counter() - start)
    print(f"user loop: {rate:.1f} img/s over {timed_images} images, {args.workers} workers")
    if args.json:
        args.json.write_text(json.dumps({"img_s": rate, "images": timed_images}))


if __name__ == "__main__":
    main()
