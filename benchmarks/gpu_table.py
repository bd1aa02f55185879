"""Every GPU measurement of issue 12 in one table (run by `bash benchmarks/gpu.sh`):

- the ceilings: a plain PyTorch loop on batches already on the GPU, eager, compiled, compiled
  with CUDA graphs, at 128 and 32 images per GPU (benchmarks/step.py);
- AlexNetModule under the Trainer with the default config, callbacks and progress bar, on the
  same resident batches (step.py);
- the real CLI, `python -m alexnet_pl.train` with the default config (the speed switches that
  `auto` picks on CUDA), on generated ImageNet-sized JPEGs with data.decode=cpu and gpu, and on
  their `prepare resized` copy; its rate is read from what the run wrote (TensorBoard's
  train/images_per_second events: images between two of them over the time between);
- the baseline a user writes: ImageFolder + PIL + torchvision's alexnet + SGD (user_loop.py);

each also as a fraction of the fastest plain compiled loop at the same batch per GPU. Prints the
table and writes it to $OUT/gpu_table.md (with every run's log under $OUT/gpu_logs/).

    python3 benchmarks/gpu_table.py [--workers 14]
    python3 benchmarks/gpu_table.py --smoke          # the whole script in minutes on a CPU
"""

import argparse
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parent
PROJECT = BENCHMARKS.parent
sys.path.insert(0, str(PROJECT))
from benchmarks.pipeline import SIZES, photo_like_jpeg  # noqa: E402

RESIZE = 256
CLI_BATCH = 128  # the default config's global batch, on one GPU


def write_image(task: tuple[Path, int, int, int]) -> None:
    path, index, width, height = task
    rng = np.random.default_rng(index)
    path.write_bytes(photo_like_jpeg(rng, width, height))


def generate(root: Path, images: int, classes: int, workers: int) -> Path:
    """`images` photo-like training JPEGs in ImageNet's common sizes over `classes` folders, one
    small validation image per class (the DataModule wants both splits), made in parallel."""
    marker = root / ".complete"
    if marker.exists():
        return root
    tasks = []
    for split, count in (("train", images), ("val", classes)):
        for i in range(count):
            folder = root / split / f"n{i % classes:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            width, height = SIZES[i % len(SIZES)] if split == "train" else (64, 48)
            tasks.append(
                (
                    folder / f"{split}_{i:06d}.JPEG",
                    i + (0 if split == "train" else 10**7),
                    width,
                    height,
                )
            )
    with Pool(workers) as pool:
        for _ in pool.imap_unordered(write_image, tasks, chunksize=64):
            pass
    marker.touch()
    return root


def run(command: list[str], log: Path, timeout: float) -> tuple[int, str]:
    """Runs a command in its own process group, its output kept in `log`; returns its exit
    status (124: timed out, and the whole group, loader workers included, was killed)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
        status = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        status, output = 124, output + f"\nTIMED OUT after {timeout:.0f} s"
    seconds = time.perf_counter() - started
    log.write_text(f"$ {shlex.join(command)}\n# exit {status} after {seconds:.0f} s\n{output}")
    return status, output


def rate_from_events(run_dir: Path, batch: int, from_step: int) -> float:
    """Images per second between the first train/images_per_second event at or after
    `from_step` and the last one, from the events' own steps and wall times."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(run_dir.rglob("events.out.tfevents.*"))
    if not files:
        raise RuntimeError(f"no TensorBoard events under {run_dir}")
    events = EventAccumulator(str(files[0].parent), size_guidance={"scalars": 0})
    events.Reload()
    points = [e for e in events.Scalars("train/images_per_second") if e.step >= from_step]
    if len(points) < 2:
        raise RuntimeError(f"fewer than two images_per_second events from step {from_step}")
    first, last = points[0], points[-1]
    return batch * (last.step - first.step) / (last.wall_time - first.wall_time)


def cli_row(args, name: str, root: Path, decode: str, logs: Path) -> dict:
    slug = f"{name}-{decode}".replace(" ", "-")  # file names that travel anywhere
    run_dir = args.cache / "runs" / slug
    command = [
        sys.executable,
        "-m",
        "alexnet_pl.train",
        f"data.root={root}",
        f"data.decode={decode}",
        f"data.num_workers={args.workers}",
        f"trainer.log_every_n_steps={args.log_every}",
        f"++trainer.max_steps={args.cli_steps}",
        "++trainer.limit_val_batches=0",
        "~callbacks.best_checkpoint",  # written once per epoch, never during the timed steps
        "~callbacks.last_checkpoint",
        f"hydra.run.dir={run_dir}",
        *args.cli_extra,
    ]
    label = f"CLI, default config, {name}, data.decode={decode}, {args.workers} workers"
    status, output = run(command, logs / f"cli-{slug}.log", args.cli_timeout)
    row = {"name": label, "batch": args.cli_batch}
    compiled = re.search(r"the first training batch took ([\d.]+) s", output)
    if compiled:
        row["note"] = f"first batch (compiling) {float(compiled.group(1)):.0f} s"
    if status != 0:
        return row | {"error": f"exit {status}: {output.strip().splitlines()[-1][:200]}"}
    try:
        rate = rate_from_events(run_dir, args.cli_batch, args.cli_warmup)
    except Exception as error:
        return row | {"error": repr(error)}
    return row | {"img_s": rate}


def table(rows: list[dict]) -> str:
    ceilings: dict[int, float] = {}
    for row in rows:
        if row.get("row") in ("compiled", "cudagraphs") and "img_s" in row:
            ceilings[row["batch"]] = max(ceilings.get(row["batch"], 0.0), row["img_s"])
    lines = [
        "| what | per GPU | img/s | x ceiling | x plain loop, same compile | notes |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        ceiling = ceilings.get(row["batch"])
        if "img_s" in row:
            rate = f"{row['img_s']:,.0f}"
            x_ceiling = f"{row['img_s'] / ceiling:.2f}" if ceiling else ""
        else:
            rate, x_ceiling = "failed", ""
        same = f"{row['x_same_step']:.3f}" if "x_same_step" in row else ""
        note = row.get("error") or row.get("note", "")
        if "seconds" in row:
            note = f"{row['seconds']:.0f} s with compiling"
        lines.append(f"| {row['name']} | {row['batch']} | {rate} | {x_ceiling} | {same} | {note} |")
    return "\n".join(lines)


def describe_machine() -> str:
    import pytorch_lightning
    import torch
    import torchvision

    # nvidia-smi rather than torch.cuda: this process forks data workers and runs no CUDA itself.
    try:
        query = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
        card = subprocess.run(query, capture_output=True, text=True).stdout.strip() or "no GPU"
    except OSError:
        card = "no GPU"
    return (
        f"{card}, {os.cpu_count()} CPUs; Python {platform.python_version()}, torch "
        f"{torch.__version__}, torchvision {torchvision.__version__}, pytorch-lightning "
        f"{pytorch_lightning.__version__}"
    )


class Report:
    """The table so far, printed and written to $OUT/gpu_table.md after every stage, so that a run
    cut short still leaves what it measured."""

    def __init__(self, out: Path | None, machine: str, args: argparse.Namespace) -> None:
        self.out, self.machine, self.args = out, machine, args
        self.rows: list[dict] = []
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def remaining(self) -> float:
        return self.args.budget - self.elapsed()

    def write(self, stage: str) -> None:
        print(f"{stage} after {self.elapsed():.0f} s", flush=True)
        text = (
            f"{self.machine}\n\n"
            f"`bash benchmarks/gpu.sh`: {self.elapsed():.0f} s so far, data generation included "
            f"({stage}); {self.args.images} generated JPEGs in {self.args.classes} classes\n\n"
            f"{table(self.rows)}\n"
        )
        if self.out is not None:
            (self.out / "gpu_table.md").write_text(text)
        self.text = text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 4) - 2))
    parser.add_argument("--images", type=int, default=16384, help="training JPEGs to generate")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/alexnet_pl_gpu"))
    parser.add_argument("--budget", type=float, default=540, help="seconds; later runs are cut")
    parser.add_argument("--smoke", action="store_true", help="tiny settings, CPU: a plumbing check")
    parser.add_argument(
        "--timeouts",
        type=float,
        nargs=3,
        default=(220, 100, 60),
        metavar=("STEP", "CLI", "USER"),
        help="seconds for step.py, each CLI run and the user's loop",
    )
    args = parser.parse_args()
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    logs = (out or args.cache) / "gpu_logs"
    logs.mkdir(parents=True, exist_ok=True)
    # One epoch of the generated set is 128 batches: 120 steps, timed from step 40, after the
    # workers' prefetched batches (workers x 2, filled while the first step compiles) are used up.
    args.cli_steps, args.cli_warmup, args.log_every = 120, 40, 10
    args.cli_batch, args.cli_extra = CLI_BATCH, []
    timeouts = dict(zip(("step", "cli", "user"), args.timeouts, strict=True))
    step_args = ["--device", "cuda"]
    user_args = ["--device", "cuda", "--workers", str(args.workers)]
    decodes = ["cpu", "gpu"]
    if args.smoke:
        args.images, args.classes, args.workers = 96, 4, 2
        args.cli_steps, args.cli_warmup, args.log_every = 12, 2, 2
        args.cli_batch, args.budget = 8, 3600
        timeouts = {"step": 900, "cli": 600, "user": 300}
        args.cli_extra = [
            "trainer.accelerator=cpu",
            "model.num_classes=4",
            "transforms.resize=72",
            "transforms.crop=67",
            "data.batch_size=8",
            "data.pin_memory=false",
        ]
        step_args = "--device cpu --batch 8 --size 67 --images 8 --warmup 1 --classes 4".split()
        step_args += ["--rows", "eager,compiled,lightning", "--compile-backend", "eager"]
        user_args = "--device cpu --workers 2 --batch 8 --crop 67 --warmup 1 --batches 4".split()
        decodes = ["cpu"]  # nvjpeg needs a GPU
    args.cli_timeout = timeouts["cli"]

    report = Report(out, describe_machine(), args)
    print(report.machine, flush=True)
    originals = args.cache / f"originals-{args.images}"
    generate(originals, args.images, args.classes, args.workers)
    from alexnet_pl.resized_copy import make_resized_copy

    prepared = args.cache / f"resized-{args.images}"
    make_resized_copy(originals, prepared, RESIZE, quality=90, workers=args.workers)
    report.write("data ready")

    step_json = args.cache / "step_rows.json"
    step_json.unlink(missing_ok=True)
    command = [sys.executable, str(BENCHMARKS / "step.py"), *step_args, "--json", str(step_json)]
    status, _ = run(command, logs / "step.log", min(timeouts["step"], report.remaining()))
    if step_json.exists():
        report.rows += json.loads(step_json.read_text())
    if status != 0:
        error = f"exit {status}, see gpu_logs/step.log"
        report.rows.append({"name": "benchmarks/step.py", "batch": "", "error": error})
    report.write("step rows done")

    cli_runs = [("originals", originals, decode) for decode in decodes]
    cli_runs.append(("prepared copy", prepared, "cpu"))
    for name, root, decode in cli_runs:
        args.cli_timeout = min(timeouts["cli"], report.remaining())
        if args.cli_timeout < 30:
            report.rows.append({"name": f"CLI, {name}, {decode}", "batch": "", "error": "no time"})
            continue
        report.rows.append(cli_row(args, name, root, decode, logs))
        report.write(f"CLI {name} data.decode={decode} done")

    user_json = args.cache / "user_loop.json"
    user_json.unlink(missing_ok=True)
    command = [sys.executable, str(BENCHMARKS / "user_loop.py"), "--data", str(originals)]
    command += [*user_args, "--json", str(user_json)]
    status, _ = run(
        command, logs / "user_loop.log", max(1, min(timeouts["user"], report.remaining()))
    )
    user_row = {
        "name": "baseline a user writes: ImageFolder + PIL, torchvision alexnet, SGD, float32, "
        f"{args.workers} workers, originals",
        "batch": args.cli_batch,
    }
    if user_json.exists():
        user_row["img_s"] = json.loads(user_json.read_text())["img_s"]
    else:
        user_row["error"] = f"exit {status}, see gpu_logs/user_loop.log"
    report.rows.append(user_row)
    report.write("all done")
    print("\n" + report.text, flush=True)


if __name__ == "__main__":
    main()
