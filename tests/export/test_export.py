"""ONNX and TorchScript exports of a trained checkpoint agree with PyTorch (onnxruntime runs the ONNX file)."""

from __future__ import annotations

import json

import onnx
import pytest
import torch

from gem_lightning.cli import export as export_command
from gem_lightning.errors import GemLightningError
from gem_lightning.export.formats import check_images, export_checkpoint, onnx_probabilities, torchscript_probabilities
from gem_lightning.inference.predictor import Predictor
from gem_lightning.trust.prediction_sets import PredictionSets


def test_exports_match_pytorch_on_real_images_at_any_batch_size(trained_demo_run, tmp_path, capsys):
    run = trained_demo_run
    photos = [path for path, _ in run.datamodule.datasets["test"].items]
    out = tmp_path / "export"
    assert export_command.main([f"ckpt={run.checkpoint}", f"output_dir={out}", f"input={photos[0].parent}"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("probabilities match PyTorch") == 2

    predictor = Predictor(run.checkpoint, progress=False)
    model = predictor.model
    images = check_images(predictor, photos, count=7)  # a batch size the export never saw
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
    # The prediction sets' threshold at the default coverage, which the probabilities output is compared with.
    fitted = PredictionSets(**model.prediction_sets)
    assert info["prediction_sets"]["coverage"] == 0.9 and info["prediction_sets"]["score"] == "lac"
    assert info["prediction_sets"]["threshold"] == fitted.threshold(0.9)
    # The rule as model.json states it: lac's score within the threshold, and the most probable class.
    stated = (1 - expected.double()) <= info["prediction_sets"]["threshold"]
    stated[torch.arange(len(expected)), expected.argmax(dim=1)] = True
    assert fitted.sets(expected, 0.9).equal(stated)
    extra = {"gem_lightning.json": ""}
    torch.jit.load(str(out / "model.torchscript.pt"), _extra_files=extra)
    assert json.loads(extra["gem_lightning.json"]) == info == json.loads((out / "model.json").read_text())


def test_an_unknown_format_is_refused(trained_demo_run, tmp_path):
    with pytest.raises(GemLightningError, match="choose from onnx, torchscript"):
        export_checkpoint(trained_demo_run.checkpoint, tmp_path, formats=("tflite",), set_coverage=0.9)


def _other_member(checkpoint, path, **hyper_parameters):
    """A copy of ``checkpoint`` with a nudged head (another ensemble member) and, optionally, other settings."""
    state = torch.load(checkpoint, weights_only=True)
    generator = torch.Generator().manual_seed(1)
    weight = state["state_dict"]["head.1.weight"]
    state["state_dict"]["head.1.weight"] = weight + 0.5 * torch.randn(weight.shape, generator=generator)
    state["hyper_parameters"].update(hyper_parameters)
    state["gem_lightning"].update(hyper_parameters)
    torch.save(state, path)
    return path


def test_an_ensemble_with_test_time_views_exports_as_the_predictor_predicts(trained_demo_run, tmp_path, capsys):
    run = trained_demo_run
    # The other member white-balances its photos (inside its network, as it would have trained).
    other = _other_member(run.checkpoint, tmp_path / "other.ckpt", white_balance="border")
    members = [str(run.checkpoint), str(other)]
    assert export_command.main([f"ckpt=[{','.join(members)}]", "tta=dihedral", "formats=[onnx]"]) == 0
    assert "probabilities match PyTorch" in capsys.readouterr().out
    (out,) = run.run_dir.glob("export-ensemble2-*-tta-dihedral")  # beside the single model's export/, not over it

    images = _batch(run, 5)
    expected = Predictor(members, progress=False, tta="dihedral").predict_tensor(images)
    got = onnx_probabilities(out / "model.onnx", images)
    assert float((got - expected).abs().max()) < 1e-4
    single = Predictor(members[0], progress=False).predict_tensor(images)
    assert float((got - single).abs().max()) > 1e-3  # the members and views do count
    info = json.loads((out / "model.json").read_text())
    assert info["tta"] == "dihedral" and [m["checkpoint"] for m in info["members"]] == ["best.ckpt", "other.ckpt"]
    assert [m["white_balance"] for m in info["members"]] == ["none", "border"]
    assert info["temperature"] == 1.0
    assert info["prediction_sets"] is None  # fitted per checkpoint, not on an average


def test_members_of_two_image_sizes_are_one_error(trained_demo_run, tmp_path):
    other = _other_member(trained_demo_run.checkpoint, tmp_path / "larger.ckpt", image_size=48)
    with pytest.raises(GemLightningError, match="the members take 32 and 48 px images; one exported file takes one"):
        export_checkpoint([trained_demo_run.checkpoint, other], tmp_path / "out", set_coverage=0.9)


def _batch(run, count: int) -> torch.Tensor:
    dataset = run.datamodule.datasets["test"]
    return torch.stack([dataset[i][0] for i in range(count)])
