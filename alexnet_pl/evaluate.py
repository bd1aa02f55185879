"""Measure a checkpoint the way the paper did: `python -m alexnet_pl.evaluate ckpt_path=<ckpt>`.

Reports top-1/top-5 accuracy and error, loss and the image count for the single centre crop and for
the paper's 10-crop test (four corners and the centre, each with its mirror; softmax averaged),
writes the top-1 of every class for both views to per_class.csv in the run folder and prints the ten
weakest classes. Everything about the model and its preprocessing comes from the checkpoint.
"""

import csv
import logging
import os
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassStatScores

from alexnet_pl.checkpoint import TrainedModel, load_trained_model
from alexnet_pl.data.bad_images import BadImageReport
from alexnet_pl.data.datamodule import classes_only_in, list_classes
from alexnet_pl.data.image_folder import ImageFolderDataset, collate_skipping_bad
from alexnet_pl.data.sampling import ShardSampler
from alexnet_pl.data.transforms import ResizeTenCrop, ToNormalizedFloat
from alexnet_pl.errors import MissingInput, UserError, reported_as_user_errors
from alexnet_pl.predict import readable_class_names
from alexnet_pl.run_record import write_json_atomically

log = logging.getLogger(__name__)
CENTRE_VIEW = 4  # TenCrop's order: four corners, centre, then the same five mirrored
VIEWS = ("center_crop", "ten_crop")
WEAKEST_SHOWN = 10  # classes printed after the table, lowest ten-crop top-1 first
SUPPORT = 4  # MulticlassStatScores' columns: tp, fp, tn, fn, support (the images of the class)


class TenCropEvaluation(pl.LightningModule):
    def __init__(self, network: nn.Module, num_classes: int, to_float: ToNormalizedFloat) -> None:
        super().__init__()
        self.network = network
        self.to_float = to_float
        top5 = min(5, num_classes)
        self.top1 = nn.ModuleDict(
            {view: MulticlassAccuracy(num_classes, top_k=1, average="micro") for view in VIEWS}
        )
        self.top5 = nn.ModuleDict(
            {view: MulticlassAccuracy(num_classes, top_k=top5, average="micro") for view in VIEWS}
        )
        self.loss = nn.ModuleDict({view: MeanMetric() for view in VIEWS})
        # Per class: the top-1 of each view, and how many images the class has (both summed over
        # all processes by torchmetrics, as the totals are).
        self.class_top1 = nn.ModuleDict(
            {view: MulticlassAccuracy(num_classes, top_k=1, average=None) for view in VIEWS}
        )
        self.class_counts = MulticlassStatScores(num_classes, top_k=1, average=None)
        self.images = SumMetric()
        self.skipped = SumMetric()  # files that could not be decoded, over all processes
        self.bad_images = BadImageReport(None)  # names each one in the log

    def test_step(self, batch: tuple, batch_idx: int) -> None:
        views, labels, bad = batch  # views: uint8 (batch, 10, 3, H, W); bad: undecodable files
        self.bad_images.add(bad)
        self.skipped.update(len(bad))
        if views is None:
            return
        logits = self.network(self.to_float(views).flatten(0, 1)).unflatten(0, views.shape[:2])
        probabilities = {
            "center_crop": logits[:, CENTRE_VIEW].softmax(dim=1),
            "ten_crop": logits.softmax(dim=2).mean(dim=1),  # the paper averages the softmax
        }
        for view, probs in probabilities.items():
            self.top1[view].update(probs, labels)
            self.top5[view].update(probs, labels)
            loss = nn.functional.nll_loss(probs.clamp_min(1e-12).log(), labels)
            self.loss[view].update(loss, weight=labels.numel())
            self.class_top1[view].update(probs, labels)
        self.class_counts.update(probabilities["center_crop"], labels)
        self.images.update(labels.numel())

    def on_test_epoch_end(self) -> None:
        # compute() sums the counts of all processes, so it must run while they are all still here.
        self.results = self._compute()

    def _compute(self) -> dict:
        results: dict = {
            "images": int(self.images.compute()),
            "skipped_images": int(self.skipped.compute()),
        }
        for view in VIEWS:
            top1, top5 = float(self.top1[view].compute()), float(self.top5[view].compute())
            results[view] = {
                "top1": top1,
                "top5": top5,
                "top1_error": 1 - top1,
                "top5_error": 1 - top5,
                "loss": float(self.loss[view].compute()),
            }
        results["per_class"] = {
            "images": self.class_counts.compute()[:, SUPPORT].tolist(),
            **{view: self.class_top1[view].compute().tolist() for view in VIEWS},
        }
        return results


def validation_images(model: TrainedModel, root: Path) -> ImageFolderDataset:
    val_dir = root / "val"
    if not val_dir.is_dir():
        raise MissingInput(f"data.root={root} has no val/ folder (expected val/<class>/*)")
    found = list_classes(val_dir)
    if found != model.class_names:
        only_found, only_saved = classes_only_in(found, model.class_names)
        raise UserError(
            f"the classes in {val_dir} differ from those the checkpoint was trained on: only in "
            f"the folder: {only_found}; only in the checkpoint: {only_saved}"
        )
    # The decoder and preprocessing training validated with, so the centre crop sees the same
    # pixels; the corners from the central square or the whole rectangle as training's crops.
    ten_crop = ResizeTenCrop(model.preprocessing)
    return ImageFolderDataset(str(val_dir), ten_crop, decode="cpu")


def format_table(results: dict) -> str:
    rows = [f"{'':<12} {'top-1':>7} {'top-5':>7} {'top-1 err':>10} {'top-5 err':>10} {'loss':>7}"]
    for view in VIEWS:
        r = results[view]
        rows.append(
            f"{view:<12} {r['top1']:>7.2%} {r['top5']:>7.2%} {r['top1_error']:>10.2%} "
            f"{r['top5_error']:>10.2%} {r['loss']:>7.4f}"
        )
    rows.append(f"{results['images']} images ({results['skipped_images']} could not be decoded)")
    return "\n".join(rows)


def per_class_rows(per_class: dict, class_names: list[str]) -> list[dict]:
    """One row per class: its folder, its readable name (ImageNet's for WordNet ids), its image
    count and the top-1 of each view (empty for a class without images)."""
    names = readable_class_names(class_names)
    rows = []
    for index, (folder, name) in enumerate(zip(class_names, names, strict=True)):
        images = int(per_class["images"][index])
        row = {"index": index, "class": folder, "name": name, "images": images}
        row.update({f"{view}_top1": per_class[view][index] if images else "" for view in VIEWS})
        rows.append(row)
    return rows


def write_csv_atomically(path: Path, rows: list[dict]) -> None:
    """Like write_json_atomically: readers never see half a file."""
    partial = path.with_suffix(".csv.partial")
    with partial.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, path)


def format_weakest(rows: list[dict], count: int = WEAKEST_SHOWN) -> str:
    measured = [row for row in rows if row["images"]]
    weakest = sorted(measured, key=lambda r: (r["ten_crop_top1"], r["center_crop_top1"]))[:count]
    lines = [f"the {len(weakest)} weakest classes (top-1)", f"{'ten-crop':>8} {'centre':>7} images"]
    for row in weakest:
        label = row["name"] if row["name"] == row["class"] else f"{row['name']} ({row['class']})"
        lines.append(
            f"{row['ten_crop_top1']:>8.2%} {row['center_crop_top1']:>7.2%} {row['images']:>6}  "
            f"{label}"
        )
    return "\n".join(lines)


def evaluate(cfg: DictConfig) -> dict:
    model = load_trained_model(cfg.ckpt_path)
    root = Path(cfg.data.root or model.config["data"]["root"]).expanduser()
    dataset = validation_images(model, root)
    trainer: pl.Trainer = instantiate(cfg.trainer)
    loader = DataLoader(
        dataset,
        batch_size=cfg.data.batch_size,
        sampler=ShardSampler(len(dataset), trainer.global_rank, trainer.world_size),
        num_workers=cfg.data.num_workers,
        pin_memory=torch.accelerator.is_available(),
        collate_fn=collate_skipping_bad,
    )
    to_float = ToNormalizedFloat(model.preprocessing.mean, model.preprocessing.std)
    evaluation = TenCropEvaluation(model.network, len(model.class_names), to_float)
    trainer.test(evaluation, dataloaders=loader, verbose=False)
    results = {"checkpoint": str(cfg.ckpt_path), "data_root": str(root), **evaluation.results}
    per_class = per_class_rows(results.pop("per_class"), model.class_names)
    if trainer.is_global_zero:
        output = Path(cfg.paths.output_dir) / "metrics.json"
        results["per_class_csv"] = str(output.with_name("per_class.csv"))
        write_csv_atomically(output.with_name("per_class.csv"), per_class)
        write_json_atomically(output, results)
        # The command's answer, so stdout rather than the log.
        print(format_table(results) + "\n\n" + format_weakest(per_class))
        log.info("results in %s and %s", output, results["per_class_csv"])
    return results


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with reported_as_user_errors():  # the message alone, no traceback
        evaluate(cfg)


if __name__ == "__main__":
    main()
