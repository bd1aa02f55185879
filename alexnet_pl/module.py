"""The LightningModule: AlexNet, its loss and metrics, its optimizer and LR schedule.

Built from config by one instantiate of the `module` node (conf/train.yaml), whose fields are the
`model`, `loss`, `optimizer` and `scheduler` groups: a new module-level setting is a config key.
"""

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from alexnet_pl.checkpoint import CURRENT_FORMAT, FORMAT_KEY
from alexnet_pl.errors import UserError
from alexnet_pl.schedules import LRSchedule, optimizer_steps_per_epoch
from alexnet_pl.step_cadence import forget_check_values, is_check_batch, log_check_values

OptimizerFactory = Callable[..., torch.optim.Optimizer]  # a functools.partial from Hydra
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]
TRAIN_METRICS = ("train/loss", "train/top1", "train/top5")


def batch_hits(logits: torch.Tensor, labels: torch.Tensor, top_k: int) -> torch.Tensor:
    """(batch, top_k) booleans: whether each image's label is its best, second best, ... logit.
    A label appears at most once in a row, so a row's sum says whether it is among the k best."""
    return logits.topk(top_k, dim=1).indices == labels.unsqueeze(1)


def window_counts(window: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """[loss summed over the images, top-1 hits, top-k hits, images] of the batches of a window
    ((mean loss, batch_hits) per batch), as one float32 tensor on the device: a few kernels for
    the whole window, nothing the host has to wait for."""
    losses = torch.stack([loss.float() for loss, _ in window])
    sizes = losses.new_tensor([hits.shape[0] for _, hits in window])
    hits = torch.cat([hits for _, hits in window])
    return torch.stack(
        [
            losses @ sizes,
            hits[:, 0].sum(dtype=torch.float32),
            hits.sum(dtype=torch.float32),
            sizes.sum(),
        ]
    )


class AlexNetModule(pl.LightningModule):
    def __init__(
        self,
        network: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: LRSchedule | SchedulerFactory,
        loss: nn.Module | None = None,
        scheduler_monitor: str = "val/loss",
        channels_last: bool = False,
        compile: dict[str, Any] | None = None,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.run_config = run_config  # the resolved config, stored in every checkpoint
        # channels_last: NHWC tensors, the layout cuDNN's tensor-core convolutions run in (bf16).
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.network = network.to(memory_format=self.memory_format)
        self.compile_options = compile
        # CUDA graphs replay recorded kernels into fixed output buffers; each step must say that
        # it starts a new iteration, so the previous step's outputs may be overwritten.
        self.cuda_graphs = bool(compile) and compile.get("mode") in (
            "reduce-overhead",
            "max-autotune",
        )
        self.optimizer_factory = optimizer
        # A plain factory (optimizer -> scheduler) is stepped after every epoch.
        self.schedule = scheduler if isinstance(scheduler, LRSchedule) else LRSchedule(scheduler)
        self.scheduler_monitor = scheduler_monitor
        # The training loss (conf/loss: cross entropy, label_smoothing 0.0 as in the paper).
        # Validation always reports plain cross entropy, so runs with any loss compare.
        self.loss = nn.CrossEntropyLoss() if loss is None else loss
        num_classes = self.num_classes
        self.top_k = min(5, num_classes)  # top-5 of fewer than five classes is top-all
        # Training metrics: every step keeps its mean loss and its top-k hits (two or three small
        # kernels, device tensors); the batches of a window are counted together and read by the
        # host at check batches only (step_cadence.py). Counting each step into a running total
        # instead cost ~10 more tensor operations a step, the largest part of this module's host
        # time per step (benchmarks/RESULTS.md, host cost).
        self.train_window: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.hits_of = batch_hits  # compiled on CUDA (on_fit_start)
        # Validation runs once per epoch, so torchmetrics is fine there. Its argument checks and
        # NaN checks read values back to the host at every batch: off, the inputs are ours.
        # torchmetrics sums the counts over DDP ranks at the end of the epoch, so the logged
        # accuracy is over the whole validation set.
        self.val_top1 = MulticlassAccuracy(
            num_classes, top_k=1, average="micro", validate_args=False
        )
        self.val_top5 = MulticlassAccuracy(
            num_classes, top_k=self.top_k, average="micro", validate_args=False
        )
        self.val_loss = MeanMetric(nan_strategy="disable")

    @property
    def num_classes(self) -> int:
        return self.network.classifier[-1].out_features

    def setup(self, stage: str) -> None:
        class_names = getattr(self.trainer.datamodule, "class_names", None)
        if class_names and len(class_names) != self.num_classes:
            raise UserError(
                f"model.num_classes={self.num_classes} but the data has {len(class_names)} "
                f"classes; run with model.num_classes={len(class_names)}"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The config (how to rebuild the network and its preprocessing) and the class names (what
        # its outputs mean) let evaluate, predict and export use a checkpoint alone. Written here,
        # not by a callback: Lightning skips callbacks' hooks in weights-only checkpoints (best-*).
        checkpoint[FORMAT_KEY] = CURRENT_FORMAT  # what the weights mean (checkpoint.py)
        if self.run_config is not None:
            checkpoint["config"] = self.run_config
            checkpoint["class_names"] = list(getattr(self.trainer.datamodule, "class_names", []))

    def configure_model(self) -> None:
        if self.compile_options is not None:
            # nn.Module.compile compiles in place: the state_dict keys stay those of the plain
            # network, so checkpoints load with or without compile (torch.compile(net) would add
            # an "_orig_mod." prefix to every key).
            self.network.compile(**self.compile_options)

    def on_fit_start(self) -> None:
        self.train_window = []
        if self.compile_options is not None and self.device.type == "cuda":
            # Eager, top-k and the comparison are a few kernels; compiled, fewer.
            backend = self.compile_options.get("backend", "inductor")
            self.hits_of = torch.compile(batch_hits, backend=backend)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        return self.network(images.contiguous(memory_format=self.memory_format))

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor | None:
        images, labels = batch
        if images is None:
            return None  # every image of this batch was undecodable: nothing to learn from
        logits = self(images)
        loss = self.loss(logits, labels)
        # Outside the compiled network: tensors of its own, which a CUDA graph's next replay does
        # not overwrite.
        self.train_window.append((loss.detach(), self.hits_of(logits.detach(), labels, self.top_k)))
        return loss

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        forget_check_values(self.trainer, TRAIN_METRICS)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Here rather than in training_step: every rank reaches this hook at every batch, even one
        # whose images were all undecodable, so all ranks meet in the collective below together.
        if not is_check_batch(self.trainer, batch_idx):
            return
        # A rank whose window holds no batch (each undecodable) still meets the others below.
        window, self.train_window = self.train_window, []
        counts = window_counts(window) if window else torch.zeros(4, device=self.device)
        # Summed over DDP ranks (one collective); then the one host read.
        totals = self.trainer.strategy.reduce(counts, reduce_op="sum")
        loss_sum, top1_hits, top5_hits, images = totals.tolist()
        if images:
            means = (loss_sum / images, top1_hits / images, top5_hits / images)
            log_check_values(self, dict(zip(TRAIN_METRICS, means, strict=True)))

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        images, labels = batch
        if images is None:
            return
        logits = self(images)
        # One value per image, so a short last batch counts for what it holds. (Not the batch mean
        # with weight=batch size: with nan_strategy="disable" torchmetrics 1.9 drops the weights.)
        self.val_loss.update(nn.functional.cross_entropy(logits, labels, reduction="none"))
        self.val_top1.update(logits, labels)
        self.val_top5.update(logits, labels)
        # Metric objects: Lightning computes them once, at the end of the epoch.
        self.log("val/loss", self.val_loss, prog_bar=True)
        self.log("val/top1", self.val_top1, prog_bar=True)
        self.log("val/top5", self.val_top5)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(self.parameters())
        epochs, steps_per_epoch = max(self.trainer.max_epochs or 1, 1), 1
        if self.schedule.needs_run_length:  # only then: counting may read the data's size
            steps_per_epoch = optimizer_steps_per_epoch(self.trainer)
        return {
            "optimizer": optimizer,
            # Lightning steps the scheduler after each epoch's (or step's) optimizer steps (the
            # notebook stepped it before them, skipping the first learning rate).
            "lr_scheduler": {
                "scheduler": self.schedule.build(optimizer, epochs, steps_per_epoch),
                "interval": self.schedule.interval,
                "monitor": self.scheduler_monitor,  # read only by ReduceLROnPlateau
                "name": "train/lr",  # the key LearningRateMonitor logs it under
            },
        }
