"""`python -m alexnet_pl.export`: ONNX and torch.export files give the same logits as PyTorch."""

import json

import onnx
import onnxruntime
import pytest
import torch

from alexnet_pl.checkpoint import load_trained_model
from alexnet_pl.export import METADATA_KEY


@pytest.fixture
def export(run_in_process, tmp_path):
    """`python -m alexnet_pl.export <checkpoint> --format <fmt> --output <output>`, in the test
    process (conftest.run_in_process): the command line as a user types it, without the imports."""

    def run(checkpoint, fmt: str, output) -> None:
        arguments = (str(checkpoint), "--format", fmt, "--output", str(output))
        result = run_in_process(*arguments, cwd=tmp_path, module="alexnet_pl.export")
        assert result.returncode == 0, result.stderr[-4000:]
        assert result.stdout.splitlines()[-1] == str(output)  # it names the file it wrote

    return run


@pytest.mark.slow
def test_onnx_export_gives_the_same_logits_and_records_the_preprocessing(
    trained_run, tmp_path, export
):
    checkpoint = trained_run / "checkpoints" / "last.ckpt"
    export(checkpoint, "onnx", tmp_path / "alexnet.onnx")
    model = load_trained_model(checkpoint)
    crop = model.preprocessing.crop
    batch = torch.randn(3, 3, crop, crop)  # a batch size other than the example's
    with torch.no_grad():
        expected = model.network(batch).numpy()
    session = onnxruntime.InferenceSession(str(tmp_path / "alexnet.onnx"))
    (logits,) = session.run(None, {session.get_inputs()[0].name: batch.numpy()})
    assert logits.shape == expected.shape
    assert abs(logits - expected).max() < 1e-4 * max(1.0, abs(expected).max())

    props = {p.key: p.value for p in onnx.load(str(tmp_path / "alexnet.onnx")).metadata_props}
    recorded = json.loads(props[METADATA_KEY])
    assert recorded["class_names"] == model.class_names
    assert (recorded["crop"], recorded["resize"]) == (67, 72)
    assert recorded == {
        "class_names": model.class_names,
        **model.preprocessing.as_dict(),
        "input": recorded["input"],
        "output": recorded["output"],
    }
    assert not list(tmp_path.glob("*.partial*"))


@pytest.mark.slow
def test_torch_export_program_gives_the_same_logits(trained_run, tmp_path, export):
    checkpoint = trained_run / "checkpoints" / "last.ckpt"
    export(checkpoint, "pt2", tmp_path / "alexnet.pt2")
    model = load_trained_model(checkpoint)
    extra = {METADATA_KEY: ""}
    program = torch.export.load(str(tmp_path / "alexnet.pt2"), extra_files=extra)
    batch = torch.randn(4, 3, model.preprocessing.crop, model.preprocessing.crop)
    with torch.no_grad():
        assert torch.allclose(program.module()(batch), model.network(batch), atol=1e-5)
    assert json.loads(extra[METADATA_KEY])["class_names"] == model.class_names
