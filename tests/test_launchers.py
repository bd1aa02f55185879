"""The same results under every launcher: torchrun and Lightning's own DDP launcher with two CPU
processes (gloo), real signals sent to the whole process group, real DataLoader workers, each
decoder (torchrun: data.decode=gpu, which decodes ahead in a thread, on the CPU here; Lightning's
launcher: data.decode=cpu in worker processes).

What each rank did is read back from probe callbacks (tests/probes.py, tests/probes_ranks.py) on
conftest.indexed_root's colour-coded images."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml

from alexnet_pl.data.sampling import ResumableShuffleSampler
from tests.conftest import SMALL_RUN, cli_environment
from tests.probes import read_records, recorder_overrides
from tests.probes_ranks import read_json
from tests.probes_resume import scalar_steps

INDEXED = ["model.num_classes=4"]  # conftest.indexed_root: 4 classes, 40 training images
IMAGES, PER_RANK = 40, 4  # SMALL_RUN's global batch of 8 over two processes
NO_BEST = ["~callbacks.best_checkpoint"]
TWO_PROCESSES = ["trainer.devices=2", "trainer.strategy=ddp"]  # Lightning launches rank 1


def probe(name: str, target: str, **arguments) -> list[str]:
    overrides = [f"+callbacks.{name}._target_=tests.probes_ranks.{target}"]
    return overrides + [f"+callbacks.{name}.{key}={value}" for key, value in arguments.items()]


def train_command(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "alexnet_pl.train", *SMALL_RUN, *overrides]


def live_members(group: int) -> list[int]:
    """The processes of a process group that have not exited (a zombie waiting for its parent to
    reap it counts as exited)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it exited while we looked
        state, process_group = fields[0], int(fields[2])
        if process_group == group and state != "Z":
            members.append(int(stat.parent.name))
    return members


def wait_for_group_to_end(group: int, limit: float) -> None:
    deadline = time.monotonic() + limit
    while live_members(group):
        assert time.monotonic() < deadline, f"processes still running: {live_members(group)}"
        time.sleep(0.2)


@contextmanager
def process_group(command: list[str], cwd: Path, env: dict[str, str]) -> Iterator:
    """Starts `command` as the leader of a new process group (as a job scheduler starts a job
    step), its output in cwd/output.txt; whatever is left of the group is killed at the end."""
    with (cwd / "output.txt").open("w") as output:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            yield process
        finally:
            if live_members(process.pid):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_for(path: Path, process: subprocess.Popen, limit: float = 300) -> None:
    deadline = time.monotonic() + limit
    while not path.exists():
        assert process.poll() is None, f"the run ended ({process.returncode}) before {path.name}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


# torchrun, seed=null: one run for the seed, the data split, the ranks' random draws and the
# decoding thread of data.decode=gpu under DDP.


@pytest.fixture(scope="module")
def torchrun_run(indexed_root, tmp_path_factory) -> Path:
    """One epoch under torchrun (each rank started by torchrun itself, each composing the config
    and drawing its own seed), with the run folder given to be the same for all. data.decode=gpu
    with a loader worker: each rank decodes ahead in its own thread (on the CPU here), fed by its
    worker process, and the run must still end on its own."""
    base = tmp_path_factory.mktemp("torchrun")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "alexnet_pl.train",
        *SMALL_RUN,
        *INDEXED,
        f"data.root={indexed_root}",
        "trainer=ddp",  # DDPStrategy with gradient bucket views and the bf16 gradient hook
        "trainer.devices=2",
        "trainer.max_epochs=1",
        "data.decode=gpu",
        "data.num_workers=1",
        *NO_BEST,
        *recorder_overrides(base / "records"),
        *probe("draws", "RandomDraws", path=base / "records"),
        f"hydra.run.dir={base / 'run'}",
    ]
    result = subprocess.run(
        command, cwd=base, env=cli_environment(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    (base / "output.txt").write_text(result.stdout + result.stderr)
    return base


@pytest.mark.slow
def test_torchrun_ranks_agree_on_a_drawn_seed_and_split_each_epoch_between_them(torchrun_run):
    assert "MEMBER: 2/2" in (torchrun_run / "output.txt").read_text()
    records = read_records(torchrun_run / "records")
    assert set(records) == {0, 1}
    seen = {rank: [i for r in records[rank] for i in r["indices"]] for rank in (0, 1)}
    assert len(seen[0]) == len(seen[1]) == 20  # 40 images, 4 per process per step, 5 steps
    assert not set(seen[0]) & set(seen[1])  # one permutation, each rank its own stride
    assert sorted(seen[0] + seen[1]) == list(range(40))

    # Both ranks shuffled with rank 0's seed, which is the seed the run recorded.
    draws = read_json(torchrun_run / "records", "draws")
    seed = draws[0]["pl_global_seed"]
    assert draws[1]["pl_global_seed"] == seed
    assert f"seed: {seed}\n" in (torchrun_run / "run" / "config.yaml").read_text()
    checkpoint = torch.load(torchrun_run / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["config"]["seed"] == seed
    assert checkpoint["global_step"] == 5
    metrics = json.loads((torchrun_run / "run" / "metrics.json").read_text())
    assert set(metrics) >= {"val/loss", "val/top1", "val/top5"}


@pytest.mark.slow
def test_ranks_start_from_the_same_weights_and_draw_their_own_dropout_and_lighting(torchrun_run):
    draws = read_json(torchrun_run / "records", "draws")
    # One seed on every rank (the data order needs it), yet each rank's own draws.
    assert draws[0]["pl_global_seed"] == draws[1]["pl_global_seed"]
    assert draws[0]["weights_checksum"] == draws[1]["weights_checksum"]
    assert draws[0]["dropout_mask"] != draws[1]["dropout_mask"]
    assert draws[0]["lighting"] != draws[1]["lighting"]


@pytest.mark.slow
def test_lightnings_per_batch_sigterm_broadcast_does_not_run(torchrun_run):
    # Lightning 2.6 broadcasts rank 0's SIGTERM flag and reads it back before every batch under
    # DDP: a host sync per step. safeguards.StopTogether agrees at check batches instead.
    draws = read_json(torchrun_run / "records", "draws")
    for rank in (0, 1):
        assert draws[rank]["batches"] == 5
        assert draws[rank]["broadcasts_in_training_batches"] == 0


# Lightning's launcher: SIGTERM to the whole group, then the resumed run diverges on one rank.

STEPS_PER_EPOCH = 5  # 40 images over 2 processes at 4 each: 5 steps, not the 10 of one process


@pytest.fixture(scope="module")
def preempted_then_diverged(indexed_root, tmp_path_factory) -> Path:
    """Two runs under Lightning's launcher (two CPU processes). The first, with two loader
    workers per rank, gets SIGTERM sent to its whole process group in mid-epoch 1, as SLURM sends
    it to every process of a job step. The second resumes it, finishes that epoch (writing
    last.ckpt) and in the next one rank 1's input turns NaN at batch 2, with the loss checked
    every 2 batches (after batches 1, 3 and 4 of 5). Every rank's batches are recorded, those of
    each run in base/batches/<run>."""
    base = tmp_path_factory.mktemp("launcher")
    first, records = base / "outputs" / "preempted", base / "records"
    command = train_command(
        f"data.root={indexed_root}",
        *INDEXED,
        *TWO_PROCESSES,
        "data.num_workers=2",
        "trainer.max_epochs=50",
        *NO_BEST,
        *recorder_overrides(base / "batches" / "preempted"),
        *probe("mark", "MarkBatch", path=records, epoch=1, batch=1),
        *probe("exceptions", "ExceptionRecorder", path=records),
        f"hydra.run.dir={first}",
    )
    with process_group(command, base, cli_environment()) as run:
        wait_for(records / "reached_rank0.json", run)  # in mid-epoch 1, last.ckpt of epoch 0
        os.killpg(run.pid, signal.SIGTERM)  # every rank and every worker
        (base / "preempted.status").write_text(str(run.wait(timeout=300)))
        wait_for_group_to_end(run.pid, limit=60)
    (base / "output.txt").rename(base / "preempted.txt")

    # The resume goes on in the same folder and writes its own last.ckpt: the stop's kept aside.
    shutil.copy(first / "checkpoints" / "last.ckpt", base / "preempted.ckpt")
    saved_epoch = torch.load(base / "preempted.ckpt", weights_only=False)["epoch"]
    (records / "exception_rank0.json").rename(records / "preempted_rank0.json")
    (records / "exception_rank1.json").rename(records / "preempted_rank1.json")
    command = train_command(
        f"data.root={indexed_root}",
        *INDEXED,
        *TWO_PROCESSES,
        f"trainer.max_epochs={saved_epoch + 3}",
        "trainer.log_every_n_steps=2",
        *NO_BEST,
        # Before the NaN probe: callbacks run in the order given, so the batch is recorded first.
        *recorder_overrides(base / "batches" / "resumed"),
        *probe("nan", "NanInputOnRank", rank=1, epoch=saved_epoch + 1, batch=2),
        *probe("exceptions", "ExceptionRecorder", path=records),
        f"ckpt_path={first}",  # and no hydra.run.dir: the run's own folder
    )
    with process_group(command, base, cli_environment()) as run:
        # Promptly: gloo's collective timeout, which a rank stopping alone would meet, is 30 min.
        (base / "resumed.status").write_text(str(run.wait(timeout=300)))
        wait_for_group_to_end(run.pid, limit=60)
    (base / "output.txt").rename(base / "resumed.txt")
    return base


@pytest.mark.slow
def test_sigterm_to_the_group_stops_both_ranks_at_one_step_and_spares_the_workers(
    preempted_then_diverged,
):
    base = preempted_then_diverged
    run_dir = base / "outputs" / "preempted"
    assert (base / "preempted.status").read_text() == str(128 + signal.SIGTERM)
    assert "DataLoader worker" not in (base / "preempted.txt").read_text()

    stops = read_json(base / "records", "preempted")
    assert [stops[rank]["type"] for rank in (0, 1)] == ["SIGTERMException"] * 2
    assert stops[0]["global_step"] == stops[1]["global_step"]  # the same step on both ranks
    stop = stops[0]
    assert stop["global_step"] == STEPS_PER_EPOCH * stop["epoch"] + stop["last_batch_idx"] + 1
    saved = torch.load(base / "preempted.ckpt", weights_only=False)
    assert (saved["epoch"], saved["global_step"]) == (stop["epoch"], stop["global_step"])
    assert "SIGTERM: wrote" in (run_dir / "train.log").read_text()

    # Rank 1 was launched into the same folder: one run folder, one config, its own log file.
    assert (
        "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2"
        in (base / "preempted.txt").read_text()
    )
    assert (run_dir / "train_ddp_process_1.log").is_file()
    # The resume (both ranks) left no copy: .hydra/config.yaml and the resolved one.
    assert len(list(run_dir.rglob("config.yaml"))) == 2


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_every_rank_promptly_at_the_same_batch(preempted_then_diverged):
    base = preempted_then_diverged
    # One run folder: the resume went on in the preempted run's.
    assert sorted(p.name for p in (base / "outputs").iterdir()) == ["preempted"]
    assert (base / "resumed.status").read_text() != "0"
    epoch = read_json(base / "records", "preempted")[0]["epoch"] + 1
    step = STEPS_PER_EPOCH * epoch + 3  # batch 2 of the epoch, counting steps from 1
    assert (
        f"loss is nan at step {step} (counting from 1; epoch {epoch}, batch 2, on rank 1 of 2"
        in (base / "resumed.txt").read_text()
    )
    stops = read_json(base / "records", "exception")
    assert set(stops) == {0, 1}
    for stop in stops.values():
        assert stop["type"] == "FloatingPointError"
        assert (stop["epoch"], stop["last_batch_idx"]) == (epoch, 3)  # the check after the NaN
    assert stops[0]["message"] == stops[1]["message"]

    # The resumed run finished the preempted epoch and wrote its last.ckpt; the NaN wrote none.
    resumed = base / "outputs" / "preempted"
    last = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (epoch - 1, STEPS_PER_EPOCH * epoch)
    assert all(torch.isfinite(value).all() for value in last["state_dict"].values())
    assert (resumed / "train_ddp_process_1.log").is_file()


@pytest.mark.slow
def test_a_ddp_resume_continues_the_run_in_its_folder_with_one_curve_per_tag(
    preempted_then_diverged,
):
    base = preempted_then_diverged
    run_dir = base / "outputs" / "preempted"
    saved = torch.load(base / "preempted.ckpt", weights_only=False)
    steps = scalar_steps(run_dir / "tensorboard", "train/loss")
    assert steps == sorted(set(steps)), steps  # one series: no step twice, never back
    assert steps[0] == 0 and steps[-1] > saved["global_step"]  # from both processes' parts
    log = (run_dir / "train.log").read_text()
    assert log.index("SIGTERM: wrote") < log.index(
        f"resumed from epoch {saved['epoch']}, step {saved['global_step']}"
    )
    resumes = yaml.safe_load((run_dir / "config.yaml").read_text())["resumes"]
    assert len(resumes) == 1 and "trainer.devices=2" in resumes[0]["command"]
    assert resumes[0]["changed"]["trainer.log_every_n_steps"] == {"run": 1, "now": 2}


def sampler_order(sampler: ResumableShuffleSampler, epoch: int) -> list[int]:
    """The sampler's whole share of `epoch`, in order."""
    sampler.set_epoch(epoch)
    return list(sampler)


def expected_batches(seed: int, rank: int, epoch: int, batches: range) -> list[dict]:
    """What BatchRecorder must read on `rank` in those batches of `epoch`: the sampler's own
    order for (seed, epoch, rank, world size 2), which test_sampling.py holds to be
    DistributedSampler's and the same per step as one process's."""
    share = sampler_order(ResumableShuffleSampler(IMAGES, seed, rank, world_size=2), epoch)
    return [
        {
            "epoch": epoch,
            "batch_idx": batch,
            "global_step": STEPS_PER_EPOCH * epoch + batch,
            "indices": share[PER_RANK * batch : PER_RANK * (batch + 1)],
        }
        for batch in batches
    ]


@pytest.mark.slow
def test_a_run_preempted_mid_epoch_resumes_with_every_step_the_images_of_one_process(
    preempted_then_diverged,
):
    base = preempted_then_diverged
    saved = torch.load(base / "preempted.ckpt", weights_only=False)
    seed = saved["ImageFolderDataModule"]["shuffle_seed"]  # the order the resumed run must keep
    assert seed == saved["config"]["seed"]
    epoch = saved["epoch"]
    done = saved["global_step"] - STEPS_PER_EPOCH * epoch  # batches of that epoch trained
    assert 0 < done < STEPS_PER_EPOCH  # stopped mid-epoch

    preempted = read_records(base / "batches" / "preempted")
    resumed = read_records(base / "batches" / "resumed")
    last_batch = 3  # the resumed run stops at the check after rank 1's NaN at batch 2
    whole_epoch = range(STEPS_PER_EPOCH)
    for rank in (0, 1):
        before = [
            *(b for e in range(epoch) for b in expected_batches(seed, rank, e, whole_epoch)),
            *expected_batches(seed, rank, epoch, range(done)),
        ]
        assert preempted[rank] == before  # what the preempted run trained, nothing after it
        after = [
            *expected_batches(seed, rank, epoch, range(done, STEPS_PER_EPOCH)),  # no replay
            *expected_batches(seed, rank, epoch + 1, range(last_batch + 1)),
        ]
        assert resumed[rank] == after

    # The interrupted epoch over both runs and both ranks: each image once, and each optimizer
    # step's images those of the same step on one process.
    steps = [
        [record for rank in (0, 1) for record in run[rank] if record["epoch"] == epoch]
        for run in (preempted, resumed)
    ]
    seen = [i for run in steps for record in run for i in record["indices"]]
    assert sorted(seen) == list(range(IMAGES))
    one_process = sampler_order(ResumableShuffleSampler(IMAGES, seed), epoch)
    global_batch = 2 * PER_RANK
    for batch in range(STEPS_PER_EPOCH):
        step = [i for run in steps for r in run if r["batch_idx"] == batch for i in r["indices"]]
        start = global_batch * batch
        assert sorted(step) == sorted(one_process[start : start + global_batch])
