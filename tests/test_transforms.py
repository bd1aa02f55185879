import pytest
import torch

from alexnet_pl.checkpoint import TrainedModel
from alexnet_pl.data.preprocessing import Preprocessing
from alexnet_pl.data.transforms import (
    ResizeCenterCrop,
    ResizeRandomCropFlip,
    ResizeTenCrop,
    ToNormalizedFloat,
)
from alexnet_pl.evaluate import validation_images

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def noise_image(width: int, height: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(width * 1000 + height)
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)


def black_with_white_square(width: int, height: int, half_side: int = 20) -> torch.Tensor:
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    cy, cx = height // 2, width // 2
    image[:, cy - half_side : cy + half_side, cx - half_side : cx + half_side] = 255
    return image


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (120, 80), (341, 256)])
def test_paper_train_view_gives_a_uint8_227_crop_of_any_image(size):
    view = ResizeRandomCropFlip(Preprocessing(resize=256, crop=227))(noise_image(*size))
    assert view.shape == (3, 227, 227) and view.dtype == torch.uint8


def test_paper_train_view_is_random_and_the_val_view_is_not():
    image = noise_image(400, 300)
    train, val = (
        ResizeRandomCropFlip(Preprocessing(256, 227)),
        ResizeCenterCrop(Preprocessing(256, 227)),
    )
    assert not torch.equal(train(image), train(image))
    assert torch.equal(val(image), val(image))


def test_train_view_of_an_image_already_at_the_resize_is_a_crop_of_its_pixels():
    # A prepared copy (shorter side 256) is only cropped and flipped: its pixels are not resampled.
    # Each pixel holds its own coordinates: red = row, green = column.
    rows = torch.arange(256).view(256, 1).expand(256, 300)
    columns = torch.arange(300).view(1, 300).expand(256, 300) % 256
    image = torch.stack([rows, columns, rows]).to(torch.uint8)
    view = ResizeRandomCropFlip(Preprocessing(256, 227))(image)
    top = int(view[0, 0, 0])
    assert torch.equal(view[0, :, 0], torch.arange(top, top + 227).to(torch.uint8))
    steps = view[1, 0, 1:].int() - view[1, 0, :-1].int()
    assert set((steps % 256).tolist()) in ({1}, {255})  # consecutive columns, maybe mirrored


def test_val_view_takes_the_centre_of_the_resized_image():
    view = ResizeCenterCrop(Preprocessing(resize=256, crop=227))(black_with_white_square(512, 256))
    assert view[:, 113, 113].tolist() == [255, 255, 255]
    assert view[:, 0, 0].tolist() == [0, 0, 0]


def test_ten_crop_view_holds_the_centre_view_at_index_4_and_mirrors_after_it():
    image = noise_image(300, 260)
    views = ResizeTenCrop(Preprocessing(256, 227))(image)
    assert views.shape == (10, 3, 227, 227) and views.dtype == torch.uint8
    assert torch.equal(views[4], ResizeCenterCrop(Preprocessing(256, 227))(image))
    assert torch.equal(views[9], views[4].flip(-1))


def test_to_normalized_float_maps_uint8_through_mean_and_std():
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 2, 2)
    normalized = ToNormalizedFloat(MEAN, STD)(images.contiguous())
    assert normalized.dtype == torch.float32
    expected_black = [(0 - m) / s for m, s in zip(MEAN, STD, strict=True)]
    expected_white = [(1 - m) / s for m, s in zip(MEAN, STD, strict=True)]
    assert normalized[0, :, 0, 0].tolist() == pytest.approx(expected_black, abs=1e-5)
    assert normalized[1, :, 0, 0].tolist() == pytest.approx(expected_white, abs=1e-5)


def test_pca_lighting_gives_each_image_its_own_colour_shift_and_keeps_geometry():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 16, 24), dtype=torch.uint8)
    plain = ToNormalizedFloat([0, 0, 0], [1, 1, 1])(images)
    lit = ToNormalizedFloat([0, 0, 0], [1, 1, 1], lighting_std=0.1)(images)
    shift = lit - plain
    # One RGB offset per image: every pixel of an image moves the same way, edges stay put ...
    per_image = shift[:, :, :1, :1]
    assert torch.allclose(shift, per_image.expand_as(shift), atol=1e-6)
    # ... and the images got different offsets (alpha is drawn per image).
    assert not torch.allclose(per_image[0], per_image[1])
    assert per_image.abs().max() < 0.2  # 0.1 x the largest eigenvalue, a few sigma at most


def test_to_normalized_float_rejects_float_input_that_would_be_scaled_twice():
    with pytest.raises(TypeError, match="uint8"):
        ToNormalizedFloat(MEAN, STD)(torch.rand(1, 3, 4, 4))


def test_crop_larger_than_resize_is_rejected_with_both_numbers():
    with pytest.raises(
        ValueError, match="crop size 300 is larger than the resized shorter side 256"
    ):
        ResizeRandomCropFlip(Preprocessing(resize=256, crop=300))
    with pytest.raises(ValueError, match="crop size 300"):
        ResizeCenterCrop(Preprocessing(resize=256, crop=300))


def test_notebook_view_crops_without_resizing_and_pads_small_images():
    white = torch.full((3, 100, 100), 255, dtype=torch.uint8)
    view = ResizeCenterCrop(Preprocessing(resize=None, crop=227))(white)
    assert view.shape == (3, 227, 227)
    assert view[:, 113, 113].tolist() == [255, 255, 255]  # the image, unscaled, in the middle
    assert view[:, 0, 0].tolist() == [0, 0, 0]  # black padding around it


# The paper, section 2: "Given a rectangular image, we first rescaled the image such that the
# shorter side was of length 256, and then cropped out the central 256x256 patch from the resulting
# image"; section 4.1: random 224x224 patches and their reflections from those 256x256 images, and
# at test time the four corner patches and the centre patch, with their reflections.
def paper_square_columns(height: int, width: int, side: int = 256) -> tuple[float, float]:
    """The source columns [first, last] of the paper's central square of a landscape image."""
    scale = side / height  # shorter side (height) to 256
    margin = (width * scale - side) / 2  # cut equally from both ends of the longer side
    return margin / scale, (margin + side) / scale - 1


def coordinate_image(height: int, width: int) -> torch.Tensor:
    """Each pixel holds its column (red: low byte, green: high byte) and its row (blue)."""
    columns = torch.arange(width).expand(height, width)
    rows = torch.arange(height)[:, None].expand(height, width)
    return torch.stack([columns % 256, columns // 256, rows]).to(torch.uint8)


def columns_of(view: torch.Tensor) -> torch.Tensor:
    """The source columns of a coordinate_image view's first row."""
    return view[0, 0].long() + 256 * view[1, 0].long()


def test_paper_train_crops_come_from_the_central_square_of_a_prepared_image():
    # A 341x256 image (what a 500x375 photo is at shorter side 256): no resampling, so the pixels
    # say exactly which columns a crop took. The square is columns 42..297 (42.5 cut each side).
    first, last = paper_square_columns(256, 341)
    torch.manual_seed(0)
    image = coordinate_image(256, 341)
    crops = [columns_of(ResizeRandomCropFlip(Preprocessing(256, 227))(image)) for _ in range(150)]
    low, high = min(int(c.min()) for c in crops), max(int(c.max()) for c in crops)
    assert first - 0.5 <= low and high <= last + 0.5  # never outside the square ...
    assert (low, high) == (42, 297)  # ... and every column of it is reachable
    rectangle = [
        columns_of(ResizeRandomCropFlip(Preprocessing(256, 227, square=False))(image))
        for _ in range(60)
    ]
    assert min(int(c.min()) for c in rectangle) < 20 and max(int(c.max()) for c in rectangle) > 320


def test_paper_train_crops_of_a_500x375_photo_stay_inside_its_central_square():
    # Through the real resize: a smooth ramp whose red level is the source column (two columns a
    # level), so a crop's red range is the span of source columns it was resampled from.
    ramp = torch.linspace(0, 255, 500).round().to(torch.uint8).expand(375, 500)
    image = torch.stack([ramp, ramp, ramp])
    first, last = paper_square_columns(375, 500)  # 62.3 .. 436.7
    torch.manual_seed(0)
    for square, inside in ((True, True), (False, False)):
        view = ResizeRandomCropFlip(Preprocessing(256, 227, square=square))
        spans = [view(image)[0, 0].float() * 499 / 255 for _ in range(100)]
        low, high = min(float(s.min()) for s in spans), max(float(s.max()) for s in spans)
        assert (first - 3 <= low and high <= last + 3) == inside, (square, low, high)


def test_ten_crop_corners_are_the_corners_of_the_central_square_and_mirrored():
    image = coordinate_image(256, 341)
    views = ResizeTenCrop(Preprocessing(256, 227))(image)
    corners = [(int(columns_of(v)[0]), int(v[2, 0, 0])) for v in views[:4]]  # (column, row)
    assert corners == [(42, 0), (42 + 256 - 227, 0), (42, 256 - 227), (42 + 256 - 227, 256 - 227)]
    assert torch.equal(views[4], ResizeCenterCrop(Preprocessing(256, 227))(image))
    assert torch.equal(views[5:], views[:5].flip(-1))
    rectangle = ResizeTenCrop(Preprocessing(256, 227, square=False))(image)
    assert [int(columns_of(v)[0]) for v in rectangle[:4]] == [0, 341 - 227, 0, 341 - 227]
    assert torch.equal(rectangle[4], views[4])  # the centre crop is the same either way


def test_rectangle_config_and_old_checkpoints_mean_crops_from_the_whole_rectangle(
    compose_config, tmp_path
):
    assert compose_config().transforms.square is True  # the default is the paper's
    rectangle = compose_config("transforms=rectangle").transforms
    assert rectangle.square is False and rectangle.train.preprocessing.square is False
    # evaluate's ten crops follow the checkpoint's config; one made before the key existed was
    # trained on crops from the whole rectangle.
    (tmp_path / "val" / "a").mkdir(parents=True)
    contract = {"resize": 256, "crop": 227, "mean": [0.5] * 3, "std": [0.5] * 3}
    for saved, square in (({"square": True}, True), ({"square": False}, False), ({}, False)):
        model = TrainedModel(
            network=None,
            class_names=["a"],
            preprocessing=Preprocessing.from_config({**contract, **saved}),
            config={"transforms": {**contract, **saved}},
        )
        assert validation_images(model, tmp_path).transform.square is square
