"""`experiment=ablations`: the paper's ablations as one Hydra sweep, one switch per job."""

import csv

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from alexnet_pl import compare
from tests.conftest import CONFIG_DIR, SMALL_RUN

OPTIONS = sorted(path.stem for path in (CONFIG_DIR / "ablation").glob("*.yaml"))
def composed(*overrides: str, hydra: bool = False):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose("train", overrides=list(overrides), return_hydra_config=hydra)
    finally:
        GlobalHydra.instance().clear()


def flat(config) -> dict:
    return compare.flatten(OmegaConf.to_container(config))


def test_the_sweep_runs_every_option_of_the_ablation_group():
    swept = composed("experiment=ablations", hydra=True).hydra.sweeper.params.ablation.split(",")
    assert sorted(swept) == OPTIONS
    assert swept[0] == "baseline"  # job 0: the row every other is read against


@pytest.mark.parametrize("option", OPTIONS)
def test_each_option_changes_its_own_switches_from_the_baseline_and_builds(option):
    baseline = flat(composed("experiment=ablations"))
    ablated = composed("experiment=ablations", f"ablation={option}")
    changes = {k: v for k, v in flat(ablated).items() if baseline.get(k, "missing") != v}
    written = compare.flatten(
        yaml.safe_load((CONFIG_DIR / "ablation" / f"{option}.yaml").read_text()) or {}
    )
    assert [key for key in written if key not in baseline] == []  # switches that exist
    assert changes == written  # exactly the file's switches
    assert option == "baseline" or changes  # an option that changes nothing is no ablation
    instantiate(ablated.model)  # each switch is an argument the classes take
    instantiate(ablated.transforms.train)
    instantiate(ablated.transforms.train_batch)


def test_the_preset_sweeps_into_one_folder_that_compare_reads(image_root, tmp_path, run_in_process):
    sweep = tmp_path / "sweep"
    result = run_in_process(
        "-m",
        "experiment=ablations",
        "ablation=baseline,no_lighting",  # the command line's list replaces the preset's
        *SMALL_RUN,
        "data=imagenet",  # the test's small folder instead of the demo data
        f"data.root={image_root}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(path.name for path in sweep.iterdir() if path.is_dir())
    assert runs == ["0_baseline", "1_no_lighting"]
    used = [yaml.safe_load((sweep / run / "config.yaml").read_text()) for run in runs]
    assert [config["transforms"]["lighting_std"] for config in used] == [0.1, 0]
    assert [config["model"]["groups"] for config in used] == [2, 2]  # the paper's towers
    assert compare.main([str(sweep)]) == 0
    with (sweep / compare.TABLE_NAME).open(newline="") as table:
        rows = list(csv.DictReader(table))
    assert [(row["run"], row["ablation"]) for row in rows] == [
        ("0_baseline", "baseline"),
        ("1_no_lighting", "no_lighting"),
    ]
    assert all(row["final top-1 %"] for row in rows)
