"""ONNX and TorchScript exports of a trained checkpoint agree with PyTorch (onnxruntime runs the ONNX file)."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from gem_lightning import export
from gem_lightning.classifier import GemClassifier
from gem_lightning.errors import GemLightningError
from gem_lightning.export import check_images, onnx_probabilities, torchscript_probabilities


def test_exports_match_pytorch_on_real_images_at_any_batch_size(trained_demo_run, tmp_path, capsys):
    run = trained_demo_run
    photos = [path for path, _ in run.datamodule.datasets["test"].items]
    out = tmp_path / "export"
    assert export.main([f"ckpt={run.checkpoint}", f"output_dir={out}", f"input={photos[0].parent}"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("probabilities match PyTorch") == 2

    model = GemClassifier.from_checkpoint(run.checkpoint)
    images = check_images(model, photos, count=7)  # a batch size the export never saw
    with torch.inference_mode():
        expected = model.probabilities(images)
    for path, run_file in (
        (out / "model.onnx", onnx_probabilities),
        (out / "model.torchscript.pt", torchscript_probabilities),
    ):
        got = run_file(path, images)
        assert got.shape == (7, len(run.class_names))
        assert float((got - expected).abs().max()) < 1e-4

    proto = onnx.load(str(out / "model.onnx"))
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")  # symbolic: any batch size
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    info = json.loads({p.key: p.value for p in proto.metadata_props}["gem_lightning.json"])
    assert info["class_names"] == list(run.class_names)
    assert info["temperature"] == pytest.approx(float(model.temperature))
    extra = {"gem_lightning.json": ""}
    torch.jit.load(str(out / "model.torchscript.pt"), _extra_files=extra)
    assert json.loads(extra["gem_lightning.json"]) == info == json.loads((out / "model.json").read_text())


def test_an_unknown_format_is_refused(trained_demo_run, tmp_path):
    with pytest.raises(GemLightningError, match="choose from onnx, torchscript"):
        export.export_checkpoint(trained_demo_run.checkpoint, tmp_path, formats=("tflite",))
