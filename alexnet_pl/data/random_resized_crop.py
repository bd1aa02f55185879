"""RandomResizedCrop + flip (`transforms=rrc`, training only): the training view of Inception and
ResNet, against which researchers compare the paper's fixed-scale crops. An example of a view in
one short file: it draws a window, and View (transforms.py) derives the rest, for both decoders.
"""

from collections.abc import Sequence

import torch
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as F

from alexnet_pl.data.preprocessing import Preprocessing
from alexnet_pl.data.transforms import CropWindow, View


class RandomResizedCropFlip(View):
    """A random part of the image as decoded, of `scale` of its area and `ratio` aspect ratio
    (torchvision's draw), resized to `crop` x `crop`, mirrored half of the time. The resize and
    the square of the preprocessing are not used: the part is drawn from the whole image."""

    def __init__(
        self,
        preprocessing: Preprocessing,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        flip: bool = True,
    ) -> None:
        self.preprocessing, self.flip = preprocessing, flip
        self.scale, self.ratio = [float(s) for s in scale], [float(r) for r in ratio]

    def window(self, height: int, width: int) -> CropWindow:
        # get_params reads only the image's size: a stand-in of that size, no pixels.
        size_only = torch.empty(()).expand(3, height, width)
        top, left, rows, columns = RandomResizedCrop.get_params(size_only, self.scale, self.ratio)
        flip = self.flip and bool(torch.rand(()) < 0.5)
        size = self.crop
        return CropWindow(top, left, rows / size, columns / size, flip, size)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        top, left, step_y, step_x, flip, size = self.window(*image.shape[-2:])
        rows, columns = round(step_y * size), round(step_x * size)
        # torchvision's crop-then-resize; the GPU path's filter also reads the pixels just past
        # the part's edge, so its edge pixels differ by a few levels.
        crop = F.resized_crop(image, top, left, rows, columns, [size, size], antialias=True)
        return crop.flip(-1) if flip else crop
