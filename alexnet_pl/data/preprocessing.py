"""The preprocessing contract: what a trained network expects of an image.

One node of the config (`transforms.preprocessing`, built from `transforms.resize`, `crop`,
`square`, `mean` and `std`) and one class. The training views, evaluate's ten crops, predict,
export's metadata and the TensorBoard input view all read it, and every checkpoint stores it, so
a model is used later exactly as it was trained. Augmentation (random crops, flips, lighting) is
not part of it: it happens in training only.
"""

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from alexnet_pl.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # ImageNet RGB statistics on a 0..1 scale
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """resize: the shorter side before the crop (None: the notebook's crop of the image as stored);
    crop: the network's input size; square: the random and ten test crops come from the central
    resize x resize square (the paper) rather than the whole resized rectangle; mean, std: the
    normalisation of the 0..1 RGB pixels."""

    resize: int | None = 256
    crop: int = 227
    square: bool = True
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    def __post_init__(self) -> None:
        # Tuples, also from Hydra's ListConfig: hashable, picklable into the loader workers.
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.resize is not None and self.crop > self.resize:
            raise UserError(
                f"crop size {self.crop} is larger than the resized shorter side {self.resize}: a "
                "random crop would not fit. Use a crop <= resize (the paper: resize 256, crop 227)."
            )

    def as_dict(self) -> dict[str, Any]:
        return {key: list(v) if isinstance(v, tuple) else v for key, v in asdict(self).items()}

    @classmethod
    def from_config(cls, transforms: Mapping[str, Any]) -> "Preprocessing":
        """From a run's `transforms` config as a checkpoint stores it. Configs written before the
        node existed hold the same keys one level up; those written before `square` existed were
        trained on crops from the whole rectangle, hence square=False when it is missing."""
        node = transforms.get("preprocessing") or transforms
        return cls(
            resize=node.get("resize"),
            crop=node["crop"],
            square=node.get("square", False),
            mean=node["mean"],
            std=node["std"],
        )
