"""`python -m alexnet_pl.compare` on the run folders of a real two-job sweep."""

import csv
import json
import sys
from pathlib import Path

import pytest

from alexnet_pl import compare
from tests.conftest import SMALL_RUN, run_module_in_process

NO_TRACEBACK = {"HYDRA_FULL_ERROR": "0"}  # as a user's shell: the test runners set it to 1


@pytest.fixture(scope="module")
def sweep(larger_image_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hydra multirun of two jobs of two epochs each, dropout 0.0 and 0.5, logging to TensorBoard
    and CSV: its folder holds the run folders 0/ and 1/."""
    sweep_dir = tmp_path_factory.mktemp("sweep") / "multirun"
    arguments = [
        "-m",
        *SMALL_RUN,
        f"data.root={larger_image_root}",
        "trainer.max_epochs=2",
        "seed=1",
        "logger=[tensorboard,csv]",
        "~callbacks.last_checkpoint",
        "model.dropout=0.0,0.5",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    with pytest.MonkeyPatch.context() as patch:
        status = run_module_in_process("alexnet_pl.train", arguments, sweep_dir.parent, patch)
    assert status == 0
    return sweep_dir


def csv_curve(run: Path, tag: str) -> list[float]:
    with (run / "csv" / "metrics.csv").open(newline="") as rows:
        return [float(row[tag]) for row in csv.DictReader(rows) if row[tag]]


def test_compare_tabulates_a_sweep_with_its_differing_override(sweep, tmp_path, capsys):
    assert compare.main([str(sweep), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    lines = printed.strip().splitlines()
    assert lines[0] == (
        "| run | model.dropout | best top-1 % | best top-5 % | final top-1 % | final top-5 % "
        "| epochs | wall time |"
    )  # the one override that differs; the shared ones (data.root, seed, ...) are left out
    with (tmp_path / compare.TABLE_NAME).open(newline="") as table:
        rows = list(csv.DictReader(table))
    assert [(row["run"], row["model.dropout"]) for row in rows] == [("0", "0.0"), ("1", "0.5")]
    for row in rows:
        run = sweep / row["run"]
        final = json.loads((run / "metrics.json").read_text())
        assert row["final top-1 %"] == f"{100 * final['val/top1']:.1f}"
        assert row["final top-5 %"] == f"{100 * final['val/top5']:.1f}"
        assert row["epochs"] == str(final["epochs_trained"]) == "2"
        # Best: read from the TensorBoard events; checked here against the CSV logger's copy.
        top1, top5 = csv_curve(run, "val/top1"), csv_curve(run, "val/top5")
        best = top1.index(max(top1))
        assert row["best top-1 %"] == f"{100 * top1[best]:.1f}"
        assert row["best top-5 %"] == f"{100 * top5[best]:.1f}"
        minutes, seconds = row["wall time"].split(":")
        assert 0 < 60 * int(minutes) + int(seconds) < 300
        assert f"| {row['run']} | {row['model.dropout']} | {row['best top-1 %']} |" in printed


def test_compare_draws_the_curves_of_every_run(sweep, tmp_path, capsys):
    pytest.importorskip("matplotlib")  # the `plot` extra, part of `test`
    assert compare.main([str(sweep / "0"), str(sweep / "1"), "--out", str(tmp_path)]) == 0
    plot = tmp_path / compare.PLOT_NAME
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot:  {plot}" in capsys.readouterr().err


def test_compare_without_matplotlib_still_tabulates_and_says_how_to_plot(
    sweep, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails
    assert compare.main([str(sweep), "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "| 0 | 0.0 |" in captured.out
    assert (tmp_path / compare.TABLE_NAME).is_file()
    assert not (tmp_path / compare.PLOT_NAME).exists()
    assert 'pip install -e ".[plot]"' in captured.err


def test_compare_without_overrides_diffs_the_configs(sweep, tmp_path, capsys):
    for job in ("0", "1"):
        (sweep / job / ".hydra" / "overrides.yaml").rename(tmp_path / f"overrides-{job}.yaml")
    try:
        assert compare.main([str(sweep), "--out", str(tmp_path)]) == 0
    finally:
        for job in ("0", "1"):
            (tmp_path / f"overrides-{job}.yaml").rename(sweep / job / ".hydra" / "overrides.yaml")
    header = capsys.readouterr().out.splitlines()[0]
    # model.dropout differs in config.yaml; the paths inside each run's own folder are left out.
    assert header.startswith("| run | model.dropout | best top-1 %")


def test_a_folder_that_is_not_a_run_is_named_without_a_traceback(sweep, tmp_path, run_in_process):
    (tmp_path / "notes").mkdir()
    result = run_in_process(
        str(sweep / "0"),
        str(tmp_path / "notes"),
        cwd=tmp_path,
        module="alexnet_pl.compare",
        env=NO_TRACEBACK,
    )
    assert result.returncode == 1
    assert f"error: {tmp_path / 'notes'} is not a run folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_compare_reads_the_csv_logs_of_a_run_without_tensorboard(sweep, tmp_path, capsys):
    runs = [compare.read_run(sweep / job) for job in ("0", "1")]
    with_events = compare.table_rows(runs, compare.differing_settings(runs))
    for job in ("0", "1"):
        (sweep / job / "tensorboard").rename(tmp_path / f"tensorboard-{job}")
    try:
        assert compare.main([str(sweep), "--out", str(tmp_path)]) == 0
    finally:
        for job in ("0", "1"):
            (tmp_path / f"tensorboard-{job}").rename(sweep / job / "tensorboard")
    with (tmp_path / compare.TABLE_NAME).open(newline="") as table:
        from_csv = list(csv.DictReader(table))
    for row, expected in zip(from_csv, with_events, strict=True):
        assert row["best top-1 %"] == expected["best top-1 %"]
        assert row["best top-5 %"] == expected["best top-5 %"]
        assert row["wall time"] == ""  # train/epoch_seconds is written to TensorBoard only
