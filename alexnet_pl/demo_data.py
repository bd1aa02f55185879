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
from PIL import Image, ImageDraw, ImageFilter

from alexnet_pl.datamodule import ImageFolderDataModule

SHAPES = (
    "circle",
    "cross",
    "crescent",
    "diamond",
    "hexagon",
    "ring",
    "semicircle",
    "square",
    "star",
    "triangle",
)
COMPLETE_MARKER = ".complete"


def _polygon(center: tuple[float, float], radii: list[float], rotation: float) -> list[tuple]:
    """Points at equal angles around `center`, one per radius (a star alternates two radii)."""
    step = 2 * math.pi / len(radii)
    return [
        (center[0] + r * math.cos(rotation + i * step), center[1] + r * math.sin(rotation + i * step))
        for i, r in enumerate(radii)
    ]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, center, radius, rotation, fill, background):
    x, y = center
    box = (x - radius, y - radius, x + radius, y + radius)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "ring":
        draw.ellipse(box, fill=fill)
        inner = radius * 0.55
        draw.ellipse((x - inner, y - inner, x + inner, y + inner), fill=background)
    elif shape == "crescent":
        draw.ellipse(box, fill=fill)
        dx, dy = 0.45 * radius * math.cos(rotation), 0.45 * radius * math.sin(rotation)
        draw.ellipse((x - radius + dx, y - radius + dy, x + radius + dx, y + radius + dy), fill=background)
    elif shape == "semicircle":
        start = math.degrees(rotation)
        draw.pieslice(box, start, start + 180, fill=fill)
    elif shape == "square":
        draw.polygon(_polygon(center, [radius] * 4, math.pi / 4 + rotation * 0.2), fill=fill)
    elif shape == "diamond":
        draw.polygon(_polygon(center, [radius, radius * 0.6] * 2, rotation * 0.2), fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(center, [radius] * 3, rotation), fill=fill)
    elif shape == "hexagon":
        draw.polygon(_polygon(center, [radius] * 6, rotation), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(center, [radius, radius * 0.4] * 5, rotation), fill=fill)
    elif shape == "cross":
        arm = radius * 0.3
        for angle in (rotation * 0.2, rotation * 0.2 + math.pi / 2):
            dx, dy = math.cos(angle), math.sin(angle)
            px, py = -dy * arm, dx * arm
            draw.polygon(
                [
                    (x - dx * radius + px, y - dy * radius + py),
                    (x + dx * radius + px, y + dy * radius + py),
                    (x + dx * radius - px, y + dy * radius - py),
                    (x - dx * radius - px, y - dy * radius - py),
                ],
                fill=fill,
            )
    else:
        raise ValueError(f"unknown demo shape {shape!r}")


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))


def _contrasting_colour(rng: np.random.Generator, background: tuple[int, int, int]):
    # Random, but far enough from the background that the shape is visible after JPEG and noise.
    while True:
        colour = _random_colour(rng)
        if sum(abs(a - b) for a, b in zip(colour, background, strict=True)) > 150:
            return colour


def draw_image(shape: str, rng: np.random.Generator, min_side: int, max_side: int) -> Image.Image:
    """One picture of `shape`, with size, aspect ratio, colours, placement and clutter from `rng`."""
    width, height = (int(s) for s in rng.integers(min_side, max_side + 1, size=2))
    background = _random_colour(rng)
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    short = min(width, height)
    for _ in range(int(rng.integers(0, 4))):  # clutter: thin lines that belong to no class
        points = [tuple(int(v) for v in rng.integers(0, (width, height))) for _ in range(2)]
        draw.line(points, fill=_random_colour(rng), width=int(rng.integers(1, 3)))
    radius = short * rng.uniform(0.22, 0.42)
    center = (
        rng.uniform(radius, width - radius),
        rng.uniform(radius, height - radius),
    )
    fill = _contrasting_colour(rng, background)
    _draw_shape(draw, shape, center, radius, rng.uniform(0, 2 * math.pi), fill, background)
    image = image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0, 1.0)))
    noise = rng.normal(0, 8, size=(height, width, 3))
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
        f"min_side={min_side} max_side={max_side} seed={seed}\n"
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
    for split_index, (split, count) in enumerate((("train", train_per_class), ("val", val_per_class))):
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
