"""The switches that make the training step fast on a GPU, chosen for the machine in one place.

`trainer.precision`, `channels_last`, `compile` and `tf32` default to `auto`: on CUDA that means
bf16 autocast, NHWC tensors, torch.compile (with CUDA graphs when each GPU steps on a small batch)
and TF32 matmuls; anywhere else float32 eager, as the CPU gains nothing from them and compiling
costs minutes there. Any explicit value wins. The run logs what it chose and how to turn each off,
and config.yaml and the checkpoints record the chosen values, not `auto`.

What each switch gives on a GPU is measured by `bash benchmarks/gpu.sh` (benchmarks/RESULTS.md).
"""

import logging
import time
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.accelerators import CPUAccelerator, CUDAAccelerator
from pytorch_lightning.utilities import rank_zero_only

from alexnet_pl.errors import UserError
from alexnet_pl.hook_dispatch import turn_off

log = logging.getLogger(__name__)

AUTO = "auto"
# CUDA graphs replay a whole step with one launch: they pay where the GPU would otherwise wait for
# the host to launch hundreds of small kernels, i.e. for small batches per GPU. Measured on an H200
# (issue 12): batch 32, compiled 7,973 img/s, with CUDA graphs 12,671. benchmarks/gpu.sh measures
# batch 32 and 128 both ways; this threshold follows from that table.
CUDA_GRAPHS_MAX_BATCH = 64
COMPILE_DEFAULT: dict[str, Any] = {}  # torch.compile's own default mode
COMPILE_CUDA_GRAPHS: dict[str, Any] = {"mode": "reduce-overhead"}


@dataclass(frozen=True)
class SpeedSettings:
    precision: str  # a pytorch_lightning.Trainer precision
    channels_last: bool
    compile: dict[str, Any] | None  # torch.compile keyword arguments; None: eager
    tf32: bool  # float32 matmuls and convolutions may run in TensorFloat-32


def compile_options(value: Any) -> dict[str, Any] | None:
    """The `compile` config value as torch.compile's keyword arguments (None: do not compile)."""
    if value is None or value is False:
        return None
    if value is True:
        return dict(COMPILE_DEFAULT)
    if isinstance(value, DictConfig):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return dict(value)
    raise UserError(
        f"compile={value!r} is not understood; use compile=auto, compile=null (eager), "
        "compile={} (torch.compile's default) or compile={mode: reduce-overhead}"
    )


def resolve(
    precision: str,
    channels_last: bool | str,
    compile: Any,
    tf32: bool | str,
    accelerator: str,
    per_device_batch: int,
    bf16_supported: bool = True,
) -> SpeedSettings:
    """Each `auto` made concrete for `accelerator` ("cuda", "cpu", ...) and the batch each device
    steps on; explicit values are kept."""
    on_cuda = accelerator == "cuda"
    if precision == AUTO:
        # bf16 needs no loss scaling (no GradScaler and its per-step host read); GPUs before
        # Ampere have no fast bf16, so they keep float32.
        precision = "bf16-mixed" if on_cuda and bf16_supported else "32-true"
    if channels_last == AUTO:
        channels_last = on_cuda
    if compile == AUTO:
        if not on_cuda:
            compile = None
        elif per_device_batch <= CUDA_GRAPHS_MAX_BATCH:
            compile = dict(COMPILE_CUDA_GRAPHS)
        else:
            compile = dict(COMPILE_DEFAULT)
    else:
        compile = compile_options(compile)
    if tf32 == AUTO:
        tf32 = on_cuda
    return SpeedSettings(str(precision), bool(channels_last), compile, bool(tf32))


def accelerator_of(trainer_cfg: DictConfig) -> str:
    """The accelerator the Trainer will pick: "cuda" for auto/gpu/cuda when CUDA is available."""
    chosen = str(trainer_cfg.accelerator)
    if chosen in (AUTO, "gpu", "cuda") and CUDAAccelerator.is_available():
        return "cuda"
    return "cpu" if chosen == AUTO else chosen


def devices_per_node(accelerator: str, devices: Any) -> int:
    """How many processes `trainer.devices` starts on each node, parsed as Lightning does."""
    kind = CUDAAccelerator if accelerator == "cuda" else CPUAccelerator
    if devices == AUTO:
        return kind.auto_device_count()
    parsed = kind.parse_devices(devices)
    return len(parsed) if isinstance(parsed, list) else int(parsed)


def choose_for_this_machine(cfg: DictConfig) -> SpeedSettings:
    """Resolves the speed switches of a training config, writes the chosen values back into it
    (so config.yaml and the checkpoints record them), sets TF32, and logs the choice."""
    accelerator = accelerator_of(cfg.trainer)
    world = 1  # other accelerators: unknown here, and only CUDA's choice depends on it
    if accelerator in ("cuda", "cpu"):
        world = devices_per_node(accelerator, cfg.trainer.devices) * cfg.trainer.num_nodes
    per_device_batch = max(1, cfg.data.batch_size // world)
    requested = {
        "trainer.precision": cfg.trainer.precision,
        "channels_last": cfg.channels_last,
        "compile": cfg.compile,
        "tf32": cfg.tf32,
    }
    settings = resolve(
        *requested.values(),
        accelerator=accelerator,
        per_device_batch=per_device_batch,
        bf16_supported=accelerator == "cuda" and torch.cuda.is_bf16_supported(),
    )
    with open_dict(cfg):
        cfg.trainer.precision = settings.precision
        cfg.channels_last = settings.channels_last
        cfg.compile = settings.compile
        cfg.tf32 = settings.tf32
    # TF32 for float32 matmuls (fc6-fc8 when not under bf16); cuDNN allows it for convolutions
    # by default, and tf32=false turns that off too.
    torch.set_float32_matmul_precision("high" if settings.tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = settings.tf32
    log_choice(settings, requested, accelerator, per_device_batch)
    return settings


def describe(
    settings: SpeedSettings, requested: dict[str, Any], accelerator: str, per_device_batch: int
) -> str:
    """One log line: each switch's value, whether `auto` chose it, and how to turn it off."""
    chosen = {
        "trainer.precision": settings.precision,
        "channels_last": str(settings.channels_last).lower(),
        "compile": "null" if settings.compile is None else _inline(settings.compile),
        "tf32": str(settings.tf32).lower(),
    }
    parts = [
        f"{key}={value}" + (" (auto)" if requested[key] == AUTO else "")
        for key, value in chosen.items()
    ]
    off = {
        "trainer.precision": ("32-true", settings.precision != "32-true"),
        "channels_last": ("false", settings.channels_last),
        "compile": ("null", settings.compile is not None),
        "tf32": ("false", settings.tf32),
    }
    to_turn_off = [f"{key}={value}" for key, (value, is_on) in off.items() if is_on]
    line = f"speed on {accelerator}, {per_device_batch} images per device: {', '.join(parts)}"
    if settings.compile is not None:
        line += (
            "; the first training and validation batches compile the network (tens of seconds, "
            "reported when done)"
        )
    if to_turn_off:
        line += f". To turn off: {' '.join(to_turn_off)}"
    return line


def _inline(options: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{key}: {value}" for key, value in options.items()) + "}"


@rank_zero_only
def log_choice(
    settings: SpeedSettings, requested: dict[str, Any], accelerator: str, per_device_batch: int
) -> None:
    log.info(describe(settings, requested, accelerator, per_device_batch))


class CompileTimeReport(pl.Callback):
    """Logs the wall time of the first training batch and of the first validation batch when the
    network is compiled: that is where torch.compile does its work (the host traces and generates
    kernels before the batch runs), so a long first batch is explained rather than a hang."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.reported: set[str] = set()

    # Its batch hooks, by stage; turned off (hook_dispatch.py) once they have nothing left to do.
    HOOKS = {
        "training": ("on_train_batch_start", "on_train_batch_end"),
        "validation": ("on_validation_batch_start", "on_validation_batch_end"),
    }

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if getattr(pl_module, "compile_options", None) is None:  # nothing compiles: nothing to time
            for stage in self.HOOKS:
                turn_off(self, self.HOOKS[stage])

    def _start(self, stage: str, pl_module: pl.LightningModule) -> None:
        if stage not in self.reported and getattr(pl_module, "compile_options", None) is not None:
            self.started[stage] = time.perf_counter()

    def _report(self, stage: str, trainer: pl.Trainer) -> None:
        if stage in self.started and stage not in self.reported:
            self.reported.add(stage)
            turn_off(self, self.HOOKS[stage])
            seconds = time.perf_counter() - self.started.pop(stage)
            if trainer.is_global_zero:
                log.info(
                    "compile: the first %s batch took %.1f s (torch.compile of the network; "
                    "compile=null runs eager)",
                    stage,
                    seconds,
                )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start("training", pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._report("training", trainer)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._start("validation", pl_module)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._report("validation", trainer)
