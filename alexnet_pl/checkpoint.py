"""A trained model back from a training checkpoint alone: network, class names, preprocessing.

Training stores the resolved run config and the class names in every checkpoint (run_record.py),
so evaluate, predict and export need nothing else.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

NETWORK_PREFIX = "network."  # AlexNetModule keeps the network under self.network


@dataclass
class TrainedModel:
    network: nn.Module
    class_names: list[str]
    resize: int | None  # shorter side before the crop; None: the notebook's crop without resize
    crop: int
    mean: list[float]
    std: list[float]
    config: dict[str, Any]


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        # weights_only=False: the checkpoint holds plain config dicts as well as tensors; only load
        # checkpoints you trust, as with any pickle.
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many kinds for a damaged file
        raise ValueError(f"checkpoint {path} could not be read ({error}); is it whole?") from error
    expected = ("state_dict", "config", "class_names")
    missing = [key for key in expected if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise ValueError(
            f"checkpoint {path} is not an alexnet-pl training checkpoint (it has no {missing}); "
            "use a last.ckpt or best-*.ckpt written by `python -m alexnet_pl.train`"
        )
    return checkpoint


def load_trained_model(path: str | Path) -> TrainedModel:
    """The network in eval mode with its weights, and what the data must look like for it."""
    path = Path(path)
    checkpoint = _read(path)
    config = checkpoint["config"]
    network = instantiate(config["model"])
    weights = {
        key[len(NETWORK_PREFIX) :]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(NETWORK_PREFIX)
    }
    try:
        network.load_state_dict(weights)
    except RuntimeError as error:
        message = f"checkpoint {path} does not match its own model config: {error}"
        raise ValueError(message) from error
    transforms = config["transforms"]
    return TrainedModel(
        network=network.eval(),
        class_names=list(checkpoint["class_names"]),
        resize=transforms.get("resize"),
        crop=transforms["crop"],
        mean=list(transforms["mean"]),
        std=list(transforms["std"]),
        config=config,
    )
