"""The LightningModule: AlexNet, its loss and metrics, its optimizer and LR schedule."""

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

OptimizerFactory = Callable[..., torch.optim.Optimizer]  # a functools.partial from Hydra
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


class AlexNetModule(pl.LightningModule):
    def __init__(
        self,
        network: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory,
        scheduler_monitor: str = "val/loss",
        channels_last: bool = False,
        compile: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        # channels_last: NHWC tensors, the layout cuDNN's tensor-core convolutions run in (bf16).
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.network = network.to(memory_format=self.memory_format)
        self.compile_options = compile
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_monitor = scheduler_monitor
        self.loss = nn.CrossEntropyLoss()
        num_classes = self.num_classes
        top5 = min(5, num_classes)  # torchmetrics refuses top_k > num_classes (tiny test sets)
        # torchmetrics accumulates counts on every process and sums them across DDP ranks at the
        # end of the epoch, so the logged accuracy is over the whole validation set.
        self.train_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.train_top5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        self.val_top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_top5 = MulticlassAccuracy(num_classes, top_k=top5, average="micro")
        self.val_loss = MeanMetric()

    @property
    def num_classes(self) -> int:
        return self.network.classifier[-1].out_features

    def setup(self, stage: str) -> None:
        class_names = getattr(self.trainer.datamodule, "class_names", None)
        if class_names and len(class_names) != self.num_classes:
            raise ValueError(
                f"model.num_classes={self.num_classes} but the data has {len(class_names)} "
                f"classes; run with model.num_classes={len(class_names)}"
            )

    def configure_model(self) -> None:
        if self.compile_options is not None:
            # nn.Module.compile compiles in place: the state_dict keys stay those of the plain
            # network, so checkpoints load with or without compile (torch.compile(net) would add
            # an "_orig_mod." prefix to every key).
            self.network.compile(**self.compile_options)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images.contiguous(memory_format=self.memory_format))

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor | None:
        images, labels = batch
        if images is None:
            return None  # every image of this batch was undecodable: nothing to learn from
        logits = self(images)
        loss = self.loss(logits, labels)
        self.train_top1(logits, labels)
        self.train_top5(logits, labels)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/top1", self.train_top1)  # this batch's accuracy, as train/loss is
        self.log("train/top5", self.train_top5)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        if images is None:
            return
        logits = self(images)
        # Weighted by batch size, so a short last batch counts for what it holds.
        self.val_loss(self.loss(logits, labels), weight=labels.numel())
        self.val_top1(logits, labels)
        self.val_top5(logits, labels)
        self.log("val/loss", self.val_loss, prog_bar=True)
        self.log("val/top1", self.val_top1, prog_bar=True)
        self.log("val/top5", self.val_top5)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(self.parameters())
        return {
            "optimizer": optimizer,
            # Lightning steps the scheduler once per epoch, after that epoch's optimizer steps
            # (the notebook stepped it before them, skipping the first learning rate).
            "lr_scheduler": {
                "scheduler": self.scheduler_factory(optimizer),
                "interval": "epoch",
                "monitor": self.scheduler_monitor,  # read only by ReduceLROnPlateau
                "name": "train/lr",  # the key LearningRateMonitor logs it under
            },
        }
