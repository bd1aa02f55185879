"""Every logger, read back from what it wrote: the metrics, and the run's resolved config as its
hyperparameters. One real run with `logger=[tensorboard,csv,wandb,mlflow]` serves every test."""

import csv
import json
import logging
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from alexnet_pl.train import train
from tests.conftest import SMALL_RUN

LOGGED = ("train/loss", "train/top1", "train/top5", "val/loss", "val/top1", "val/top5")
TENSORBOARD_NOTE = "write to TensorBoard only, and this run has no TensorBoardLogger"


def run_config(run: Path) -> dict[str, Any]:
    """The resolved config that train.py saved beside the logs (num_classes and seed as used)."""
    return OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))


def final_val_top1(run: Path) -> float:
    return json.loads((run / "metrics.json").read_text())["val/top1"]


def csv_values(run: Path, name: str) -> list[float]:
    """Every value the CSV logger wrote for one metric, in order: what the others must match."""
    with (run / "csv" / "metrics.csv").open() as file:
        return [float(row[name]) for row in csv.DictReader(file) if row[name]]


def flattened(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """model/num_classes-style keys, as Lightning flattens hyperparameters for MLflow: mappings
    and lists of mappings (trainer/plugins/0/_target_) are opened, other values kept whole."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(flattened(value, f"{prefix}{key}/"))
        elif isinstance(value, list) and all(isinstance(item, Mapping) for item in value):
            for index, item in enumerate(value):
                flat.update(flattened(item, f"{prefix}{key}/{index}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def wandb_records(path: Path) -> Iterator[Any]:
    """The records of an offline W&B run file (run-<id>.wandb), which is the whole run: wandb 0.31
    writes no config.yaml or summary file for offline runs. Its format is LevelDB's log: a 7-byte
    file header, then 32 KiB blocks of records, each with a 7-byte header (checksum, length, kind:
    1 whole, 2-3-4 first, middle and last piece) and a protobuf Record."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, header = 32768, 7
    offset, pieces = header, b""
    while offset + header <= len(data):
        if block - offset % block < header:  # a block's tail too short for a header is padding
            offset += block - offset % block
            continue
        _, length, kind = struct.unpack_from("<IHB", data, offset)
        pieces += data[offset + header : offset + header + length]
        offset += header + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            pieces = b""
            yield record


def test_csv_logger_writes_the_metrics_and_the_config(counted_classes_run):
    with (counted_classes_run / "csv" / "metrics.csv").open() as file:
        columns = next(csv.reader(file))
    assert set(LOGGED) <= set(columns)
    assert 1 <= len(csv_values(counted_classes_run, "train/loss")) <= 2  # 2 steps: 20 images / 8
    validations = csv_values(counted_classes_run, "val/top1")
    assert validations == [pytest.approx(final_val_top1(counted_classes_run))]

    hparams = yaml.safe_load((counted_classes_run / "csv" / "hparams.yaml").read_text())
    assert hparams == run_config(counted_classes_run)
    assert hparams["model"]["num_classes"] == 10 and hparams["seed"] == 3


def test_tensorboard_keeps_the_config_beside_its_events(counted_classes_run):
    hparams = yaml.safe_load((counted_classes_run / "tensorboard" / "hparams.yaml").read_text())
    assert hparams == run_config(counted_classes_run)
    # With TensorBoard configured, the views that need it are on and say nothing about it.
    assert TENSORBOARD_NOTE not in (counted_classes_run / "train.log").read_text()


def test_wandb_logs_offline_in_the_run_folder_the_metrics_and_the_config(counted_classes_run):
    (run_file,) = (counted_classes_run / "wandb").glob("offline-run-*/run-*.wandb")
    history: dict[str, list[float]] = {}
    config: dict[str, Any] = {}
    exit_codes = []
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                history.setdefault(key, []).append(json.loads(item.value_json))
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "exit":
            exit_codes.append(record.exit.exit_code)

    assert exit_codes == [0]  # the run was closed, not left half-written
    assert set(LOGGED) <= set(history)
    assert history["train/loss"] == pytest.approx(csv_values(counted_classes_run, "train/loss"))
    assert history["val/top1"] == [pytest.approx(final_val_top1(counted_classes_run))]
    config.pop("_wandb", None)  # W&B's own bookkeeping
    assert config == run_config(counted_classes_run)


def test_mlflow_logs_to_a_file_store_in_the_run_folder_the_metrics_and_the_config(
    counted_classes_run, monkeypatch
):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # as conf/logger/mlflow.yaml sets it
    client = MlflowClient(tracking_uri=f"file:{counted_classes_run / 'mlruns'}")
    experiment = client.get_experiment_by_name("alexnet-pl")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"

    assert set(LOGGED) <= set(run.data.metrics)
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert losses == pytest.approx(csv_values(counted_classes_run, "train/loss"))
    assert run.data.metrics["val/top1"] == pytest.approx(final_val_top1(counted_classes_run))
    config = flattened(run_config(counted_classes_run))
    expected = {key: str(value)[:250] for key, value in config.items()}
    assert run.data.params == expected  # MLflow keeps parameters as text, at most 250 characters
    assert run.data.params["model/num_classes"] == "10"


def test_without_tensorboard_its_views_say_so_once_and_the_wandb_run_is_closed(
    compose_config, image_root, tmp_path, caplog, monkeypatch
):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline, as configured
    cfg = compose_config(
        *SMALL_RUN,
        f"data.root={image_root}",
        "logger=[csv,wandb]",
        "trainer.max_epochs=1",
        "~callbacks.best_checkpoint",
        "~callbacks.last_checkpoint",
    )
    with caplog.at_level(logging.INFO, logger="alexnet_pl.monitoring"):
        train(cfg)
    notes = [r.getMessage() for r in caplog.records if TENSORBOARD_NOTE in r.getMessage()]
    assert len(notes) == 1
    assert "InputSamples" in notes[0] and "Throughput" in notes[0]  # the views, by name
    assert "(loggers: ContinuedCSVLogger, WandbLogger)" in notes[0]
    assert "logger=[tensorboard,csv]" in notes[0]  # how to turn them on
    assert not (tmp_path / "tensorboard").exists()
    # W&B keeps a run open per process: left open, the next job of a Hydra sweep (-m, the same
    # process) would log into this run and this run's folder.
    import wandb

    assert wandb.run is None
    assert len(list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))) == 1
