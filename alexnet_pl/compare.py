"""Compare training runs: `python -m alexnet_pl.compare <multirun folder | run folders ...>`.

Prints a markdown table, one row per run: the overrides that differ between the runs, the best and
the final val top-1/top-5, the epochs trained and the wall time; writes the same table as CSV and,
with matplotlib installed (`pip install -e ".[plot]"`), the val/top1 curves of every run on one
plot. Driven by the run folders alone, as `python -m alexnet_pl.train` leaves them:
- .hydra/overrides.yaml: what each command line changed (columns: the keys whose values differ);
  without it, config.yaml's values that differ;
- metrics.json: the final validation metrics and the epochs trained (written when the run ends);
- the TensorBoard events (or, with `logger=csv`, csv/metrics.csv): every validation's val/top1 and
  val/top5, and train/epoch_seconds, whose sum is the wall time (training plus validation).

"best" is the validation with the highest val/top1 (the epoch best-*.ckpt holds) and its top-5.
"""

import argparse
import csv
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alexnet_pl.errors import MissingInput, UserError, reported_as_user_errors

CURVE_TAGS = ("val/top1", "val/top5", "train/epoch_seconds")
# Overrides that differ between any two runs without changing what they compute.
IGNORED_OVERRIDES = ("hydra.", "paths.")
TABLE_NAME = "compare.csv"
PLOT_NAME = "compare_val_top1.png"


@dataclass
class Run:
    """What one run folder says about its run."""

    folder: Path
    overrides: dict[str, str] | None  # None: no .hydra/overrides.yaml
    config: dict[str, Any]
    final: dict[str, Any]  # metrics.json; empty while the run has not ended
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # tag: (step, value)

    @property
    def name(self) -> str:
        return self.folder.name

    def best(self) -> tuple[float | None, float | None]:
        """val/top1 and val/top5 of the validation with the highest val/top1."""
        top1 = self.curves.get("val/top1", [])
        if not top1:
            return None, None
        step, best_top1 = max(top1, key=lambda point: point[1])  # the first of equals
        top5 = dict(self.curves.get("val/top5", []))
        return best_top1, top5.get(step)

    def final_value(self, tag: str) -> float | None:
        if tag in self.final:
            return float(self.final[tag])
        curve = self.curves.get(tag)
        return curve[-1][1] if curve else None  # a run still going, or stopped before the end

    def epochs(self) -> int | None:
        if "epochs_trained" in self.final:
            return int(self.final["epochs_trained"])
        return len(self.curves["val/top1"]) if self.curves.get("val/top1") else None

    def wall_seconds(self) -> float | None:
        seconds = self.curves.get("train/epoch_seconds")
        return sum(value for _, value in seconds) if seconds else None


def is_run_folder(folder: Path) -> bool:
    # config.yaml is written by alexnet_pl.train before the first step, on every run.
    return (folder / "config.yaml").is_file()


def find_runs(paths: list[Path]) -> list[Path]:
    """Each path is a run folder, or a folder of run folders (a multirun's <date>/<time>/)."""
    runs: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise MissingInput(f"{path} is not a folder; give run folders or a multirun folder")
        if is_run_folder(path):
            runs.append(path)
            continue
        inside = [child for child in path.iterdir() if child.is_dir() and is_run_folder(child)]
        if not inside:
            raise UserError(
                f"{path} is not a run folder (it has no config.yaml, which `python -m "
                "alexnet_pl.train` writes when a run starts) and holds none; give run folders "
                "such as outputs/<date>/<time>, or a multirun folder such as "
                "outputs/multirun/<date>/<time>"
            )
        runs += sorted(inside, key=job_order)
    return runs


def job_order(folder: Path) -> tuple[int, str]:
    """Hydra numbers a sweep's jobs 0, 1, ..., 10 (experiment=ablations: 0_baseline, 1_tanh, ...):
    in that order, not as text."""
    number = re.match(r"\d+", folder.name)
    return (int(number.group()) if number else sys.maxsize, folder.name)


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UserError(
            f"{path} is not readable YAML ({error}); is the run folder whole?"
        ) from None


def read_overrides(folder: Path) -> dict[str, str] | None:
    path = folder / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    overrides = {}
    for override in read_yaml(path) or []:
        key, _, value = str(override).partition("=")
        key = key.lstrip("+")  # `+ablation=tanh` and `ablation=tanh` set the same
        if not key.lstrip("~").startswith(IGNORED_OVERRIDES):
            overrides[key] = value
    return overrides


def read_curves(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every value of CURVE_TAGS in step order: from the TensorBoard events if the run has them,
    else from csv/metrics.csv (which has no train/epoch_seconds)."""
    event_folders = sorted({path.parent for path in folder.glob("**/events.out.tfevents.*")})
    if event_folders:
        from tensorboard.backend.event_processing.event_accumulator import (
            SCALARS,
            EventAccumulator,
        )

        # size_guidance 0: every event, not TensorBoard's sample of 1000 per tag.
        events = EventAccumulator(str(event_folders[0]), size_guidance={SCALARS: 0}).Reload()
        logged = set(events.Tags()["scalars"])
        return {
            tag: [(event.step, event.value) for event in events.Scalars(tag)]
            for tag in CURVE_TAGS
            if tag in logged
        }
    curves: dict[str, list[tuple[int, float]]] = {}
    for csv_file in sorted(folder.glob("**/metrics.csv"))[:1]:
        with csv_file.open(newline="") as rows:
            for row in csv.DictReader(rows):
                for tag in CURVE_TAGS:
                    if row.get(tag):
                        curves.setdefault(tag, []).append((int(row["step"]), float(row[tag])))
    return curves


def read_run(folder: Path) -> Run:
    config = read_yaml(folder / "config.yaml")
    if not isinstance(config, dict):
        raise UserError(f"{folder / 'config.yaml'} holds no run configuration")
    metrics_file = folder / "metrics.json"
    final = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return Run(folder, read_overrides(folder), config, final, read_curves(folder))


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(config, dict):
        return {prefix.rstrip("."): config}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        flat.update(flatten(value, f"{prefix}{key}."))
    return flat


def differing_settings(runs: list[Run]) -> list[dict[str, str]]:
    """Per run, the settings whose values are not the same in every run: the command-line
    overrides when every run has them (the sweep's own words: `ablation=tanh`), else config.yaml's
    values, leaving out those that name the run's own folder (its paths)."""
    if all(run.overrides is not None for run in runs):
        settings = [run.overrides or {} for run in runs]
    else:
        settings = [
            {
                key: str(value)
                for key, value in flatten(run.config).items()
                if str(run.folder) not in str(value) and not key.startswith(IGNORED_OVERRIDES)
            }
            for run in runs
        ]
    keys = sorted({key for setting in settings for key in setting})
    differing = [key for key in keys if len({setting.get(key) for setting in settings}) > 1]
    return [{key: setting.get(key, "") for key in differing} for setting in settings]


def percent(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def table_rows(runs: list[Run], settings_of_runs: list[dict[str, str]]) -> list[dict[str, str]]:
    rows = []
    for run, settings in zip(runs, settings_of_runs, strict=True):
        best_top1, best_top5 = run.best()
        epochs = run.epochs()
        rows.append(
            {
                "run": run.name,
                **settings,
                "best top-1 %": percent(best_top1),
                "best top-5 %": percent(best_top5),
                "final top-1 %": percent(run.final_value("val/top1")),
                "final top-5 %": percent(run.final_value("val/top5")),
                "epochs": "" if epochs is None else str(epochs),
                "wall time": duration(run.wall_seconds()),
            }
        )
    return rows


def markdown(rows: list[dict[str, str]]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(row[column] for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(rows: list[dict[str, str]], path: Path) -> None:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot_top1(runs: list[Run], labels: list[str], path: Path) -> bool:
    """The val/top1 curves of all runs against the optimizer step; False without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")  # files only: no display needed on a cluster node
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(8, 5))
    # The default cycle repeats after ten colours; a sweep of the ablations has eleven runs.
    axes.set_prop_cycle(color=pyplot.get_cmap("tab20").colors)
    for run, label in zip(runs, labels, strict=True):
        points = run.curves.get("val/top1", [])
        if points:
            steps, values = zip(*points, strict=True)
            axes.plot(steps, [100 * value for value in values], marker=".", label=label)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("val top-1 accuracy (%)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
    return True


def label(run: Run, settings: dict[str, str]) -> str:
    """The run's name and what sets it apart, for the plot's legend."""
    return " ".join([run.name, *(f"{key}={value}" for key, value in settings.items())])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alexnet_pl.compare", description=__doc__)
    parser.add_argument(
        "folders", type=Path, nargs="+", help="run folders, or a multirun folder holding them"
    )
    parser.add_argument(
        "--out",
        type=Path,
        help=f"where {TABLE_NAME} and {PLOT_NAME} go (default: the folder given, if one, else .)",
    )
    args = parser.parse_args(argv)

    runs = [read_run(folder) for folder in find_runs(args.folders)]
    out = args.out or (args.folders[0] if len(args.folders) == 1 else Path("."))
    out.mkdir(parents=True, exist_ok=True)
    settings = differing_settings(runs)
    rows = table_rows(runs, settings)
    print(markdown(rows))  # the command's answer: stdout
    write_csv(rows, out / TABLE_NAME)
    print(f"\ntable: {out / TABLE_NAME}", file=sys.stderr)
    if plot_top1(runs, list(map(label, runs, settings)), out / PLOT_NAME):
        print(f"plot:  {out / PLOT_NAME}", file=sys.stderr)
    else:
        print(
            'plot:  none, matplotlib is not installed; `pip install -e ".[plot]"` adds it',
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    with reported_as_user_errors():  # the message alone, no traceback
        sys.exit(main())
