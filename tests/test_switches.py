"""The paper's ablations as command-line switches: every preset composes with every group choice,
each switch changes the network or the pipeline as named and trains, and a switched network
evaluates, predicts and exports from its checkpoint alone."""

import itertools
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

from alexnet_pl import speed
from alexnet_pl.checkpoint import load_trained_model
from alexnet_pl.data.batched_crops import crop_batch
from alexnet_pl.data.image_folder import ImageFolderDataset
from alexnet_pl.data.preprocessing import Preprocessing
from alexnet_pl.data.random_resized_crop import RandomResizedCropFlip
from alexnet_pl.data.transforms import CropWindow, ResizeTenCrop, View
from alexnet_pl.errors import UserError
from alexnet_pl.lrn import LocalResponseNorm
from alexnet_pl.network import AlexNet
from alexnet_pl.train import train
from tests.conftest import CONFIG_DIR, SMALL_RUN

PRESETS = [None, *sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))]
GROUPS = sorted(d.name for d in CONFIG_DIR.iterdir() if d.is_dir() and d.name != "experiment")
CHOICES = [(g, p.stem) for g in GROUPS for p in sorted((CONFIG_DIR / g).glob("*.yaml"))]
# Groups outside train.yaml's defaults list (an ablation is added with `+ablation=...`, except
# under the preset that lists it itself).
ADDED = {"ablation": "ablations"}


def parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def layers(network: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in network.modules() if isinstance(m, kind)]


def test_every_preset_composes_with_every_choice_of_every_group(tmp_path):
    """`experiment=demo scheduler=plateau` once failed: the preset set a StepLR key. Builds the
    module (with its optimizer and schedule), the DataModule and the callbacks of each."""
    assert {"scheduler", "transforms", "loss", "optimizer"} <= set(GROUPS)
    image = torch.randint(0, 256, (3, 90, 120), dtype=torch.uint8)
    built: dict[tuple, list[str]] = {}
    refused_combinations: list[list[str]] = []
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for preset, (group, choice) in itertools.product(PRESETS, CHOICES):
            overrides = [f"experiment={preset}"] if preset else []
            added = group in ADDED and preset != ADDED[group]
            overrides += [f"{'+' if added else ''}{group}={choice}"]
            overrides += ["model.num_classes=10", "model.fc_width=16"]
            overrides += [f"data.root={tmp_path}", f"paths.output_dir={tmp_path}"]
            cfg = compose(
                "train", overrides=[*overrides, "trainer.accelerator=cpu"], return_hydra_config=True
            )
            # Hydra's cost is in composing and instantiating: a combination already built (a
            # preset with the choice it makes itself) is composed, not built again.
            choices = tuple(sorted(cfg.hydra.runtime.choices.items()))
            if choices in built:
                continue
            built[choices] = overrides
            speed.choose_for_this_machine(cfg)
            module = instantiate(cfg.module)
            datamodule = instantiate(cfg.data)
            instantiate(cfg.callbacks.input_samples)  # the callback that reads the transforms
            optimizer = module.optimizer_factory(module.parameters())
            try:
                scheduler = module.schedule.build(optimizer, epochs=6, steps_per_epoch=3)
            except UserError as refused:
                # Two epochs (experiment=ablations) leave no room after cosine's five warm-up
                # epochs: refused with the fix, the one combination that cannot run as it is.
                assert "leaves no epoch of the run's 2" in str(refused), overrides
                refused_combinations.append(overrides)
                continue
            optimizer.step()
            scheduler.step(*([0.5] if isinstance(scheduler, ReduceLROnPlateau) else []))
            crop = cfg.transforms.crop
            assert datamodule.train_transform(image).shape == (3, crop, crop), overrides
            assert datamodule.val_transform(image).shape == (3, crop, crop), overrides
            with torch.no_grad():
                assert module.network(torch.zeros(1, 3, crop, crop)).shape == (1, 10)
    GlobalHydra.instance().clear()
    # Every choice of every group was built with every preset.
    for preset, (group, choice) in itertools.product(PRESETS, CHOICES):
        assert any(
            dict(key).get(group) == choice and dict(key).get("experiment") == preset
            for key in built
        ), (preset, group, choice)
    assert len(built) >= 3 * 12
    assert [o[:2] for o in refused_combinations] == [["experiment=ablations", "scheduler=cosine"]]


def network_with(compose_config, *overrides: str) -> nn.Module:
    """The network a command line builds, at 1000 classes, on the meta device: the layers and
    their shapes without the cost of drawing 60M weights."""
    cfg = compose_config("model.num_classes=1000", "model.init=pytorch", *overrides)
    with torch.device("meta"):
        return instantiate(cfg.model)


def test_each_network_switch_changes_the_layers_as_named(compose_config):
    paper = network_with(compose_config)
    assert parameters(paper) == 62_378_344 and len(layers(paper, LocalResponseNorm)) == 2
    assert [m.kernel_size for m in layers(paper, nn.MaxPool2d)] == [3, 3, 3]

    towers = network_with(compose_config, "model.groups=2")
    assert parameters(towers) == 60_965_224  # the paper's two GPUs
    half = network_with(compose_config, "model.groups=1", "model.width=0.5")
    assert [c.out_channels for c in layers(half, nn.Conv2d)] == [48, 128, 192, 192, 256]
    assert parameters(half) == 59_798_312

    tanh = network_with(compose_config, "model.activation=tanh")
    assert len(layers(tanh, nn.Tanh)) == 7 and not layers(tanh, nn.ReLU)
    batch = network_with(compose_config, "model.norm=batch")
    assert [b.num_features for b in layers(batch, nn.BatchNorm2d)] == [96, 256]
    assert not layers(batch, LocalResponseNorm)
    none = network_with(compose_config, "model.norm=none")
    assert not layers(none, LocalResponseNorm) and parameters(none) == parameters(paper)
    plain = network_with(compose_config, "model.pool=plain")
    assert [(m.kernel_size, m.stride) for m in layers(plain, nn.MaxPool2d)] == [(2, 2)] * 3
    for network in (paper, plain):  # both poolings give the paper's 6x6x256 before fc6
        for size, side in ((227, 6), (67, 1)):
            images = torch.zeros(1, 3, size, size, device="meta")
            assert network.features(images).shape == (1, 256, side, side)
    dropout = network_with(compose_config, "model.dropout=0")
    assert [d.p for d in layers(dropout, nn.Dropout)] == [0.0, 0.0]
    with pytest.raises(ValueError, match="model.width=0.3"):
        AlexNet(groups=2, width=0.3)


SWITCH_CHECKS = {
    "model.activation=tanh": lambda t: (
        layers(t.model.network, nn.Tanh) and not layers(t.model.network, nn.ReLU)
    ),
    # BatchNorm trained: its running statistics moved with the one step
    "model.norm=batch": lambda t: (
        layers(t.model.network, nn.BatchNorm2d)[0].num_batches_tracked == 1
    ),
    "model.norm=none": lambda t: not layers(t.model.network, LocalResponseNorm),
    "model.pool=plain": lambda t: layers(t.model.network, nn.MaxPool2d)[0].kernel_size == 2,
    "model.groups=2": lambda t: layers(t.model.network, nn.Conv2d)[1].groups == 2,
    "model.width=0.5": lambda t: layers(t.model.network, nn.Conv2d)[0].out_channels == 48,
    "model.dropout=0": lambda t: layers(t.model.network, nn.Dropout)[0].p == 0,
    "transforms.lighting_std=0": lambda t: t.datamodule.train_batch_transform.lighting_std == 0,
    "transforms.flip=false": lambda t: t.datamodule.train_transform.flip is False,
    "transforms.random_crop=false": lambda t: t.datamodule.train_transform.random_crop is False,
    "loss.label_smoothing=0.1": lambda t: t.model.loss.label_smoothing == 0.1,
    "scheduler=cosine": lambda t: t.lr_scheduler_configs[0].interval == "step",
    "transforms=rrc": lambda t: isinstance(t.datamodule.train_transform, RandomResizedCropFlip),
    "data.decode=gpu": lambda t: t.datamodule.decode == "gpu",  # the GPU path, here on the CPU
}


@pytest.mark.parametrize(
    "switches",
    [
        "model.activation=tanh model.norm=batch model.pool=plain model.dropout=0 "
        "transforms.lighting_std=0 transforms.flip=false loss.label_smoothing=0.1",
        "model.norm=none model.groups=2 transforms.random_crop=false "
        "scheduler=cosine scheduler.interval=step scheduler.warmup_epochs=0",
        "model.groups=1 model.width=0.5 transforms=rrc data.decode=gpu",
    ],
)
def test_each_switch_trains_a_fast_dev_run(compose_config, image_root, switches):
    """Three runs cover every switch (a run each would cost a minute of the suite)."""
    cfg = compose_config(
        *SMALL_RUN, f"data.root={image_root}", "trainer.fast_dev_run=true", *switches.split()
    )
    trainer = train(cfg)
    assert trainer.global_step == 1 and torch.isfinite(trainer.callback_metrics["train/loss"])
    checked = [switch for switch in switches.split() if switch in SWITCH_CHECKS]
    assert len(checked) >= 3
    for switch in checked:
        assert SWITCH_CHECKS[switch](trainer), switch


def test_random_crop_false_trains_on_the_validation_crop_and_flip_false_never_mirrors(
    compose_config,
):
    cfg = compose_config("transforms.random_crop=false", "transforms.flip=false")
    train_view, val_view = instantiate(cfg.transforms.train), instantiate(cfg.transforms.val)
    image = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    for _ in range(5):
        assert torch.equal(train_view(image), val_view(image))


def test_random_resized_crop_window_gives_the_cpu_crop_on_the_gpu_path(image_root):
    """data.decode=gpu cuts the window the worker drew with batched_crops; the CPU view crops the
    same part with torchvision (which reads no pixel past the part's edge)."""
    view = RandomResizedCropFlip(Preprocessing(256, 227), flip=False)
    rows = torch.linspace(0, 255, 375).view(1, 375, 1).expand(3, 375, 500)
    image = (rows + torch.linspace(0, 60, 500).view(1, 1, 500)).clamp(0, 255).to(torch.uint8)
    for seed in range(4):
        torch.manual_seed(seed)
        window = view.window(375, 500)
        torch.manual_seed(seed)
        cpu = view(image)
        gpu_path = crop_batch([image], torch.tensor([window], dtype=torch.float64))[0]
        assert cpu.shape == gpu_path.shape == (3, 227, 227)
        inner = (cpu.int() - gpu_path.int())[:, 2:-2, 2:-2].abs()
        assert inner.float().mean() < 1.0 and inner.max() <= 3, seed
    with pytest.raises(ValueError, match="data.decode=gpu needs a view .* ResizeTenCrop"):
        ImageFolderDataset(str(image_root / "val"), ResizeTenCrop(Preprocessing()), "gpu")


def test_cosine_schedule_warms_up_then_falls_to_zero():
    from alexnet_pl.schedules import LRSchedule

    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    schedule = LRSchedule("alexnet_pl.schedules.warmup_cosine", "step", warmup_epochs=1)
    scheduler = schedule.build(optimizer, epochs=3, steps_per_epoch=4)
    rates = []
    for _ in range(12):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(0.01) and rates[:4] == sorted(rates[:4])  # the ramp
    assert rates[4] == pytest.approx(1.0) and rates[4:] == sorted(rates[4:], reverse=True)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="scheduler.interval='batch'"):
        LRSchedule("torch.optim.lr_scheduler.StepLR", "batch", step_size=1)
    with pytest.raises(ValueError, match="use scheduler.interval=epoch"):
        LRSchedule("torch.optim.lr_scheduler.ReduceLROnPlateau", "step")


@pytest.fixture(scope="module")
def switched_run(image_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real epoch (two steps) of a network with several switches at once."""
    from tests.conftest import run_module_in_process

    run_dir = tmp_path_factory.mktemp("switched") / "run"
    arguments = [
        *SMALL_RUN,
        f"data.root={image_root}",
        "trainer.max_epochs=1",
        "++trainer.limit_train_batches=2",
        "seed=2",
        "model.activation=tanh",
        "model.norm=batch",
        "model.pool=plain",
        "model.width=0.5",
        "transforms=rrc",
        "loss.label_smoothing=0.1",
        f"hydra.run.dir={run_dir}",
    ]
    with pytest.MonkeyPatch.context() as patch:
        assert run_module_in_process("alexnet_pl.train", arguments, run_dir.parent, patch) == 0
    return run_dir


def test_a_switched_network_evaluates_predicts_and_exports_from_its_checkpoint(
    switched_run, image_root, run_in_process, tmp_path
):
    checkpoint = switched_run / "checkpoints" / "last.ckpt"
    model = load_trained_model(checkpoint)
    assert layers(model.network, nn.BatchNorm2d) and layers(model.network, nn.Tanh)
    assert model.preprocessing == Preprocessing(72, 67, mean=model.preprocessing.mean)

    result = run_in_process(
        f"ckpt_path={checkpoint}",
        "data.num_workers=0",
        f"hydra.run.dir={tmp_path / 'evaluate'}",
        cwd=tmp_path,
        module="alexnet_pl.evaluate",
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    assert metrics["images"] == 10 and 0 <= metrics["ten_crop"]["top1"] <= 1

    photo = next((image_root / "val").rglob("*.JPEG"))
    result = run_in_process(
        str(checkpoint), str(photo), "--json", cwd=tmp_path, module="alexnet_pl.predict"
    )
    assert result.returncode == 0, result.stderr
    top = json.loads(result.stdout)["predictions"][str(photo)]
    assert len(top) == 5 and 0.5 < sum(p["probability"] for p in top) <= 1 + 1e-6

    output = tmp_path / "switched.pt2"
    arguments = [str(checkpoint), "--format", "pt2", "--output", str(output)]
    result = run_in_process(*arguments, cwd=tmp_path, module="alexnet_pl.export")
    assert result.returncode == 0, result.stderr
    batch = torch.randn(2, 3, 67, 67)
    program = torch.export.load(str(output)).module()
    with torch.no_grad():
        assert torch.allclose(program(batch), model.network(batch), atol=1e-5)


def test_checkpoints_from_before_the_switches_still_load(tmp_path):
    """A config without activation, norm, pool, width, transforms.preprocessing and square (as
    written before they existed) gets the paper's network and the rectangle's crops."""
    network = AlexNet(num_classes=10, fc_width=16, init="pytorch")
    old_config = {
        "model": {
            "_target_": "alexnet_pl.network.AlexNet",
            **{"num_classes": 10, "groups": 1, "dropout": 0.5, "fc_width": 16, "init": "paper"},
        },
        "transforms": {"resize": 72, "crop": 67, "mean": [0.5] * 3, "std": [0.5] * 3},
    }
    state = {f"network.{key}": value for key, value in network.state_dict().items()}
    checkpoint = {
        "state_dict": state,
        "config": old_config,
        "class_names": [str(k) for k in range(10)],
        "alexnet_pl_format": 2,
    }
    torch.save(checkpoint, tmp_path / "old.ckpt")
    model = load_trained_model(tmp_path / "old.ckpt")
    assert model.preprocessing == Preprocessing(72, 67, square=False, mean=[0.5] * 3, std=[0.5] * 3)
    batch = torch.randn(2, 3, 67, 67)
    with torch.no_grad():
        assert torch.equal(model.network(batch), network.eval()(batch))


class TopLeftCrop(View):
    """A new view in a few lines: where its crop lies, nothing else."""

    def __init__(self, preprocessing: Preprocessing) -> None:
        self.preprocessing = preprocessing

    def window(self, height: int, width: int) -> CropWindow:
        return CropWindow(0.0, 0.0, 1.0, 1.0, False, self.crop)


def test_a_view_that_only_places_its_crop_serves_every_decoder(image_root):
    view = TopLeftCrop(Preprocessing(72, 67))
    image = torch.randint(0, 256, (3, 80, 90), dtype=torch.uint8)
    assert torch.equal(view(image), image[:, :67, :67])  # the CPU decoders, through window()
    dataset = ImageFolderDataset(str(image_root / "val"), view, decode="gpu")
    assert dataset[0][0].window == CropWindow(0.0, 0.0, 1.0, 1.0, False, 67)
