"""Image transforms in two halves, so that the loader workers never touch a float:

- views, per image in the workers, on uint8 pixels (C, H, W): the paper's resize, random crop and
  flip for training, the centre crop or ten crops for testing;
- ToNormalizedFloat, per batch on the device after the transfer: uint8 to float, the paper's
  PCA lighting, mean/std normalisation. A uint8 batch is a quarter of the bytes to collate, pin
  and copy.
"""

from collections.abc import Sequence

import torch
from torchvision.transforms.v2 import functional as F

# Principal components of ImageNet's RGB pixel values on a 0..1 scale (as published with
# fb.resnet.torch, computed on the training set): the paper's section 4.1 lighting augmentation.
IMAGENET_EIGENVALUES = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGENVECTORS = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


def _check_crop_fits(resize: int | None, crop: int) -> None:
    if resize is not None and crop > resize:
        raise ValueError(
            f"crop size {crop} is larger than the resized shorter side {resize}: a random crop "
            f"would not fit. Use a crop <= resize (the paper: resize 256, crop 227)."
        )


def resize_shorter_side(image: torch.Tensor, size: int | None) -> torch.Tensor:
    """Scales (C, H, W) so that min(H, W) == size; a no-op on a prepared copy (already 256)."""
    if size is None or min(image.shape[-2:]) == size:
        return image
    return F.resize(image, size, antialias=True)


class ResizeRandomCropFlip:
    """Section 4.1's training view: shorter side to `resize`, a random `crop` square, a horizontal
    flip half of the time. Crop and flip are slices of the uint8 tensor: no copy until collation."""

    def __init__(self, resize: int, crop: int) -> None:
        _check_crop_fits(resize, crop)
        self.resize, self.crop = resize, crop

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        image = resize_shorter_side(image, self.resize)
        height, width = image.shape[-2:]
        # torch's generator: seeded per worker by seed_everything(workers=True), like v2's.
        top = int(torch.randint(height - self.crop + 1, ()))
        left = int(torch.randint(width - self.crop + 1, ()))
        image = image[..., top : top + self.crop, left : left + self.crop]
        return image.flip(-1) if torch.rand(()) < 0.5 else image


class ResizeCenterCrop:
    """The test view: shorter side to `resize`, then the central `crop` square.

    resize=None is the notebook's view: the centre crop of the image as it is on disk, so images
    smaller than the crop are padded with black (kept as an option to reproduce the notebook).
    """

    def __init__(self, resize: int | None, crop: int) -> None:
        _check_crop_fits(resize, crop)
        self.resize, self.crop = resize, crop

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return F.center_crop(resize_shorter_side(image, self.resize), [self.crop, self.crop])


class ResizeTenCrop:
    """The paper's test view (section 4.1): the four corner and the centre `crop` squares and their
    mirrors, as one uint8 tensor of shape (10, 3, crop, crop). View 4 is ResizeCenterCrop's."""

    def __init__(self, resize: int | None, crop: int) -> None:
        _check_crop_fits(resize, crop)
        self.resize, self.crop = resize, crop

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.resize is None:
            # The notebook's models saw the centre crop of the image as stored; all ten views come
            # from that square (so the corner crops coincide with it).
            image = F.center_crop(image, [self.crop, self.crop])
        else:
            image = resize_shorter_side(image, self.resize)
        return torch.stack(F.ten_crop(image, [self.crop, self.crop]))


class ToNormalizedFloat:
    """A uint8 batch (..., 3, H, W) on the device to the float32 input of the network.

    With lighting_std > 0, section 4.1's PCA lighting: each image gets eigvec @ (alpha * eigval)
    added to all its 0..1 pixels, alpha ~ N(0, lighting_std) drawn per image. It changes intensity
    and colour of the illumination, not the geometry, so it is the same before or after the crop.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        lighting_std: float = 0.0,
        eigenvalues: Sequence[float] = IMAGENET_EIGENVALUES,
        eigenvectors: Sequence[Sequence[float]] = IMAGENET_EIGENVECTORS,
    ) -> None:
        if lighting_std < 0:
            raise ValueError(
                f"lighting std={lighting_std} must be >= 0 (the paper uses 0.1; 0 turns it off)"
            )
        self.lighting_std = lighting_std
        self.constants = {
            "mean": torch.tensor(mean, dtype=torch.float32),
            "std": torch.tensor(std, dtype=torch.float32),
            "eigenvalues": torch.tensor(eigenvalues, dtype=torch.float32),
            "eigenvectors": torch.tensor(eigenvectors, dtype=torch.float32),
        }
        self.on_device: dict[torch.device, dict[str, torch.Tensor]] = {}

    def _constants(self, device: torch.device) -> dict[str, torch.Tensor]:
        # Copied to each device once, not on every batch.
        if device not in self.on_device:
            self.on_device[device] = {k: v.to(device) for k, v in self.constants.items()}
        return self.on_device[device]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"expected a uint8 image batch, got {images.dtype}")
        c = self._constants(images.device)
        pixels = images.float().div_(255)
        if self.lighting_std > 0:
            per_image = pixels.shape[:-3]
            alpha = torch.randn(*per_image, 3, device=images.device) * self.lighting_std
            shift = (alpha * c["eigenvalues"]) @ c["eigenvectors"].T  # eigvec @ (alpha * eigval)
            pixels += shift[..., None, None]
        return pixels.sub_(c["mean"][:, None, None]).div_(c["std"][:, None, None])
