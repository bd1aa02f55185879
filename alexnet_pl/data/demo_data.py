"""A small built-in dataset so the whole pipeline runs anywhere: ten shapes, drawn as JPEG files.

Every image has a random background and foreground colour, position, size, rotation and a little
noise and clutter, so no single pixel or colour gives the class away: the network has to learn the
shapes. Files go to root/train/<class>/*.JPEG and root/val/<class>/*.JPEG, the ImageNet layout, and
are read by exactly the same DataModule and transforms as ImageNet.
"""

import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from alexnet_pl.data.datamodule import ImageFolderDataModule

SHAPES = (
    "checkerboard",
    "circle",
    "cross",
    "diagonal_stripes",
    "dots",
    "horizontal_stripes",
    "ring",
    "star",
    "triangle",
    "vertical_stripes",
)
COMPLETE_MARKER = ".complete"


def _polygon(center: tuple[float, float], radii: list[float], rotation: float) -> list[tuple]:
    """Points at equal angles around `center`, one per radius (a star alternates two radii)."""
    step = 2 * math.pi / len(radii)
    return [
        (
            center[0] + r * math.cos(rotation + i * step),
            center[1] + r * math.sin(rotation + i * step),
        )
        for i, r in enumerate(radii)
    ]


def _draw_pattern(draw: ImageDraw.ImageDraw, shape: str, box, cells: int, fill) -> None:
    """Stripes, checks or dots filling `box` with `cells` repeats a side."""
    left, top, right, bottom = box
    size = (right - left) / cells
    if shape == "diagonal_stripes":  # lines y = x - c across the box, one every `size` along x
        width = max(1, round(size / (2 * math.sqrt(2))))  # half of the perpendicular period
        offset = left - bottom
        while offset < right - top:
            start, end = max(left, top + offset), min(right, bottom + offset)
            if end - start >= 1:
                draw.line([(start, start - offset), (end, end - offset)], fill=fill, width=width)
            offset += size
        return
    for row in range(cells):
        for col in range(cells):
            x0, y0 = left + col * size, top + row * size
            cell = (x0, y0, x0 + size, y0 + size)
            if shape == "horizontal_stripes" and row % 2 == 0:
                draw.rectangle((left, y0, right, y0 + size / 2 + 1), fill=fill)
            elif shape == "vertical_stripes" and col % 2 == 0:
                draw.rectangle((x0, top, x0 + size / 2 + 1, bottom), fill=fill)
            elif shape == "checkerboard" and (row + col) % 2 == 0:
                draw.rectangle(cell, fill=fill)
            elif shape == "dots":
                inset = size * 0.2
                draw.ellipse(
                    (x0 + inset, y0 + inset, x0 + size - inset, y0 + size - inset), fill=fill
                )


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, center, radius, rotation, fill, background):
    x, y = center
    box = (x - radius, y - radius, x + radius, y + radius)
    if shape in (
        "horizontal_stripes",
        "vertical_stripes",
        "diagonal_stripes",
        "checkerboard",
        "dots",
    ):
        _draw_pattern(draw, shape, box, cells=3 + int(rotation) % 3, fill=fill)
    elif shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "ring":
        draw.ellipse(box, fill=fill)
        inner = radius * 0.55
        draw.ellipse((x - inner, y - inner, x + inner, y + inner), fill=background)
    elif shape == "triangle":
        draw.polygon(_polygon(center, [radius] * 3, rotation), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(center, [radius, radius * 0.4] * 5, rotation), fill=fill)
    elif shape == "cross":
        arm = radius * 0.3
        draw.rectangle((x - radius, y - arm, x + radius, y + arm), fill=fill)
        draw.rectangle((x - arm, y - radius, x + arm, y + radius), fill=fill)
    else:
        raise ValueError(f"unknown demo shape {shape!r}")


def _random_colour(rng: np.random.Generator, low: int, high: int) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(low, high, size=3))


def draw_image(shape: str, rng: np.random.Generator, min_side: int, max_side: int) -> Image.Image:
    """One picture of `shape`; size, aspect ratio, colours, placement and clutter from `rng`."""
    width, height = (int(s) for s in rng.integers(min_side, max_side + 1, size=2))
    # Any hue for both, but the shape is always the lighter of the two: the task is then about
    # form, as on MNIST, and small enough for a CPU. No colour or pixel value tells the class.
    background = _random_colour(rng, 0, 110)
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    short = min(width, height)
    for _ in range(int(rng.integers(0, 3))):  # clutter: thin lines that belong to no class
        points = [tuple(int(v) for v in rng.integers(0, (width, height))) for _ in range(2)]
        draw.line(points, fill=_random_colour(rng, 0, 256), width=1)
    radius = short * rng.uniform(0.28, 0.45)
    center = (
        rng.uniform(radius, width - radius),
        rng.uniform(radius, height - radius),
    )
    fill = _random_colour(rng, 150, 256)
    _draw_shape(draw, shape, center, radius, rng.uniform(0, 2 * math.pi), fill, background)
    noise = rng.normal(0, 6, size=(height, width, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def generate_demo_dataset(
    root: Path,
    train_per_class: int,
    val_per_class: int,
    min_side: int,
    max_side: int,
    seed: int = 0,
) -> None:
    """Writes the dataset to `root` once; a finished folder is marked and reused.

    Files are drawn into a temporary folder beside `root` and moved into place at the end, so an
    interrupted generation never leaves a half-filled dataset that looks finished.
    """
    root = Path(root).expanduser()
    recipe = (
        f"train_per_class={train_per_class} val_per_class={val_per_class} "
        f"min_side={min_side} max_side={max_side} seed={seed} shapes={','.join(SHAPES)}\n"
    )
    marker = root / COMPLETE_MARKER
    if marker.exists() and marker.read_text() == recipe:
        return
    if root.exists() and not marker.exists():
        raise FileExistsError(
            f"data.root={root} exists but is not a generated demo dataset (no {COMPLETE_MARKER} "
            "file); the demo will not overwrite it: pick another data.root or remove the folder"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    for split_index, (split, count) in enumerate(
        (("train", train_per_class), ("val", val_per_class))
    ):
        for class_index, shape in enumerate(SHAPES):
            folder = staging / split / shape
            folder.mkdir(parents=True)
            # One stream per (seed, split, class): the same files whatever else changes.
            rng = np.random.default_rng([seed, split_index, class_index])
            for i in range(count):
                image = draw_image(shape, rng, min_side, max_side)
                image.save(folder / f"{shape}_{i:05d}.JPEG", quality=90)
    (staging / COMPLETE_MARKER).write_text(recipe)
    if root.exists():  # made with another recipe: replace it
        shutil.rmtree(root)
    os.replace(staging, root)


class DemoDataModule(ImageFolderDataModule):
    """The ImageFolder DataModule on the generated shapes, made on first use (rank 0 only)."""

    def __init__(
        self,
        train_per_class: int = 200,
        val_per_class: int = 50,
        min_side: int = 80,
        max_side: int = 160,
        seed: int = 0,
        **image_folder_args,
    ) -> None:
        super().__init__(**image_folder_args)
        self.generation = dict(
            train_per_class=train_per_class,
            val_per_class=val_per_class,
            min_side=min_side,
            max_side=max_side,
            seed=seed,
        )

    def prepare_data(self) -> None:
        generate_demo_dataset(self.root, **self.generation)
