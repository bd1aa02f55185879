"""The host's work per step stays at Lightning's floor (benchmarks/host.py measures it), and every
run says how much of its time it waited for data."""

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
from hydra.utils import instantiate
from pytorch_lightning.demos.boring_classes import BoringModel
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from alexnet_pl.hook_dispatch import SkipEmptyBatchHooks
from alexnet_pl.progress_bar import TimedProgressBar
from alexnet_pl.run_record import DATA_WAIT
from alexnet_pl.train import train
from tests.conftest import SMALL_RUN

# 40 training images of larger_image_root in batches of 8: 5 batches, checked after the 4th and
# the 5th (step_cadence.py); the fraction's window is the first four batches with their three
# gaps (the one-batch window of the 5th has none, and logs nothing).
WAIT_RUN = [*SMALL_RUN, "trainer.log_every_n_steps=4", "trainer.max_epochs=1"]


def logged_fractions(run_dir: Path) -> list[float]:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [event.value for event in events.Scalars(DATA_WAIT)]


def test_a_slow_loader_shows_a_high_data_wait_fraction(run_in_process, larger_image_root, tmp_path):
    run_dir = tmp_path / "run"
    result = run_in_process(
        *WAIT_RUN,
        f"data.root={larger_image_root}",
        "data._target_=tests.probes_data_wait.SlowLoaderDataModule",
        "+data.seconds_per_batch=1.0",
        "+callbacks.batch_times._target_=tests.probes_data_wait.BatchTimes",
        f"+callbacks.batch_times.path={tmp_path / 'batch_times.json'}",
        "seed=0",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert logged_fractions(run_dir) == [pytest.approx(metrics[DATA_WAIT], abs=1e-4)]
    # The window: batches 0-3. Their gaps hold the loader's sleeps; the fraction is their share of
    # the window's wall time, as a clock outside the run saw it. On a quiet 2-core CPU a step takes
    # ~0.15 s and the fraction is ~0.85; a loaded CPU stretches the steps, never the sleeps.
    times = json.loads((tmp_path / "batch_times.json").read_text())
    starts, ends = times["starts"], times["ends"]
    gaps = [starts[i + 1] - ends[i] for i in range(3)]
    assert all(gap >= 1.0 for gap in gaps)
    assert metrics[DATA_WAIT] == pytest.approx(sum(gaps) / (ends[3] - starts[0]), abs=0.03)
    assert metrics[DATA_WAIT] > 0.3
    assert "waiting for data" in result.stdout + result.stderr  # the summary at the end


def test_resident_batches_show_a_low_data_wait_fraction(compose_config, larger_image_root):
    cfg = compose_config(
        *WAIT_RUN,
        f"data.root={larger_image_root}",
        "data._target_=tests.probes_data_wait.ResidentBatchesDataModule",
        "seed=0",
    )
    trainer = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0 <= metrics[DATA_WAIT] < 0.2
    assert logged_fractions(run_dir) == [pytest.approx(metrics[DATA_WAIT], abs=1e-4)]
    # The progress bar's short form: a plain number, rounded.
    shown = trainer.progress_bar_metrics["data_wait"]
    assert isinstance(shown, float) and shown == round(shown, 2)


class CountCalls(pl.Callback):
    """Overrides one batch hook; the others stay Lightning's empty defaults."""

    def __init__(self) -> None:
        self.batch_ends = 0

    def on_train_batch_end(self, *args) -> None:
        self.batch_ends += 1


def test_empty_batch_hooks_are_skipped_and_the_others_still_run(tmp_path):
    counting = CountCalls()
    trainer = pl.Trainer(
        max_steps=4,
        callbacks=[counting, SkipEmptyBatchHooks()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    # A Lightning that called a skipped hook would call None here (TypeError): loud, not silent.
    trainer.fit(BoringModel())
    assert counting.batch_ends == 4
    assert counting.on_train_batch_start is None and counting.on_before_backward is None


class BarPosition(pl.Callback):
    """The training bar's position after each batch (runs after the progress bar's own hook)."""

    def __init__(self) -> None:
        self.positions: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.positions.append(trainer.progress_bar_callback.train_progress_bar.n)


def test_progress_bar_redraws_on_its_clock_and_at_the_last_batch(tmp_path):
    seen = BarPosition()
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=12,
        limit_val_batches=0,
        callbacks=[TimedProgressBar(refresh_seconds=3600), seen],
        logger=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(BoringModel())
    # Drawn at the first batch, then not before an hour has passed, except at the epoch's end.
    assert seen.positions == [1] * 11 + [12]


def test_no_progress_bar_with_enable_progress_bar_false(compose_config):
    cfg = compose_config("++trainer.enable_progress_bar=false")
    assert instantiate(cfg.callbacks.progress_bar) is None
    assert isinstance(instantiate(compose_config().callbacks.progress_bar), TimedProgressBar)


@pytest.mark.parametrize("name", ["best_checkpoint", "last_checkpoint", "learning_rate_monitor"])
def test_lightnings_callbacks_keep_no_idle_batch_hook_in_the_default_config(compose_config, name):
    from alexnet_pl.hook_dispatch import skip_empty_batch_hooks

    callback = instantiate(compose_config().callbacks[name])
    skip_empty_batch_hooks(callback)
    assert all(
        getattr(callback, hook) is None
        for hook in ("on_train_batch_start", "on_train_batch_end", "on_before_backward")
    )


def test_compile_time_report_leaves_the_batches_alone_once_it_has_nothing_to_time():
    from types import SimpleNamespace

    from alexnet_pl.speed import CompileTimeReport

    eager = CompileTimeReport()
    eager.on_fit_start(SimpleNamespace(), SimpleNamespace(compile_options=None))
    assert all(getattr(eager, hook) is None for hooks in eager.HOOKS.values() for hook in hooks)

    compiled, trainer = CompileTimeReport(), SimpleNamespace(is_global_zero=False)
    module = SimpleNamespace(compile_options={"mode": "reduce-overhead"})
    compiled.on_fit_start(trainer, module)
    compiled.on_train_batch_start(trainer, module, None, 0)
    assert compiled.on_validation_batch_start is not None  # still to time
    compiled.on_train_batch_end(trainer, module, None, None, 0)  # reported: training's are off
    assert compiled.on_train_batch_start is None and compiled.on_train_batch_end is None
    assert compiled.on_validation_batch_start is not None
