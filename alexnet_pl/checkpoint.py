"""A trained model back from a training checkpoint alone: network, class names, preprocessing.

Training stores the resolved run config and the class names in every checkpoint (module.py), so
evaluate, predict and export need nothing else. Every checkpoint is read with
torch.load(weights_only=True): a checkpoint holds only tensors, numbers, strings, lists and dicts,
and one that holds any other pickled object (which unpickling could turn into running code) is
refused before that object is built.
"""

import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from alexnet_pl.data.preprocessing import Preprocessing
from alexnet_pl.errors import MissingInput, UserError
from alexnet_pl.lrn import LocalResponseNorm

NETWORK_PREFIX = "network."  # AlexNetModule keeps the network under self.network

# What the saved weights mean, stored in every checkpoint under FORMAT_KEY (absent: format 1).
#   1: torchvision's classifier (dropout before fc6 and fc7, so fc6, fc7, fc8 are classifier.1, .4,
#      .6) and, with model.groups=2, response normalisation windows that cross between the towers.
#   2: the paper's classifier (dropout after fc6 and fc7: classifier.0, .3, .6) and normalisation
#      within each tower (network.py).
FORMAT_KEY = "alexnet_pl_format"
CURRENT_FORMAT = 2
FORMAT_1_CLASSIFIER = {"classifier.1.": "classifier.0.", "classifier.4.": "classifier.3."}
# torch.load(weights_only=True) names the first object it refused to build in its message.
REFUSED_OBJECT = re.compile(r"GLOBAL (\S+) (?:was not an allowed global|whose module)")


class UnsafeCheckpointError(UserError):
    """The file holds a pickled object that is not plain data; it was not loaded."""


@dataclass
class TrainedModel:
    network: nn.Module
    class_names: list[str]
    preprocessing: Preprocessing  # what an image must look like for the network
    config: dict[str, Any]


def read_checkpoint(path: str | Path, mmap: bool = False) -> Any:
    """torch.load with weights_only=True, on the CPU. mmap=True leaves the tensors on disk until
    used (for reading the config alone). Raises UnsafeCheckpointError, naming the file and the
    object, for a file whose unpickling would build anything but plain data."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        refused = REFUSED_OBJECT.search(str(error))
        if refused is None:
            raise  # a damaged or foreign file: the caller says so
        raise UnsafeCheckpointError(
            f"checkpoint {path} was not loaded: it holds a pickled Python object "
            f"({refused.group(1)}), and unpickling it could run code on this machine. Checkpoints "
            "written by alexnet_pl.train hold only tensors, numbers, strings, lists and dicts. If "
            "you trust where the file came from, load it yourself with torch.load(..., "
            "weights_only=False) and save only its plain contents"
        ) from None


def checkpoint_format(checkpoint: dict[str, Any]) -> int:
    return int(checkpoint.get(FORMAT_KEY, 1))


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MissingInput(f"checkpoint {path} does not exist")
    try:
        checkpoint = read_checkpoint(path)
    except UnsafeCheckpointError:
        raise
    except Exception as error:  # torch raises many kinds for a damaged file
        raise UserError(f"checkpoint {path} could not be read ({error}); is it whole?") from error
    expected = ("state_dict", "config", "class_names")
    missing = [key for key in expected if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise UserError(
            f"checkpoint {path} is not an alexnet-pl training checkpoint (it has no {missing}); "
            "use a last.ckpt or best-*.ckpt written by `python -m alexnet_pl.train`"
        )
    if checkpoint_format(checkpoint) > CURRENT_FORMAT:
        raise UserError(
            f"checkpoint {path} has format {checkpoint_format(checkpoint)}, newer than this "
            f"alexnet-pl reads ({CURRENT_FORMAT}); update alexnet-pl to the version that wrote it"
        )
    return checkpoint


def network_weights(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network's state_dict, with format 1's classifier keys moved to where format 2 keeps the
    same layers (the Linear layers are the same; only the dropouts moved around them)."""
    weights = {
        key[len(NETWORK_PREFIX) :]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(NETWORK_PREFIX)
    }
    if checkpoint_format(checkpoint) == 1:
        for old, new in FORMAT_1_CLASSIFIER.items():
            weights = {
                new + key[len(old) :] if key.startswith(old) else key: value
                for key, value in weights.items()
            }
    return weights


def trained_model_from(checkpoint: dict[str, Any], path: str | Path) -> TrainedModel:
    """The network in eval mode with its weights, and what the data must look like for it."""
    config = checkpoint["config"]
    # Keys a checkpoint's config lacks (written before an option existed) take AlexNet's
    # defaults, which are the paper's and what those checkpoints were trained with.
    network = instantiate(config["model"])
    if checkpoint_format(checkpoint) == 1:
        # Format 1 normalised across the towers: give it back the network it was trained as. At
        # test time dropout is an identity, so its position does not change the outputs.
        for layer in network.modules():
            if isinstance(layer, LocalResponseNorm):
                layer.groups = 1
    try:
        network.load_state_dict(network_weights(checkpoint))
    except RuntimeError as error:
        message = f"checkpoint {path} does not match its own model config: {error}"
        raise UserError(message) from error
    return TrainedModel(
        network=network.eval(),
        class_names=list(checkpoint["class_names"]),
        preprocessing=Preprocessing.from_config(config["transforms"]),
        config=config,
    )


def load_trained_model(path: str | Path) -> TrainedModel:
    path = Path(path)
    return trained_model_from(_read(path), path)
