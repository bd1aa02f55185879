import pytest
import torch
from PIL import Image

from alexnet_pl.transforms import PCALighting, center_crop_transform, paper_train_transform

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def noise_image(width: int, height: int) -> Image.Image:
    generator = torch.Generator().manual_seed(width * 1000 + height)
    pixels = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator)
    return Image.fromarray(pixels.numpy())


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (120, 80)])
def test_paper_train_transform_gives_a_normalised_227_crop_of_any_image(size):
    transform = paper_train_transform(resize=256, crop=227, lighting_std=0.1, mean=MEAN, std=STD)
    image = transform(noise_image(*size))
    assert image.shape == (3, 227, 227)
    assert image.dtype == torch.float32
    # Normalised pixels lie in (0 - mean) / std .. (1 - mean) / std, plus a small lighting shift.
    assert image.min() > -2.5 and image.max() < 3.0
    assert image.mean().abs() < 0.5


def test_paper_train_transform_is_random_and_the_val_transform_is_not():
    image = noise_image(400, 300)
    train = paper_train_transform(resize=256, crop=227, lighting_std=0.1, mean=MEAN, std=STD)
    val = center_crop_transform(resize=256, crop=227, mean=MEAN, std=STD)
    assert not torch.equal(train(image), train(image))
    assert torch.equal(val(image), val(image))
    assert val(image).shape == (3, 227, 227)


def test_val_transform_takes_the_centre_of_the_resized_image():
    # A white square in the middle of a black image stays in the middle of the centre crop.
    image = Image.new("RGB", (512, 256), "black")
    image.paste((255, 255, 255), (256 - 20, 128 - 20, 256 + 20, 128 + 20))
    view = center_crop_transform(resize=256, crop=227, mean=[0, 0, 0], std=[1, 1, 1])(image)
    assert view[:, 113, 113].tolist() == [1.0, 1.0, 1.0]
    assert view[:, 0, 0].tolist() == [0.0, 0.0, 0.0]


def test_pca_lighting_changes_colour_but_not_geometry():
    torch.manual_seed(0)
    image = torch.rand(3, 32, 48)
    lit = PCALighting(std=0.1)(image)
    shift = lit - image
    assert shift.abs().max() > 0  # the colour changed ...
    # ... by one RGB offset for the whole image: every pixel moves the same way, edges stay put.
    assert torch.allclose(shift, shift[:, :1, :1].expand_as(shift), atol=1e-6)


def test_pca_lighting_with_zero_std_is_the_identity():
    image = torch.rand(3, 8, 8)
    assert torch.equal(PCALighting(std=0.0)(image), image)


def test_crop_larger_than_resize_is_rejected_with_both_numbers():
    with pytest.raises(
        ValueError, match="crop size 300 is larger than the resized shorter side 256"
    ):
        paper_train_transform(resize=256, crop=300, lighting_std=0.1, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="crop size 300"):
        center_crop_transform(resize=256, crop=300, mean=MEAN, std=STD)


def test_notebook_transform_crops_without_resizing_and_pads_small_images():
    notebook = center_crop_transform(resize=None, crop=227, mean=[0, 0, 0], std=[1, 1, 1])
    white = Image.new("RGB", (100, 100), "white")
    view = notebook(white)
    assert view.shape == (3, 227, 227)
    assert view[:, 113, 113].tolist() == [1.0, 1.0, 1.0]  # the image, unscaled, in the middle
    assert view[:, 0, 0].tolist() == [0.0, 0.0, 0.0]  # black padding around it
