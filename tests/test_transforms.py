import pytest
import torch

from alexnet_pl.data.transforms import (
    ResizeCenterCrop,
    ResizeRandomCropFlip,
    ResizeTenCrop,
    ToNormalizedFloat,
)

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
    view = ResizeRandomCropFlip(resize=256, crop=227)(noise_image(*size))
    assert view.shape == (3, 227, 227) and view.dtype == torch.uint8


def test_paper_train_view_is_random_and_the_val_view_is_not():
    image = noise_image(400, 300)
    train, val = ResizeRandomCropFlip(256, 227), ResizeCenterCrop(256, 227)
    assert not torch.equal(train(image), train(image))
    assert torch.equal(val(image), val(image))


def test_train_view_of_an_image_already_at_the_resize_is_a_crop_of_its_pixels():
    # A prepared copy (shorter side 256) is only cropped and flipped: its pixels are not resampled.
    # Each pixel holds its own coordinates: red = row, green = column.
    rows = torch.arange(256).view(256, 1).expand(256, 300)
    columns = torch.arange(300).view(1, 300).expand(256, 300) % 256
    image = torch.stack([rows, columns, rows]).to(torch.uint8)
    view = ResizeRandomCropFlip(256, 227)(image)
    top = int(view[0, 0, 0])
    assert torch.equal(view[0, :, 0], torch.arange(top, top + 227).to(torch.uint8))
    steps = view[1, 0, 1:].int() - view[1, 0, :-1].int()
    assert set((steps % 256).tolist()) in ({1}, {255})  # consecutive columns, maybe mirrored


def test_val_view_takes_the_centre_of_the_resized_image():
    view = ResizeCenterCrop(resize=256, crop=227)(black_with_white_square(512, 256))
    assert view[:, 113, 113].tolist() == [255, 255, 255]
    assert view[:, 0, 0].tolist() == [0, 0, 0]


def test_ten_crop_view_holds_the_centre_view_at_index_4_and_mirrors_after_it():
    image = noise_image(300, 260)
    views = ResizeTenCrop(256, 227)(image)
    assert views.shape == (10, 3, 227, 227) and views.dtype == torch.uint8
    assert torch.equal(views[4], ResizeCenterCrop(256, 227)(image))
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
        ResizeRandomCropFlip(resize=256, crop=300)
    with pytest.raises(ValueError, match="crop size 300"):
        ResizeCenterCrop(resize=256, crop=300)


def test_notebook_view_crops_without_resizing_and_pads_small_images():
    white = torch.full((3, 100, 100), 255, dtype=torch.uint8)
    view = ResizeCenterCrop(resize=None, crop=227)(white)
    assert view.shape == (3, 227, 227)
    assert view[:, 113, 113].tolist() == [255, 255, 255]  # the image, unscaled, in the middle
    assert view[:, 0, 0].tolist() == [0, 0, 0]  # black padding around it
