"""Image transforms in two halves, so that the loader workers never touch a float:

- views, per image in the workers, on uint8 pixels (C, H, W): the paper's resize, random crop and
  flip for training, the centre crop or ten crops for testing. Each reads the preprocessing
  contract (preprocessing.py) and follows View's interface below; a new view is a short file
  (random_resized_crop.py is one);
- ToNormalizedFloat, per batch on the device after the transfer: uint8 to float, the paper's
  PCA lighting, mean/std normalisation. A uint8 batch is a quarter of the bytes to collate, pin
  and copy.
"""

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torchvision.transforms.v2 import functional as F

from alexnet_pl.data.batched_crops import crop_batch
from alexnet_pl.data.preprocessing import Preprocessing
from alexnet_pl.errors import UserError

# Principal components of ImageNet's RGB pixel values on a 0..1 scale (as published with
# fb.resnet.torch, computed on the training set): the paper's section 4.1 lighting augmentation.
IMAGENET_EIGENVALUES = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGENVECTORS = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


def resized_size(height: int, width: int, size: int | None) -> tuple[int, int]:
    """(height, width) after resize_shorter_side: torchvision's rule (shorter side to `size`, the
    longer one scaled and truncated to an integer)."""
    if size is None or min(height, width) == size:
        return height, width
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def resize_shorter_side(image: torch.Tensor, size: int | None) -> torch.Tensor:
    """Scales (C, H, W) so that min(H, W) == size; a no-op on a prepared copy (already 256)."""
    if size is None or min(image.shape[-2:]) == size:
        return image
    return F.resize(image, size, antialias=True)


def centre_offset(size: int, crop: int) -> int:
    """Where torchvision's center_crop starts along a side; negative where it pads (crop > size)."""
    return int(round((size - crop) / 2.0)) if crop <= size else -((crop - size) // 2)


class CropWindow(NamedTuple):
    """Where a view's `size` x `size` crop comes from, in the pixel coordinates of the image as
    decoded: output pixel (i, j) is centred on the source point (top + (i + 0.5) * step_y,
    left + (j + 0.5) * step_x), columns mirrored when `flip`. A step above 1 shrinks (antialiased,
    as the resize does). What data.decode=gpu workers send instead of pixels (batched_crops.py)."""

    top: float
    left: float
    step_y: float
    step_x: float
    flip: bool
    size: int


class Placement(NamedTuple):
    """A view's `crop` x `crop` square on the resized image: the resized (height, width), the
    square's top-left corner there (negative where a centre crop pads), whether it is mirrored."""

    resized: tuple[int, int]
    top: int
    left: int
    crop: int
    flip: bool

    def window(self, height: int, width: int) -> CropWindow:
        """The same crop in the coordinates of the (height, width) image before the resize."""
        step_y, step_x = height / self.resized[0], width / self.resized[1]
        top, left = self.top * step_y, self.left * step_x
        return CropWindow(top, left, step_y, step_x, self.flip, self.crop)

    def cut(self, image: torch.Tensor) -> torch.Tensor:
        """The crop from a (C, H, W) image that is already resized: a slice (the flip copies)."""
        view = image[..., self.top : self.top + self.crop, self.left : self.left + self.crop]
        return view.flip(-1) if self.flip else view


class View:
    """A view: what the loader workers do to each image, uint8 (3, H, W) -> uint8 (3, crop, crop).

    The interface a view follows (a new one subclasses View and sets or overrides these):
    - `preprocessing`: the contract (preprocessing.py); `crop` is its output size.
    - `window(height, width) -> CropWindow`: where the crop of an image of that size lies, drawn
      before the image is decoded (random draws from torch's generator, which Lightning seeds in
      every worker). This is all data.decode=gpu needs: the worker sends the file's bytes and the
      window, and the GPU decodes the batch and cuts all its windows at once (batched_crops.py).
      A view whose output is not one window of the image sets `window = None`, and
      data.decode=gpu refuses it by name.
    - `__call__(image)`: the crop on the CPU (data.decode=cpu and pil). By default it is computed
      from window() with the GPU path's own arithmetic (crop_batch on the CPU), so a view that
      defines window() alone works with every decoder; override it where a library is faster.
    """

    preprocessing: Preprocessing

    @property
    def crop(self) -> int:
        return self.preprocessing.crop

    @property
    def resize(self) -> int | None:
        return self.preprocessing.resize

    @property
    def square(self) -> bool:
        return self.preprocessing.square

    def window(self, height: int, width: int) -> CropWindow:
        raise NotImplementedError(f"{type(self).__name__} defines neither window() nor __call__")

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        window = torch.tensor([self.window(*image.shape[-2:])], dtype=torch.float64)
        return crop_batch([image], window)[0]


class ResizeRandomCropFlip(View):
    """Section 4.1's training view: shorter side to `resize`, a random `crop` square, a horizontal
    flip half of the time. The crop is a slice of the uint8 tensor (no copy until collation).

    square=True is the paper (section 2: "we first rescaled the image such that the shorter side
    was of length 256, and then cropped out the central 256x256 patch"; section 4.1 draws the crops
    from those 256x256 images): a 500x375 photo, resized to 341x256, never shows its outer 42
    columns on either side. square=False draws from the whole resized rectangle
    (conf/transforms/rectangle.yaml).

    The paper's augmentations one by one: flip=False never mirrors; random_crop=False takes the
    centre crop every time (section 4.1: without the random crops "our network suffers from
    substantial overfitting").
    """

    def __init__(
        self, preprocessing: Preprocessing, flip: bool = True, random_crop: bool = True
    ) -> None:
        self.preprocessing, self.flip, self.random_crop = preprocessing, flip, random_crop

    def place(self, height: int, width: int) -> Placement:
        """Draws a crop for a (height, width) image; torch's generator, seeded per worker by
        seed_everything(workers=True), like torchvision's own transforms."""
        resized_height, resized_width = resized_size(height, width, self.resize)
        top, left, span_y, span_x = 0, 0, resized_height, resized_width
        if self.square:
            side = min(resized_height, resized_width)  # == resize
            top, left = centre_offset(resized_height, side), centre_offset(resized_width, side)
            span_y = span_x = side
        if self.random_crop:
            top += int(torch.randint(span_y - self.crop + 1, ()))
            left += int(torch.randint(span_x - self.crop + 1, ()))
        else:  # the centre crop: the same pixels as the validation view
            top = centre_offset(resized_height, self.crop)
            left = centre_offset(resized_width, self.crop)
        flip = self.flip and bool(torch.rand(()) < 0.5)
        return Placement((resized_height, resized_width), top, left, self.crop, flip)

    def window(self, height: int, width: int) -> CropWindow:
        return self.place(height, width).window(height, width)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        placement = self.place(*image.shape[-2:])
        return placement.cut(resize_shorter_side(image, self.resize))


class ResizeCenterCrop(View):
    """The test view: shorter side to `resize`, then the central `crop` square (the same whether
    the training crops came from the central square or the whole rectangle: it lies inside both).

    resize=None is the notebook's view: the centre crop of the image as it is on disk, so images
    smaller than the crop are padded with black (kept as an option to reproduce the notebook).
    """

    def __init__(self, preprocessing: Preprocessing) -> None:
        self.preprocessing = preprocessing

    def place(self, height: int, width: int) -> Placement:
        resized_height, resized_width = resized_size(height, width, self.resize)
        top = centre_offset(resized_height, self.crop)
        left = centre_offset(resized_width, self.crop)
        return Placement((resized_height, resized_width), top, left, self.crop, False)

    def window(self, height: int, width: int) -> CropWindow:
        return self.place(height, width).window(height, width)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return F.center_crop(resize_shorter_side(image, self.resize), [self.crop, self.crop])


class ResizeTenCrop(View):
    """The paper's test view (section 4.1): the four corner and the centre `crop` squares and their
    mirrors, as one uint8 tensor of shape (10, 3, crop, crop); views 5-9 mirror views 0-4.

    square=True (the paper) takes the corners from the central `resize` x `resize` square; False
    from the corners of the whole resized rectangle (what checkpoints made before the square was
    added were trained with). View 4 is ResizeCenterCrop's either way.
    """

    window = None  # ten crops, not one window: evaluate decodes on the CPU

    def __init__(self, preprocessing: Preprocessing) -> None:
        self.preprocessing = preprocessing

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        crop = self.crop
        if self.resize is None:
            # The notebook's models saw the centre crop of the image as stored; all ten views come
            # from that square (so the corner crops coincide with it).
            image = F.center_crop(image, [crop, crop])
        else:
            image = resize_shorter_side(image, self.resize)
        corners_from = image
        if self.square:
            side = min(image.shape[-2:])
            corners_from = F.center_crop(image, [side, side])
        # five_crop: top-left, top-right, bottom-left, bottom-right, centre (of corners_from)
        corners = F.five_crop(corners_from, [crop, crop])[:4]
        views = torch.stack([*corners, F.center_crop(image, [crop, crop])])
        return torch.cat([views, views.flip(-1)])


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
            raise UserError(
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
