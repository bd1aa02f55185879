"""SLURM preemption the cluster way, simulated on one machine: SIGUSR1 to every process of the job
step, DataLoader workers included -> the ranks agree at the next check batch (not inside the signal
handler, as Lightning's own handler would), write an HPC checkpoint into the run folder there and
call `scontrol requeue` -> the job is killed -> the same command starts again (as the requeued job
does) and continues the same run in the same folder by itself. The first job is a real process
group (the signal must reach every process of it); the requeued one runs the same command line in
the test process (run_in_process), which saves a fresh interpreter's imports."""

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import SMALL_RUN
from tests.test_launchers import process_group, wait_for, wait_for_group_to_end

FAKE_SCONTROL = """#!/bin/sh
# Stands in for SLURM's scontrol: records the requeue, then ends the job as SLURM would.
echo "$@" >> "$SCONTROL_LOG"
kill -9 $PPID
"""


def slurm_environment(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(FAKE_SCONTROL)
    (bin_dir / "scontrol").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PL_GLOBAL_SEED"}
    env.update(
        PATH=f"{bin_dir}:{env['PATH']}",
        SCONTROL_LOG=str(tmp_path / "scontrol.log"),
        # What srun sets for a one-task job; Lightning's SLURMEnvironment reads these.
        SLURM_NTASKS="1",
        SLURM_NTASKS_PER_NODE="1",
        SLURM_JOB_ID="4242",
        SLURM_JOB_NAME="alexnet",
        SLURM_NODELIST="localhost",
        SLURM_PROCID="0",
        SLURM_LOCALID="0",
        SLURM_NODEID="0",
    )
    return env


@pytest.mark.slow
def test_sigusr1_to_the_job_step_checkpoints_requeues_and_the_requeued_job_resumes(
    larger_image_root, tmp_path, run_in_process
):
    run_dir = tmp_path / "outputs" / "slurm" / "4242"  # fixed per job id, as in the README
    arguments = [
        *SMALL_RUN,
        f"data.root={larger_image_root}",
        "data.num_workers=2",  # SLURM signals the loader workers too
        "trainer.max_epochs=2",  # the signal comes in epoch 1, the requeued job finishes it
        f"hydra.run.dir={run_dir}",
    ]
    command = [sys.executable, "-m", "alexnet_pl.train", *arguments]
    env = slurm_environment(tmp_path)
    with process_group(command, tmp_path, env) as job:
        wait_for(run_dir / "checkpoints" / "last.ckpt", job)  # the first epoch has ended
        # What `#SBATCH --signal=SIGUSR1@120` sends: to every process of the step.
        os.killpg(job.pid, signal.SIGUSR1)
        assert job.wait(timeout=120) == -signal.SIGKILL  # ended by the (fake) requeue
        wait_for_group_to_end(job.pid, limit=60)  # the workers follow their main process
    assert "DataLoader worker" not in (tmp_path / "output.txt").read_text()
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    hpc = torch.load(run_dir / "hpc_ckpt_1.ckpt", weights_only=False)
    assert hpc["global_step"] >= 5
    log = (run_dir / "train.log").read_text()
    # Written by StopTogether at a check batch, not by Lightning's handler inside the signal.
    assert f"requeue signal: wrote {run_dir / 'hpc_ckpt_1.ckpt'}" in log
    assert "Handling auto-requeue signal" not in (tmp_path / "output.txt").read_text()

    sigusr1_handler = signal.getsignal(signal.SIGUSR1)
    requeued = run_in_process(*arguments, cwd=tmp_path, env=env)  # SLURM's, the fake scontrol
    assert requeued.returncode == 0, requeued.stderr[-4000:]
    assert signal.getsignal(signal.SIGUSR1) == sigusr1_handler  # Lightning gave it back
    assert f"Restored all states from the checkpoint at {run_dir / 'hpc_ckpt_1.ckpt'}" in (
        requeued.stdout + requeued.stderr
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_trained"] == 2
    # The same run goes on in the same folder: its log continues, its config records the resume.
    log = (run_dir / "train.log").read_text()
    stop = f"epoch {hpc['epoch']}, step {hpc['global_step']}"
    assert f"resumed from {stop} (checkpoint {run_dir / 'hpc_ckpt_1.ckpt'})" in log
    resumes = yaml.safe_load((run_dir / "config.yaml").read_text())["resumes"]
    assert [r["checkpoint"] for r in resumes] == [str(run_dir / "hpc_ckpt_1.ckpt")]
    assert list((tmp_path / "outputs" / "slurm").iterdir()) == [run_dir]
