"""The GPU benchmark's pieces that a CPU can check in seconds, so that `bash benchmarks/gpu.sh` does
not die of a renamed import or a wrong ratio on the one GPU run it gets. (The whole script runs
on a CPU with `python benchmarks/gpu_table.py --smoke`, in minutes.)"""

import sys

import pytest
from torch.utils.tensorboard import SummaryWriter

from tests.conftest import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
import gpu_table  # noqa: E402
import step  # noqa: E402
import user_loop  # noqa: E402, F401  (it must import)


def test_cli_rate_is_images_between_two_events_over_the_time_between(tmp_path):
    writer = SummaryWriter(str(tmp_path / "tensorboard"))
    for step_number, wall_time in [(10, 100.0), (40, 103.0), (80, 105.0), (120, 107.0)]:
        writer.add_scalar("train/images_per_second", 1.0, step_number, walltime=wall_time)
    writer.close()
    # From step 40 on: 80 steps of 128 images in 4 s.
    rate = gpu_table.rate_from_events(tmp_path, batch=128, from_step=40)
    assert rate == pytest.approx(80 * 128 / 4)


def test_table_gives_each_row_its_fraction_of_the_fastest_compiled_loop_at_its_batch():
    rows = [
        {"row": "eager", "name": "eager", "batch": 128, "img_s": 9000.0, "seconds": 3},
        {"row": "compiled", "name": "compiled", "batch": 128, "img_s": 20000.0, "seconds": 40},
        {"row": "cudagraphs", "name": "graphs", "batch": 128, "img_s": 18000.0, "seconds": 20},
        {"row": "cudagraphs", "name": "graphs", "batch": 32, "img_s": 12000.0, "seconds": 20},
        {"row": "lightning", "name": "module", "batch": 32, "img_s": 11400.0, "x_same_step": 0.95},
        {"name": "CLI", "batch": 128, "img_s": 5000.0, "note": "first batch (compiling) 30 s"},
        {"name": "user", "batch": 128, "error": "exit 1"},
    ]
    lines = gpu_table.table(rows).splitlines()
    assert "| eager | 128 | 9,000 | 0.45 |" in lines[2]
    assert "| module | 32 | 11,400 | 0.95 | 0.950 |" in lines[6]
    assert lines[7] == "| CLI | 128 | 5,000 | 0.25 |  | first batch (compiling) 30 s |"
    assert lines[8] == "| user | 128 | failed |  |  | exit 1 |"


def test_the_lightning_row_follows_the_plain_loop_it_is_compared_with():
    every = ["eager", "compiled", "cudagraphs", "lightning"]
    assert step.in_order(every, 128) == ["eager", "compiled", "lightning", "cudagraphs"]
    assert step.in_order(every, 32) == ["eager", "cudagraphs", "lightning", "compiled"]
