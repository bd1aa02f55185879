"""Checks that run before any work starts (no process launched, no image read), each naming the
offending value and the fix. Checks that need an object live with it: model.groups in AlexNet, a
crop larger than the resize in the transforms, the class folders in the DataModule."""

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from alexnet_pl.checkpoint import CURRENT_FORMAT, checkpoint_format, read_checkpoint
from alexnet_pl.data.datamodule import per_device_batch_size
from alexnet_pl.errors import MissingInput, UserError


def check_learning_rate(optimizer: DictConfig) -> None:
    lr = optimizer.get("lr")
    if lr is not None and not lr > 0:
        raise UserError(
            f"optimizer.lr={lr} must be a positive number (the notebook: 1e-4 with Adam; the "
            "paper: 0.01 with SGD)"
        )


def check_global_batch(batch_size: int, world_size: int) -> None:
    per_device_batch_size(batch_size, world_size)  # raises with the numbers and a batch that fits


def resolve_resume_path(ckpt_path: str | None, outputs: Path = Path("outputs")) -> str | None:
    """ckpt_path may be a checkpoint file, a run folder (its newest: checkpoints/last.ckpt, or the
    hpc_ckpt_N.ckpt of a SLURM requeue), or `last`: the most recently written
    outputs/**/checkpoints/last.ckpt under the current folder."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        found = sorted(outputs.glob("**/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise MissingInput(
                f"ckpt_path=last: no {outputs}/**/checkpoints/last.ckpt under {Path.cwd()}; run "
                "from the folder that holds outputs/, or give the checkpoint or run folder"
            )
        return str(found[-1])
    path = Path(ckpt_path)
    if path.is_dir():
        path = newest_checkpoint(path) or path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise MissingInput(
            f"ckpt_path={ckpt_path} is not a checkpoint (looked for {path}); give a .ckpt file, a "
            "run folder such as outputs/<date>/<time>, or ckpt_path=last"
        )
    return str(path)


def newest_checkpoint(run_dir: Path) -> Path | None:
    """A run's newest full checkpoint: checkpoints/last.ckpt, or an hpc_ckpt_N.ckpt written on
    SLURM's requeue signal (safeguards.StopTogether), whichever was written last."""
    found = [run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")]
    found = [path for path in found if path.is_file()]
    return max(found, key=lambda path: path.stat().st_mtime) if found else None


def check_resumable(ckpt_path: str) -> dict[str, Any]:
    """The checkpoint, read without its weights (mmap), if training can continue from it. Whether
    the command's config is the run's: config_diff.py."""
    # mmap: reads the small config without loading hundreds of MB of weights into memory.
    # weights_only: a checkpoint holding anything but plain data is refused, naming the file.
    checkpoint = read_checkpoint(ckpt_path, mmap=True)
    if not isinstance(checkpoint, dict) or "config" not in checkpoint:
        raise UserError(
            f"ckpt_path={ckpt_path} is not a checkpoint written by alexnet_pl.train (it has no "
            "config); resume from the checkpoints/last.ckpt of an earlier run"
        )
    written_in = checkpoint_format(checkpoint)
    if written_in > CURRENT_FORMAT:
        raise UserError(
            f"ckpt_path={ckpt_path} has checkpoint format {written_in}, newer than this alexnet-pl "
            f"writes ({CURRENT_FORMAT}); resume with the version that wrote it"
        )
    if written_in < CURRENT_FORMAT:
        raise UserError(
            f"ckpt_path={ckpt_path} was written in checkpoint format {written_in} (dropout "
            "before fc6 and fc7, as torchvision; with model.groups=2, normalisation across the "
            f"towers); this version trains the paper's network (format {CURRENT_FORMAT}: dropout "
            "after fc6 and fc7, normalisation within each tower), so resuming would go on "
            "training a different network. Start a new run (init_from=<this checkpoint> starts "
            "one from its weights); evaluate, predict and export still read this checkpoint"
        )
    if "optimizer_states" not in checkpoint:
        raise UserError(
            f"ckpt_path={ckpt_path} holds the weights only (best-*.ckpt is written without the "
            "optimizer and schedule state, to keep it small), so training cannot resume from it; "
            "resume from that run's checkpoints/last.ckpt (ckpt_path=<run folder>), start a new "
            "run from its weights with init_from=<this checkpoint>, or use it with evaluate, "
            "predict or export"
        )
    return checkpoint


def check_no_multirun_ddp(world_size: int) -> None:
    """Lightning starts DDP ranks by re-running this command line, `-m` included, so under Hydra
    multirun every rank would start a sweep of its own (a known Lightning limitation)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if world_size > 1 and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise UserError(
            f"Hydra multirun (-m) cannot start DDP with {world_size} processes: Lightning would "
            "re-run the whole sweep in every process. Sweep on one device (trainer.devices=1), or "
            "run one command per configuration, e.g. `for lr in 1e-4 3e-4; do python -m "
            "alexnet_pl.train optimizer.lr=$lr trainer.devices=4; done`"
        )
