"""What keeps a long run's work safe: checkpoints that are never half-written, and a stop on every
rank at once when the cluster sends SIGTERM or SLURM's requeue signal (with a checkpoint) or the
loss stops being a number."""

import logging
import os
import re
import signal
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.environments import LightningEnvironment, SLURMEnvironment
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException

from alexnet_pl import private_api
from alexnet_pl.step_cadence import is_check_batch

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a hidden temporary file beside its target, flushes it to disk and
    renames it over the target: a save interrupted at any point (kill -9, a full disk, a node
    lost) leaves the previous last.ckpt whole. Lightning's own save renames from /tmp, which is a
    copy, not a rename, when /tmp is another filesystem."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        try:
            with partial.open("wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any = None, weights_only: Any = None
    ) -> dict[str, Any]:
        """Every checkpoint Lightning loads (ckpt_path=..., a SLURM requeue's hpc_ckpt) is read
        with weights_only=True: plain data only, whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says,
        on every Lightning (Trainer.fit(weights_only=...) came only with Lightning 2.6)."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")  # as Lightning's
        return torch.load(path, map_location=map_location, weights_only=True)


class RequeueStop(SIGTERMException):
    """The ranks agreed to stop on SLURM's requeue signal (SIGUSR1): checkpoint, then requeue."""


class StopTogether(pl.Callback):
    """Stops every rank at the same batch when the training loss stops being a number, or when
    the cluster sends SIGTERM (preemption, time limit) or SLURM's requeue signal.

    A non-finite loss stops the run with the first bad step, its epoch and learning rate, and
    writes no checkpoint: a diverged run otherwise burns GPU hours and then overwrites last.ckpt
    with NaN weights. SIGTERM writes `checkpoint_path` (last.ckpt, mid-epoch) before the process
    exits with status 143, so `ckpt_path=<run folder>` continues from there.

    Under DDP a rank that stopped on its own would leave the others waiting in the next gradient
    all-reduce until the collective timeout, and a checkpoint's barrier could meet another rank's
    all-reduce. So each rank only records: the loss tensors of the batches since the last check
    (kept on the device: no host read, no kernel per step), a flag for SIGTERM. At check batches
    (step_cadence.py: the same batches on every rank) and before any checkpoint can be written
    (validation start, epoch end), one all-reduce tells every rank the first bad batch of any rank
    and whether any rank received SIGTERM, and all stop there together.

    SLURM's requeue signal (SIGUSR1 with `#SBATCH --signal`) is taken the same way. Lightning's
    own handler writes hpc_ckpt_N.ckpt inside the signal handler, in the middle of whatever the
    step was doing (Lightning issue #21406: intermittent failures from that); here the ranks agree
    at the next check batch, write hpc_ckpt_N.ckpt into the run folder there, and only then rank 0
    calls `scontrol requeue`. The requeued job continues the same run from it (resume.find).
    """

    # The record of a rank without a non-finite loss; ranks' records are compared by their minimum.
    NONE_BAD = 2**62

    def __init__(self, checkpoint_path: str) -> None:
        self.checkpoint_path = checkpoint_path
        self.trainer: pl.Trainer | None = None
        self.sigterm_received = False
        self.requeue_received = False
        # Batches are numbered over the run, the same on every rank; a rank's first bad one is
        # recorded as number * world_size + rank, so the minimum over ranks names both.
        self.batch_number = 0
        self.first_bad: torch.Tensor | None = None  # on the device: that record, or NONE_BAD
        self.first_bad_loss: torch.Tensor | None = None  # on the device: its loss value
        # (batch number, detached loss) of each batch since the last check, examined there at once.
        self.unchecked_losses: list[tuple[int, torch.Tensor]] = []
        # (step, epoch, batch index, learning rates) of each batch since the last check, by number.
        self.unchecked: dict[int, tuple[int, int, int, list[float]]] = {}
        # Set when the ranks agreed on SIGTERM at an epoch's last batch: they stop at the epoch's
        # end instead, after its validation (and the checkpoint written there, with the plateau
        # scheduler's step: exact_resume.py), so that a resume loses neither.
        self.stop_at_epoch_end = False

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.take_over_sigterm(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.take_over_sigterm(trainer)
        self.start_recording(pl_module.device)

    def start_recording(self, device: torch.device) -> None:
        self.first_bad = torch.full((), self.NONE_BAD, dtype=torch.int64, device=device)
        self.first_bad_loss = torch.zeros((), device=device)
        self.unchecked_losses.clear()

    def take_over_sigterm(self, trainer: pl.Trainer) -> None:
        """Replaces Lightning's SIGTERM handler with one that only sets a flag. Called once
        Lightning has registered its own (it restores the previous handlers at teardown).

        Lightning's handler broadcasts inside the signal handler under DDP, and each rank then
        stops at the batch where it happened to see the signal. Lightning also broadcasts rank 0's
        flag and reads it back before every batch (a host sync per step); with its handler
        replaced, that flag is never set, so the broadcast is switched off for this trainer's loop
        (an attribute on the instance shadows the method; private_api.py says when it is gone).
        """
        if threading.current_thread() is not threading.main_thread():
            return  # Python sets handlers only there; Lightning's handling stays as it is
        self.trainer = trainer
        signal.signal(signal.SIGTERM, self.on_sigterm)
        # Lightning installs its requeue handler under SLURM (auto_requeue); replaced likewise.
        requeue = signal.getsignal(signal.SIGUSR1)
        if SLURMEnvironment.detect() and requeue not in (None, signal.SIG_DFL, signal.SIG_IGN):
            signal.signal(signal.SIGUSR1, self.on_requeue_signal)
        private_api.skip_sigterm_broadcast(trainer.fit_loop.epoch_loop)

    def on_sigterm(self, signum: int, frame: Any) -> None:
        if not self.sigterm_received and self.trainer is not None:
            # As Lightning's handler: pass it on to the ranks Lightning's launcher started (when
            # only this process received it), which agree with this one at the next check.
            kill = getattr(self.trainer.strategy.launcher, "kill", None)
            if kill is not None:
                kill(signum)
        self.sigterm_received = True

    def on_requeue_signal(self, signum: int, frame: Any) -> None:
        self.requeue_received = True  # SLURM sends it to every process of the job step

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # The learning rates this batch's optimizer step uses (an epoch scheduler has stepped
        # already by the last batch's end), for the message.
        optimizers = trainer.optimizers
        learning_rates = [group["lr"] for group in optimizers[0].param_groups] if optimizers else []
        step = trainer.global_step + 1  # the step this batch completes, counting from 1
        self.unchecked[self.batch_number] = (step, trainer.current_epoch, batch_idx, learning_rates)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # Lightning passes {} for a batch whose every image was undecodable (training_step
        # returned None): nothing to check.
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor):
            self.unchecked_losses.append((self.batch_number, loss.detach()))
        self.batch_number += 1
        if is_check_batch(trainer, batch_idx):
            last_batch = batch_idx + 1 >= trainer.num_training_batches
            self.stop_if_any_rank_must(trainer, sigterm_waits_for_epoch_end=last_batch)

    def record_unchecked_losses(self, trainer: pl.Trainer) -> None:
        """Folds the losses since the last check into the device-side record of the first bad
        batch: a few kernels for the whole window, no host read."""
        if not self.unchecked_losses:
            return
        numbers, losses = zip(*self.unchecked_losses, strict=True)
        self.unchecked_losses.clear()
        losses = torch.stack(losses).float()
        keys = torch.tensor(numbers, device=losses.device) * trainer.world_size
        keys = torch.where(torch.isfinite(losses), self.NONE_BAD, keys + trainer.global_rank)
        bad_key, where = keys.min(dim=0)
        first = bad_key < self.first_bad
        self.first_bad_loss = torch.where(first, losses[where], self.first_bad_loss)
        self.first_bad = torch.minimum(self.first_bad, bad_key)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A validation in mid-epoch can be followed by a checkpoint. At the epoch's end the last
        # batch has been checked already, and before training (the sanity check) nothing ran.
        if self.unchecked:
            self.stop_if_any_rank_must(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Before ModelCheckpoint's save (Lightning runs checkpoint callbacks last).
        if self.unchecked:
            self.stop_if_any_rank_must(trainer)
        if self.stop_at_epoch_end:
            self.stop_at_epoch_end = False
            self.stop_on_sigterm(trainer)

    def stop_if_any_rank_must(
        self, trainer: pl.Trainer, sigterm_waits_for_epoch_end: bool = False
    ) -> None:
        """One all-reduce (MIN) of [first bad record, -SIGTERM flag, -requeue flag] and one host
        read; every rank calls it at the same batch and takes the same decision."""
        self.record_unchecked_losses(trainer)
        # new_full fills on the device: no copy from the host (which would wait for the GPU).
        flags = (-int(self.sigterm_received), -int(self.requeue_received))
        decision = torch.stack([self.first_bad, *(self.first_bad.new_full((), f) for f in flags)])
        if trainer.world_size > 1:
            # Straight to torch: strategy.reduce would add a barrier, a second collective.
            torch.distributed.all_reduce(decision, op=torch.distributed.ReduceOp.MIN)
        first_bad, minus_sigterm, minus_requeue = decision.tolist()
        if first_bad < self.NONE_BAD:
            raise FloatingPointError(self.non_finite_message(trainer, first_bad))
        self.unchecked.clear()
        self.requeue_received = bool(minus_requeue)  # every rank the same, for stop_on_sigterm
        minus_sigterm = minus_sigterm or minus_requeue
        if minus_sigterm and sigterm_waits_for_epoch_end:
            self.stop_at_epoch_end = True
        elif minus_sigterm:
            self.stop_on_sigterm(trainer)

    def stop_on_sigterm(self, trainer: pl.Trainer) -> None:
        signal_name = "the requeue signal" if self.requeue_received else "SIGTERM"
        log.info(
            "rank %d: %s; stopping at step %d",
            trainer.global_rank,
            signal_name,
            trainer.global_step,
        )
        raise RequeueStop() if self.requeue_received else SIGTERMException()

    def non_finite_message(self, trainer: pl.Trainer, first_bad: int) -> str:
        batch_number, bad_rank = divmod(first_bad, trainer.world_size)
        # The loss value is known on the rank that saw it: one more collective, on the way out.
        value = self.first_bad_loss.item() if trainer.global_rank == bad_rank else None
        value = trainer.strategy.broadcast(value, src=bad_rank)
        step, epoch, batch_idx, learning_rates = self.unchecked[batch_number]
        where = f"epoch {epoch}, batch {batch_idx}"
        if trainer.world_size > 1:
            where += f", on rank {bad_rank} of {trainer.world_size}; all ranks stopped together"
        return (
            f"the training loss is {value} at step {step} (counting from 1; {where}) with "
            f"learning rate {', '.join(f'{lr:g}' for lr in learning_rates)}. Training stopped "
            "without writing a checkpoint; checkpoints/last.ckpt holds the last good one. Lower "
            "optimizer.lr, or with model.init=paper and SGD try model.init=pytorch, then resume "
            "with ckpt_path=<that checkpoint>."
        )

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, RequeueStop):
            # Every rank raised at the same batch (save_checkpoint synchronises; rank 0 writes).
            path = hpc_checkpoint_path(Path(trainer.default_root_dir))
            trainer.save_checkpoint(path)
            if trainer.is_global_zero:
                log.warning("requeue signal: wrote %s at step %d", path, trainer.global_step)
                requeue_slurm_job()
        elif isinstance(exception, SIGTERMException):
            # Every rank raised at the same batch and calls save_checkpoint (it synchronises);
            # only rank 0 writes.
            trainer.save_checkpoint(self.checkpoint_path)
            if trainer.is_global_zero:
                log.warning(
                    "SIGTERM: wrote %s at step %d; resume with ckpt_path=%s",
                    self.checkpoint_path,
                    trainer.global_step,
                    self.checkpoint_path,
                )


def sigterm_exit_status(trainer: pl.Trainer) -> int:
    """The exit status of a run that StopTogether stopped on SIGTERM: 128 + SIGTERM, as a
    process killed by it, so that a job scheduler sees the interruption.

    Except on the ranks that Lightning's own launcher started (trainer.devices=N on one machine
    without torchrun or srun): their status is read only by that launcher, which kills rank 0
    with SIGKILL when one is not 0, possibly while rank 0 still finishes; rank 0's status is the
    run's.
    """
    environment = getattr(trainer.strategy, "cluster_environment", None)
    if trainer.local_rank > 0 and isinstance(environment, LightningEnvironment):
        return 0
    return 128 + signal.SIGTERM


def hpc_checkpoint_path(run_dir: Path) -> Path:
    """<run>/hpc_ckpt_<N+1>.ckpt: Lightning's name for a requeue checkpoint, which a requeued job
    finds in its run folder (resume.find; preflight.newest_checkpoint)."""
    numbers = [int(m.group(1)) for p in run_dir.glob("hpc_ckpt_*.ckpt") if (m := HPC.match(p.name))]
    return run_dir / f"hpc_ckpt_{max(numbers, default=0) + 1}.ckpt"


HPC = re.compile(r"hpc_ckpt_(\d+)\.ckpt$")


def requeue_slurm_job() -> None:
    """`scontrol requeue <job>`, as Lightning's SLURM handler does (an array task as
    <array job>_<task>); SLURM then ends this job and starts it again with the same id."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = (
        f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        if array_job
        else os.environ["SLURM_JOB_ID"]
    )
    result = subprocess.call(["scontrol", "requeue", job])
    if result == 0:
        log.info("requeued SLURM job %s", job)
    else:
        log.warning(
            "scontrol requeue %s failed with status %d: the job was not requeued", job, result
        )
