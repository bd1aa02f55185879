"""train() in this process, on the real composed configuration."""

import pytest
import torch
from omegaconf import OmegaConf
from torch.nn import Dropout

from alexnet_pl.train import train
from tests.conftest import SMALL_RUN


def test_fast_dev_run_in_process_trains_one_batch(compose_config, image_root, tmp_path):
    cfg = compose_config(*SMALL_RUN, f"data.root={image_root}", "trainer.fast_dev_run=true")
    trainer = train(cfg)
    assert trainer.global_step == 1
    assert {"train/loss", "val/loss", "val/top1", "val/top5"} <= set(trainer.callback_metrics)
    assert isinstance(trainer.lightning_module.network, torch.nn.Module)
    # On a CPU the speed switches stay off (float32 eager), and config.yaml records that.
    assert trainer.precision == "32-true"
    network = trainer.lightning_module.network
    assert network._compiled_call_impl is None
    assert not network.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    saved = OmegaConf.load(tmp_path / "config.yaml")
    assert (saved.trainer.precision, saved.channels_last, saved.compile, saved.tf32) == (
        "32-true",
        False,
        None,
        False,
    )


def test_default_config_is_the_notebooks_recipe(compose_config):
    cfg = compose_config()
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 1e-4
    assert cfg.scheduler.kind == "torch.optim.lr_scheduler.StepLR"
    assert (cfg.scheduler.step_size, cfg.scheduler.gamma) == (30, 0.1)
    assert (cfg.data.batch_size, cfg.transforms.crop, cfg.trainer.max_epochs) == (128, 227, 90)
    assert cfg.data.root.endswith("alexnet_data_in/imagenet") or cfg.data.root


def test_paper_experiment_switches_to_sgd_plateau_and_two_towers(compose_config):
    cfg = compose_config("experiment=paper")
    assert cfg.optimizer._target_ == "torch.optim.SGD"
    assert (cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (
        0.01,
        0.9,
        5e-4,
    )
    assert cfg.scheduler.kind == "torch.optim.lr_scheduler.ReduceLROnPlateau"
    assert cfg.scheduler.factor == 0.1
    assert cfg.model.groups == 2


def test_command_line_overrides_reach_the_objects(compose_config, image_root):
    cfg = compose_config(
        *SMALL_RUN,
        f"data.root={image_root}",
        "optimizer.lr=3e-4",
        "model.dropout=0.2",
        "trainer.fast_dev_run=true",
    )
    trainer = train(cfg)
    optimizer = trainer.optimizers[0]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(3e-4)
    assert optimizer.defaults["fused"] is True
    dropouts = [m for m in trainer.lightning_module.network.modules() if isinstance(m, Dropout)]
    assert dropouts and all(dropout.p == 0.2 for dropout in dropouts)


def test_gpu_step_switches_reach_the_module_and_keep_checkpoint_keys(compose_config, image_root):
    cfg = compose_config(
        *SMALL_RUN,
        f"data.root={image_root}",
        "channels_last=true",
        "compile={backend: eager}",  # inductor's compile takes minutes on 2 cores; same path
        "trainer.fast_dev_run=true",
    )
    trainer = train(cfg)
    network = trainer.lightning_module.network
    assert network.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert network._compiled_call_impl is not None  # nn.Module.compile ran
    # Compiled in place: the keys are those of an uncompiled network, so checkpoints interchange.
    assert all("_orig_mod" not in key for key in trainer.lightning_module.state_dict())


def test_ddp_trainer_config_builds_bucket_views_and_the_bf16_gradient_hook(compose_config):
    from hydra.utils import instantiate
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import bf16_compress_hook

    strategy = instantiate(compose_config("trainer=ddp").trainer.strategy)
    assert strategy._ddp_kwargs["gradient_as_bucket_view"] is True
    assert strategy._ddp_comm_hook is bf16_compress_hook
