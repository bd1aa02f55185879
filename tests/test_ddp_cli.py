"""DDP through the CLI, refused before any process starts. Real two-process runs (Lightning's
launcher and torchrun: one run folder, seeds, data split, signals): test_launchers.py."""

from tests.conftest import SMALL_RUN, run_train_cli


def test_global_batch_smaller_than_the_process_count_is_rejected(image_root, tmp_path):
    result = run_train_cli(
        *SMALL_RUN,
        f"data.root={image_root}",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "data.batch_size=3",
        "trainer.fast_dev_run=true",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode != 0
    assert "data.batch_size=3 is the global batch and must divide evenly over 2 processes" in (
        result.stderr
    )
