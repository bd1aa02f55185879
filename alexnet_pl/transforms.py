"""Image transforms: the paper's training augmentation, the centre-crop test view, PCA lighting."""

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.transforms import v2

# Principal components of ImageNet's RGB pixel values on a 0..1 scale (as published with
# fb.resnet.torch, computed on the training set): the paper's section 4.1 lighting augmentation.
IMAGENET_EIGENVALUES = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGENVECTORS = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


class PCALighting(nn.Module):
    """Adds a random multiple of the RGB principal components to every pixel of a float image.

    Section 4.1: each image gets `eigvec @ (alpha * eigval)` with alpha ~ N(0, std) drawn once per
    image, which changes the intensity and colour of the illumination but not the geometry.
    """

    def __init__(
        self,
        std: float = 0.1,
        eigenvalues: Sequence[float] = IMAGENET_EIGENVALUES,
        eigenvectors: Sequence[Sequence[float]] = IMAGENET_EIGENVECTORS,
    ) -> None:
        super().__init__()
        if std < 0:
            raise ValueError(
                f"lighting std={std} must be >= 0 (the paper uses 0.1; 0 turns it off)"
            )
        self.std = std
        self.register_buffer("eigenvalues", torch.tensor(eigenvalues, dtype=torch.float32))
        self.register_buffer("eigenvectors", torch.tensor(eigenvectors, dtype=torch.float32))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.std == 0:
            return image
        alpha = torch.randn(3) * self.std
        shift = self.eigenvectors @ (alpha * self.eigenvalues)
        return image + shift.to(image.dtype).view(3, 1, 1)


def _check_crop_fits(resize: int, crop: int) -> None:
    if crop > resize:
        raise ValueError(
            f"crop size {crop} is larger than the resized shorter side {resize}: a random crop "
            f"would not fit. Use a crop <= resize (the paper: resize 256, crop 227)."
        )


def paper_train_transform(
    resize: int, crop: int, lighting_std: float, mean: Sequence[float], std: Sequence[float]
) -> v2.Compose:
    """Section 4.1: shorter side to `resize`, random `crop` square, horizontal flip, PCA lighting.

    Geometry is done on the decoded PIL image, before anything becomes float: it is the cheap order.
    """
    _check_crop_fits(resize, crop)
    return v2.Compose(
        [
            v2.Resize(resize, antialias=True),
            v2.RandomCrop(crop),
            v2.RandomHorizontalFlip(),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            PCALighting(lighting_std),  # on 0..1 pixels, the scale its components were computed on
            v2.Normalize(mean, std),
        ]
    )


def center_crop_transform(
    resize: int | None, crop: int, mean: Sequence[float], std: Sequence[float]
) -> v2.Compose:
    """The test view: shorter side to `resize`, then the central `crop` square.

    resize=None is the notebook's transform: a centre crop of the image as it is on disk, so images
    smaller than the crop are padded with black (kept as an option to reproduce the notebook).
    """
    geometry: list[nn.Module] = []
    if resize is not None:
        _check_crop_fits(resize, crop)
        geometry.append(v2.Resize(resize, antialias=True))
    geometry.append(v2.CenterCrop(crop))
    return v2.Compose(
        [*geometry, v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    )


def ten_crop_transform(
    resize: int | None, crop: int, mean: Sequence[float], std: Sequence[float]
) -> v2.Compose:
    """The paper's test view (section 4.1): the four corner and the centre `crop` squares and their
    mirrors, as one tensor of shape (10, 3, crop, crop). View 4 is the plain centre crop."""
    geometry: list[nn.Module] = []
    if resize is not None:
        _check_crop_fits(resize, crop)
        geometry.append(v2.Resize(resize, antialias=True))
    else:
        # The notebook's models saw the centre crop of the image as stored; all ten views come
        # from that square (so the corner crops coincide with it).
        geometry.append(v2.CenterCrop(crop))
    return v2.Compose(
        [
            *geometry,
            v2.TenCrop(crop),
            v2.ToImage(),  # v2 transforms apply to each image of the tuple TenCrop returns
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
            stack_views,
        ]
    )


def stack_views(views: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([torch.as_tensor(view) for view in views])
