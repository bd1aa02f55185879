"""DDP through the CLI, refused before any process starts. Real two-process runs (Lightning's
launcher and torchrun: one run folder, seeds, data split, signals): test_launchers.py."""

from tests.conftest import SMALL_RUN


def test_global_batch_smaller_than_the_process_count_is_rejected(
    image_root, tmp_path, run_in_process
):
    # Refused before DDP launches its ranks, so the entry point runs in the test process.
    result = run_in_process(
        *SMALL_RUN,
        f"data.root={image_root}",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "data.batch_size=3",
        "trainer.fast_dev_run=true",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "data.batch_size=3 is the global batch and must divide evenly over 2 processes" in (
        result.stderr
    )
    assert "Initializing distributed" not in result.stdout + result.stderr  # no rank started
