"""Top-5 classes for new images: `python -m alexnet_pl.predict <ckpt> <images or folders> [--json]`.

Images of any size and mode (greyscale, CMYK, RGBA, palette PNG) are converted to RGB and given the
checkpoint's own test view (resize, centre crop, normalisation). A file that cannot be read is
reported by name and the others are still predicted; the exit status is then 1.
"""

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from alexnet_pl.checkpoint import TrainedModel, load_trained_model
from alexnet_pl.data.bad_images import DECODE_ERRORS
from alexnet_pl.data.decoding import decode_on_cpu
from alexnet_pl.data.transforms import ResizeCenterCrop, ToNormalizedFloat
from alexnet_pl.errors import reported_as_user_errors

WNID = re.compile(r"n\d{8}")


def readable_class_names(class_names: list[str]) -> list[str]:
    """Folder names, except for a 1000-class ImageNet model: its WordNet ids (n01440764, ...) in
    sorted order are exactly the order of the human-readable names torchvision ships."""
    if len(class_names) == 1000 and all(WNID.fullmatch(name) for name in class_names):
        from torchvision.models import AlexNet_Weights  # the names only: no weights are loaded

        return list(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])
    return class_names


def image_files(paths: list[Path]) -> Iterator[Path]:
    """The files named, and every file under the folders named, in a stable order."""
    for path in paths:
        if path.is_dir():
            visible = (p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            yield from sorted(visible)
        else:
            yield path


class CentreCropInput:
    """The decoder, view and normalisation that training validated with, for one file."""

    def __init__(self, model: TrainedModel) -> None:
        self.view = ResizeCenterCrop(model.preprocessing)
        self.to_float = ToNormalizedFloat(model.preprocessing.mean, model.preprocessing.std)

    def __call__(self, path: Path) -> torch.Tensor:
        return self.to_float(self.view(decode_on_cpu(str(path)))[None])


@torch.no_grad()
def predict_file(
    model: TrainedModel, network_input: CentreCropInput, names: list[str], path: Path, top_k: int
) -> list:
    probabilities = model.network(network_input(path)).softmax(dim=1)[0]
    values, indices = probabilities.topk(min(top_k, len(names)))
    ranked = zip(values.tolist(), indices.tolist(), strict=True)
    return [{"class": names[index], "probability": value} for value, index in ranked]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alexnet_pl.predict", description=__doc__)
    parser.add_argument("checkpoint", type=Path, help="a checkpoint written by alexnet_pl.train")
    parser.add_argument("images", type=Path, nargs="+", help="image files or folders of them")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    model = load_trained_model(args.checkpoint)
    network_input = CentreCropInput(model)
    names = readable_class_names(model.class_names)
    predictions, failures = {}, {}
    for path in image_files(args.images):
        try:
            predictions[str(path)] = predict_file(model, network_input, names, path, args.top_k)
        except DECODE_ERRORS as error:  # the same failures training skips
            failures[str(path)] = f"{type(error).__name__}: {error}"
            print(f"cannot read {path}: {error}", file=sys.stderr)

    if args.json:
        print(json.dumps({"predictions": predictions, "failures": failures}, indent=2))
    else:
        for path, top in predictions.items():
            print(path)
            for rank, guess in enumerate(top, start=1):
                print(f"  {rank}. {guess['probability']:7.2%}  {guess['class']}")
    if failures:
        total = len(predictions) + len(failures)
        print(f"{len(failures)} of {total} files could not be read", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    with reported_as_user_errors():  # the message alone, no traceback
        sys.exit(main())
