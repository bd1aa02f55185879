"""The TensorBoard monitoring callbacks, on a real short training read back from the event files."""

import io
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from alexnet_pl.module import AlexNetModule
from alexnet_pl.monitoring import HParamsWithMetrics, kernel_grid
from alexnet_pl.network import AlexNet
from tests.conftest import CONFIG_DIR, SMALL_RUN

TRAIN_STEPS = 5  # 40 training images of larger_image_root in batches of 8


def monitored_config(compose_config, data_root: Path, *overrides: str) -> DictConfig:
    """The real config for one short epoch, with conf/callbacks/monitoring.yaml merged in and
    parameter norms every 2 steps (100 would be none in 5 steps)."""
    cfg = compose_config(
        *SMALL_RUN, f"data.root={data_root}", "trainer.max_epochs=1", "seed=1", *overrides
    )
    with open_dict(cfg):
        cfg.callbacks = OmegaConf.merge(
            cfg.callbacks, OmegaConf.load(CONFIG_DIR / "callbacks" / "monitoring.yaml")
        )
    cfg.callbacks.parameter_norms.every_n_steps = 2
    return cfg


def fit(cfg: DictConfig) -> EventAccumulator:
    """Builds and fits as alexnet_pl.train.train does, plus HParamsWithMetrics on the resolved
    config; returns the run's TensorBoard events."""
    pl.seed_everything(cfg.seed, workers=True)
    run_config = OmegaConf.to_container(cfg, resolve=True)
    module = AlexNetModule(
        network=instantiate(cfg.model),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler),
        scheduler_monitor=cfg.scheduler_monitor,
    )
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values()]
    callbacks.append(HParamsWithMetrics(run_config))
    loggers = [instantiate(logger) for logger in cfg.logger.values()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    for logger in trainer.loggers:
        logger.log_hyperparams(run_config)
    trainer.fit(module, datamodule=instantiate(cfg.data))
    assert trainer.global_step == TRAIN_STEPS

    events = EventAccumulator(
        str(Path(cfg.paths.output_dir) / "tensorboard"),
        size_guidance={"scalars": 0, "images": 0, "histograms": 0, "tensors": 0},
    )
    events.Reload()
    return events


def decoded(events: EventAccumulator, tag: str) -> np.ndarray:
    """The last image logged under `tag`, as an (H, W, 3) array."""
    image = events.Images(tag)[-1]
    return np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"))


def test_tensorboard_shows_speed_norms_kernels_inputs_and_final_hparams(
    compose_config, larger_image_root
):
    cfg = monitored_config(compose_config, larger_image_root, "model.groups=1")
    events = fit(cfg)
    tags = events.Tags()

    assert {
        "train/images_per_second",
        "train/epoch_seconds",
        "weights/features.0.weight",
        "gradients/features.0.weight",
        "weights/classifier.6.bias",
        "gradients/classifier.6.bias",
    } <= set(tags["scalars"])
    assert {"kernels/conv1", "inputs/train"} <= set(tags["images"])
    assert all(e.value > 0 for e in events.Scalars("train/images_per_second"))
    # log_every_n_steps=1: every step after the first, which opens the timing window.
    assert [e.step for e in events.Scalars("train/images_per_second")] == [2, 3, 4, 5]
    assert len(events.Scalars("train/epoch_seconds")) == 1

    kernels = events.Images("kernels/conv1")
    assert len(kernels) == 1 and kernels[0].step == TRAIN_STEPS  # not during the sanity check
    assert (kernels[0].width, kernels[0].height) == (12 * 12 + 1, 8 * 12 + 1)  # 96 as 8 x 12
    inputs = events.Images("inputs/train")
    assert len(inputs) == 1 and inputs[0].step == 0
    assert (inputs[0].width, inputs[0].height) == (3 * 69 + 2, 3 * 69 + 2)  # 8 images, 3 a row

    hparams = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/experiment"])
    metric_tags = {info.name.tag for info in experiment.experiment.metric_infos}
    assert metric_tags == {"val/loss", "val/top1", "val/top5"}
    start = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
    values = start.session_start_info.hparams
    assert values["model/groups"].number_value == 1
    assert values["optimizer/_target_"].string_value == "torch.optim.Adam"
    assert "transforms/mean" not in values  # lists are left out


def test_two_tower_kernels_show_as_two_blocks_side_by_side(compose_config, larger_image_root):
    cfg = monitored_config(compose_config, larger_image_root, "model.groups=2")
    events = fit(cfg)

    grid = decoded(events, "kernels/conv1")
    height, width, _ = grid.shape
    block_width = 8 * 12 + 1  # 8 kernels of 11 px a row, 1 px lines
    assert width > height
    assert (height, width) == (6 * 12 + 1, 2 * block_width + 6)
    gap = grid[:, block_width : block_width + 6]
    assert not gap.any()  # the black gap between tower 1's kernels and tower 2's
    assert grid[:, :block_width].any() and grid[:, -block_width:].any()


def test_parameter_norms_log_only_every_n_optimizer_steps(compose_config, larger_image_root):
    cfg = monitored_config(compose_config, larger_image_root)
    cfg.callbacks.parameter_norms.histograms = True
    events = fit(cfg)

    for tag in ("weights/features.0.weight", "gradients/features.0.weight"):
        assert [e.step for e in events.Scalars(tag)] == [2, 4]
    assert [e.step for e in events.Histograms("weight_histograms/features.0.weight")] == [2, 4]


def test_kernel_grid_stretches_every_kernel_to_the_full_range():
    weight = AlexNet(num_classes=10).features[0].weight * 0.001  # faint kernels stay visible
    grid = kernel_grid(weight)
    first_kernel = grid[:, 1:12, 1:12]
    assert first_kernel.min() == 0 and first_kernel.max() == 1
