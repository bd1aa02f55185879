"""The speed switches (alexnet_pl/speed.py): `auto` becomes bf16, channels_last, torch.compile and
TF32 on CUDA and stays float32 eager elsewhere; explicit values win; the run says what it chose."""

import logging
import math
from functools import partial

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from alexnet_pl import speed
from alexnet_pl.module import AlexNetModule
from alexnet_pl.network import AlexNet
from alexnet_pl.speed import CUDA_GRAPHS_MAX_BATCH, SpeedSettings, resolve

AUTO = dict(precision="auto", channels_last="auto", compile="auto", tf32="auto")


def test_auto_on_a_cpu_is_float32_eager_and_contiguous():
    settings = resolve(**AUTO, accelerator="cpu", per_device_batch=128)
    assert settings == SpeedSettings("32-true", channels_last=False, compile=None, tf32=False)


def test_auto_on_cuda_is_bf16_channels_last_and_compiled():
    settings = resolve(**AUTO, accelerator="cuda", per_device_batch=128)
    assert settings == SpeedSettings("bf16-mixed", channels_last=True, compile={}, tf32=True)


def test_auto_on_cuda_adds_cuda_graphs_for_small_batches_per_gpu():
    # The paper's global batch of 128 on four GPUs: 32 images per GPU, where launches dominate.
    small = resolve(**AUTO, accelerator="cuda", per_device_batch=32)
    assert small.compile == {"mode": "reduce-overhead"}
    at_threshold = resolve(**AUTO, accelerator="cuda", per_device_batch=CUDA_GRAPHS_MAX_BATCH)
    above = resolve(**AUTO, accelerator="cuda", per_device_batch=CUDA_GRAPHS_MAX_BATCH + 1)
    assert at_threshold.compile == {"mode": "reduce-overhead"} and above.compile == {}


def test_auto_on_a_gpu_without_bf16_keeps_float32():
    settings = resolve(**AUTO, accelerator="cuda", per_device_batch=128, bf16_supported=False)
    assert settings.precision == "32-true" and settings.channels_last and settings.tf32


@pytest.mark.parametrize("accelerator", ["cpu", "cuda"])
def test_explicit_values_win_over_auto(accelerator):
    off = resolve("32-true", False, None, False, accelerator=accelerator, per_device_batch=32)
    assert off == SpeedSettings("32-true", channels_last=False, compile=None, tf32=False)
    autotune = {"mode": "max-autotune"}
    on = resolve("16-mixed", True, autotune, True, accelerator=accelerator, per_device_batch=8)
    assert on == SpeedSettings("16-mixed", True, autotune, True)
    assert resolve("auto", "auto", False, "auto", accelerator, 128).compile is None
    assert resolve("auto", "auto", True, "auto", accelerator, 128).compile == {}


def test_a_compile_value_that_is_not_understood_names_the_choices():
    with pytest.raises(ValueError, match=r"compile='fast'.*compile=null.*reduce-overhead"):
        resolve("auto", "auto", "fast", "auto", accelerator="cuda", per_device_batch=128)


def test_the_log_line_names_each_choice_and_how_to_turn_it_off():
    requested = {"trainer.precision": "auto", "channels_last": "auto", "compile": "auto"}
    requested["tf32"] = False
    settings = SpeedSettings("bf16-mixed", True, {"mode": "reduce-overhead"}, False)
    line = speed.describe(settings, requested, "cuda", 32)
    assert "speed on cuda, 32 images per device" in line
    assert "trainer.precision=bf16-mixed (auto)" in line
    assert "compile={mode: reduce-overhead} (auto)" in line
    assert "tf32=false," not in line and "tf32=false" in line and "tf32=false (auto)" not in line
    assert "first training and validation batches compile" in line
    assert line.endswith("To turn off: trainer.precision=32-true channels_last=false compile=null")


def test_a_cpu_run_records_and_logs_the_resolved_values(compose_config, caplog):
    cfg = compose_config("trainer.accelerator=cpu")
    with caplog.at_level(logging.INFO, logger="alexnet_pl.speed"):
        settings = speed.choose_for_this_machine(cfg)
    assert settings == SpeedSettings("32-true", channels_last=False, compile=None, tf32=False)
    # config.yaml and the checkpoints get what was used, not `auto`.
    assert cfg.trainer.precision == "32-true" and cfg.channels_last is False
    assert cfg.compile is None and cfg.tf32 is False
    assert torch.get_float32_matmul_precision() == "highest"
    assert "speed on cpu, 128 images per device: trainer.precision=32-true (auto)" in caplog.text
    assert "To turn off" not in caplog.text  # nothing is on


def test_the_demo_stays_eager_even_on_a_gpu(compose_config):
    cfg = compose_config("experiment=demo")
    assert cfg.compile is None and cfg.trainer.precision == "auto"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graphs_train_and_validate_with_other_batch_sizes(caplog):
    """compile={mode: reduce-overhead} under the Trainer: training batches of 16, validation in
    eval mode with batches of 16 and a last one of 4, two epochs; every metric a number."""
    torch.manual_seed(0)
    module = AlexNetModule(
        AlexNet(num_classes=10, init="pytorch"),
        optimizer=partial(torch.optim.Adam, lr=1e-4, fused=True),
        scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=30),
        channels_last=True,
        compile={"mode": "reduce-overhead"},
    )
    images, labels = torch.randn(68, 3, 67, 67), torch.randint(10, (68,))
    train = DataLoader(TensorDataset(images[:48], labels[:48]), batch_size=16, drop_last=True)
    val = DataLoader(TensorDataset(images[48:], labels[48:]), batch_size=16)  # 16, then 4
    trainer = pl.Trainer(
        accelerator="cuda",
        devices=1,
        precision="bf16-mixed",
        max_epochs=2,
        log_every_n_steps=2,
        logger=False,
        enable_checkpointing=False,
        callbacks=[speed.CompileTimeReport()],
    )
    with caplog.at_level(logging.INFO, logger="alexnet_pl.speed"):
        trainer.fit(module, train, val)
    metrics = trainer.callback_metrics
    for name in ("train/loss", "train/top1", "val/loss", "val/top1", "val/top5"):
        assert math.isfinite(float(metrics[name])), name
    assert "the first training batch took" in caplog.text
    assert "the first validation batch took" in caplog.text
