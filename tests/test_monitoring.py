"""The TensorBoard monitoring callbacks, on a real short training read back from the event files."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from alexnet_pl.monitoring import kernel_grid
from alexnet_pl.network import AlexNet
from alexnet_pl.train import train
from tests.conftest import SMALL_RUN

TRAIN_STEPS = 5  # 40 training images of larger_image_root in batches of 8


@pytest.fixture(scope="module")
def runs() -> dict[int, EventAccumulator]:
    """Events of the runs made so far in this module, by model.groups: each test that reads a run
    shares it rather than training again (a run takes ~15 s on a 2-core CPU)."""
    return {}


def monitored_run(
    runs: dict[int, EventAccumulator], compose_config, data_root: Path, groups: int
) -> EventAccumulator:
    """One short epoch of the real config through train(), with parameter norms every 2 steps (100
    would be none in 5 steps) and weight histograms on; returns its TensorBoard events."""
    if groups not in runs:
        cfg = compose_config(
            *SMALL_RUN,
            f"data.root={data_root}",
            "trainer.max_epochs=1",
            "seed=1",
            f"model.groups={groups}",
            "callbacks.parameter_norms.every_n_steps=2",
            "callbacks.parameter_norms.histograms=true",
        )
        trainer = train(cfg)
        assert trainer.global_step == TRAIN_STEPS
        events = EventAccumulator(
            str(Path(cfg.paths.output_dir) / "tensorboard"),
            size_guidance={"scalars": 0, "images": 0, "histograms": 0, "tensors": 0},
        )
        events.Reload()
        runs[groups] = events
    return runs[groups]


def decoded(events: EventAccumulator, tag: str) -> np.ndarray:
    """The last image logged under `tag`, as an (H, W, 3) array."""
    image = events.Images(tag)[-1]
    return np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"))


def test_tensorboard_shows_speed_norms_kernels_inputs_and_final_hparams(
    runs, compose_config, larger_image_root
):
    events = monitored_run(runs, compose_config, larger_image_root, groups=1)
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
    # The metrics that log_hyperparams logs again land on Lightning's own last validation step.
    assert {e.step for e in events.Scalars("val/top1")} == {TRAIN_STEPS - 1}


def test_two_tower_kernels_show_as_two_blocks_side_by_side(runs, compose_config, larger_image_root):
    events = monitored_run(runs, compose_config, larger_image_root, groups=2)

    grid = decoded(events, "kernels/conv1")
    height, width, _ = grid.shape
    block_width = 8 * 12 + 1  # 8 kernels of 11 px a row, 1 px lines
    assert width > height
    assert (height, width) == (6 * 12 + 1, 2 * block_width + 6)
    gap = grid[:, block_width : block_width + 6]
    assert not gap.any()  # the black gap between tower 1's kernels and tower 2's
    assert grid[:, :block_width].any() and grid[:, -block_width:].any()


def test_parameter_norms_log_only_every_n_optimizer_steps(runs, compose_config, larger_image_root):
    events = monitored_run(runs, compose_config, larger_image_root, groups=1)

    for tag in ("weights/features.0.weight", "gradients/features.0.weight"):
        assert [e.step for e in events.Scalars(tag)] == [2, 4]
    assert [e.step for e in events.Histograms("weight_histograms/features.0.weight")] == [2, 4]


def test_kernel_grid_stretches_every_kernel_to_the_full_range():
    weight = AlexNet(num_classes=10).features[0].weight * 0.001  # faint kernels stay visible
    grid = kernel_grid(weight)
    first_kernel = grid[:, 1:12, 1:12]
    assert first_kernel.min() == 0 and first_kernel.max() == 1
