"""TorchCodec and torchvision's codecs decode every kind of file to the same pixels and fail on
the same files with the same messages; without either, PIL decodes; a run whose torchvision has
no codecs any more trains, evaluates and predicts."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.io
from PIL import Image

from alexnet_pl.data import decoding
from alexnet_pl.data.bad_images import DECODE_ERRORS
from tests.conftest import SMALL_RUN


@pytest.fixture(scope="module")
def kinds_of_file(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One file of each kind an ImageNet folder holds, all named .JPEG."""
    folder = tmp_path_factory.mktemp("kinds")
    pixels = np.random.default_rng(0).integers(0, 256, (97, 131, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    files = {name: folder / f"{name}.JPEG" for name in KINDS}
    image.save(files["rgb"], quality=90)
    image.save(files["progressive"], quality=80, progressive=True)
    image.convert("L").save(files["greyscale"])
    image.convert("CMYK").save(files["cmyk"])
    image.save(files["png_inside"], format="PNG")
    whole = files["rgb"].read_bytes()
    files["truncated"].write_bytes(whole[: len(whole) // 2])
    files["not_an_image"].write_bytes(b"\xff\xd8\xff" + b"x" * 100)
    return files


KINDS = ("rgb", "progressive", "greyscale", "cmyk", "png_inside", "truncated", "not_an_image")
BROKEN = ("truncated", "not_an_image")


def decode_each_way(path: Path, codecs: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    """decode_on_cpu's pixels, or its error as text, with each codec chosen in turn."""
    results = {}
    for name, codec in codecs.items():
        monkeypatch.setattr(decoding, "JPEG_CODEC", codec)
        try:
            results[name] = decoding.decode_on_cpu(str(path))
        except DECODE_ERRORS as error:
            results[name] = f"{type(error).__name__}: {error}"
    return results


@pytest.mark.parametrize("kind", KINDS)
def test_torchcodec_torchvision_and_pil_give_the_same_pixels_and_errors(
    kinds_of_file, kind, monkeypatch
):
    codecs = {"pil": None}
    for name, load in decoding.JPEG_CODECS.items():
        try:
            codecs[name] = load()
        except ImportError:
            pass  # both are in the tested set (constraints.txt): compared there
    assert len(codecs) > 1, "neither torchcodec nor torchvision's codecs import"
    results = decode_each_way(kinds_of_file[kind], codecs, monkeypatch)
    if kind in BROKEN:
        # Every codec hands the file to PIL, whose message names what is wrong.
        assert len(set(results.values())) == 1 and isinstance(results["pil"], str)
        return
    exact = [pixels for name, pixels in results.items() if name != "pil"]
    assert all(torch.equal(pixels, exact[0]) for pixels in exact)
    # PIL is libjpeg-turbo too: at most rounding in the chroma upsampling.
    difference = (results["pil"].float() - exact[0].float()).abs()
    assert results["pil"].shape == exact[0].shape == (3, 97, 131)
    assert difference.mean() < 1.0


def test_torchcodec_is_chosen_when_it_loads_and_the_run_says_which_decoder():
    pytest.importorskip("torchcodec")
    assert decoding.jpeg_codec_name().startswith("torchcodec ")


def test_a_codec_that_does_not_load_is_passed_over_saying_why(monkeypatch):
    def broken() -> decoding.JpegCodec:
        raise OSError("libnvrtc.so.13: cannot open shared object file")

    monkeypatch.setitem(decoding.JPEG_CODECS, "torchcodec", broken)
    codec, passed_over = decoding.find_jpeg_codec()
    assert codec.name.startswith("torchvision ")
    assert passed_over == {"torchcodec": "OSError: libnvrtc.so.13: cannot open shared object file"}


@pytest.mark.slow
def test_a_run_without_torchvisions_codecs_trains_evaluates_and_predicts(
    image_root, tmp_path, run_in_process, monkeypatch
):
    """As when torchvision drops its codecs: `from torchvision.io import decode_jpeg` fails. The
    decoder is chosen again as a fresh interpreter would (TorchCodec if it loads, else PIL)."""
    for name in ("decode_jpeg", "decode_image", "read_file", "encode_jpeg"):
        monkeypatch.delattr(torchvision.io, name)
    with pytest.raises(ImportError):
        decoding.torchvision_jpeg()
    codec, passed_over = decoding.find_jpeg_codec()
    monkeypatch.setattr(decoding, "JPEG_CODEC", codec)
    monkeypatch.setattr(decoding, "JPEG_CODECS_PASSED_OVER", passed_over)

    run_dir = tmp_path / "run"
    trained = run_in_process(
        *SMALL_RUN,
        f"data.root={image_root}",
        "trainer.max_epochs=1",
        "seed=0",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr[-4000:]
    decoder = "torchcodec" if codec is not None else "PIL"
    assert f"data.decode=cpu: JPEGs decoded by {decoder}" in (run_dir / "train.log").read_text()
    last = run_dir / "checkpoints" / "last.ckpt"
    evaluated = run_in_process(
        f"ckpt_path={last}",
        "trainer.accelerator=cpu",
        "data.num_workers=0",
        f"hydra.run.dir={tmp_path / 'evaluate'}",
        cwd=tmp_path,
        module="alexnet_pl.evaluate",
    )
    assert evaluated.returncode == 0, evaluated.stderr[-4000:]
    assert (tmp_path / "evaluate" / "metrics.json").is_file()
    image = next((image_root / "val").rglob("*.JPEG"))
    predicted = run_in_process(str(last), str(image), cwd=tmp_path, module="alexnet_pl.predict")
    assert predicted.returncode == 0, predicted.stderr[-4000:]
    assert str(image) in predicted.stdout
