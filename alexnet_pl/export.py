"""Export a checkpoint for serving: `python -m alexnet_pl.export <ckpt> --format onnx|pt2`.

The exported model takes a normalised float batch of shape (N, 3, crop, crop) and returns logits.
The file records what a caller needs to prepare that batch and read the answer: class names and
the preprocessing: resize, crop, square, mean and std (ONNX metadata_props, or an extra file in
the torch.export archive).
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from alexnet_pl.checkpoint import TrainedModel, load_trained_model
from alexnet_pl.errors import reported_as_user_errors

METADATA_KEY = "alexnet_pl"  # one JSON entry: {"class_names": [...], "resize": ..., ...}


def preprocessing_metadata(model: TrainedModel) -> str:
    return json.dumps(
        {
            "class_names": model.class_names,
            **model.preprocessing.as_dict(),  # resize, crop, square, mean, std
            "input": "float32 RGB batch (N, 3, crop, crop), normalised with mean and std",
            "output": "logits (N, classes); softmax gives probabilities",
        }
    )


def example_batch(model: TrainedModel) -> torch.Tensor:
    crop = model.preprocessing.crop
    return torch.zeros(2, 3, crop, crop)


def batch_dimension() -> dict:
    return {"images": {0: torch.export.Dim("batch", min=1)}}


def export_onnx(model: TrainedModel, output: Path) -> None:
    import onnx

    torch.onnx.export(
        model.network,
        (example_batch(model),),
        str(output),
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=batch_dimension(),
        external_data=False,  # one self-contained file (AlexNet is well under ONNX's 2 GB limit)
    )
    proto = onnx.load(str(output))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, preprocessing_metadata(model)
    onnx.save(proto, str(output))


def export_pt2(model: TrainedModel, output: Path) -> None:
    program = torch.export.export(
        model.network, (example_batch(model),), dynamic_shapes=batch_dimension()
    )
    torch.export.save(program, output, extra_files={METADATA_KEY: preprocessing_metadata(model)})


EXPORTERS = {"onnx": export_onnx, "pt2": export_pt2}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alexnet_pl.export", description=__doc__)
    parser.add_argument("checkpoint", type=Path, help="a checkpoint written by alexnet_pl.train")
    parser.add_argument("--format", choices=sorted(EXPORTERS), default="onnx")
    parser.add_argument("--output", type=Path, help="default: the checkpoint's name and folder")
    args = parser.parse_args(argv)

    model = load_trained_model(args.checkpoint)
    output = args.output or args.checkpoint.with_suffix(f".{args.format}")
    partial = output.with_name(f"{output.stem}.partial{output.suffix}")
    EXPORTERS[args.format](model, partial)
    partial.replace(output)  # an interrupted export never leaves a file that looks finished
    print(output)
    return 0


if __name__ == "__main__":
    with reported_as_user_errors():  # the message alone, no traceback
        sys.exit(main())
