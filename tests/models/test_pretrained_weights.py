"""Pretrained weights really load: EfficientNet-Lite0 from its package, ResNets from the torch hub cache."""

from __future__ import annotations

import csv
import hashlib
import io

import pytest
import torch
from torchvision import models
from torchvision.transforms import v2

from gem_lightning.data.image_dataset import evaluation_dataset
from gem_lightning.errors import GemLightningError
from gem_lightning.models import backbones
from gem_lightning.models.backbones import (
    BACKBONE_NAMES,
    create_backbone,
    imagenet_network,
    normalisation,
)
from tests.helpers.workplace import IMAGENET_SAMPLES_DIR, needs_shared


def _imagenet_samples() -> tuple[torch.Tensor, torch.Tensor]:
    with open(IMAGENET_SAMPLES_DIR / "labels.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    # The project's own evaluation path: stored square, then down to 224 px.
    dataset = evaluation_dataset([(IMAGENET_SAMPLES_DIR / r["file"], int(r["imagenet_index"])) for r in rows], 224)
    images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(images), torch.tensor(labels)


def _top_k_hits(network: torch.nn.Module, name: str, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    mean, std = normalisation(name)
    x = v2.functional.normalize(images.float() / 255, mean, std)
    with torch.no_grad():
        top5 = network.eval()(x).topk(5).indices
    return (top5[:, 0] == labels).float().mean().item(), (top5 == labels[:, None]).any(1).float().mean().item()


@needs_shared(IMAGENET_SAMPLES_DIR)
@pytest.mark.parametrize("name", sorted(n for n in BACKBONE_NAMES if n.startswith("efficientnet_lite")))
def test_efficientnet_lites_are_really_imagenet_pretrained(name):
    images, labels = _imagenet_samples()
    top1, top5 = _top_k_hits(imagenet_network(name, pretrained=True), name, images, labels)
    assert top5 >= 0.9 and top1 >= 0.7, (top1, top5)
    torch.manual_seed(0)
    _, random_top5 = _top_k_hits(imagenet_network(name, pretrained=False), name, images, labels)
    assert random_top5 <= 0.1


@pytest.mark.parametrize(("name", "features"), [("efficientnet_lite0", 1280), ("efficientnet_lite2", 1280)])
def test_lite_backbones_drop_the_imagenet_head(name, features):
    backbone = create_backbone(name, pretrained=True)
    assert backbone.num_features == features and backbone.mean == (0.5, 0.5, 0.5)
    assert backbone.network.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, features)


def test_every_registered_backbone_is_a_model_choice_and_a_config():
    """The registry is the one list: the config schema's choices and conf/model/ follow it."""
    from gem_lightning.config.project_folder import PROJECT_ROOT
    from gem_lightning.config.schema import BackboneName

    assert [b.value for b in BackboneName] == list(BACKBONE_NAMES)
    assert {p.stem for p in (PROJECT_ROOT / "conf" / "model").glob("*.yaml")} == set(BACKBONE_NAMES)


def _state_dict_bytes(network: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(network.state_dict(), buffer)
    return buffer.getvalue()


def test_missing_resnet_weights_name_the_file_the_folder_and_the_ways_out(offline_torch_home):
    with pytest.raises(GemLightningError) as caught:
        create_backbone("resnet18", pretrained=True, allow_download=False)
    message = str(caught.value)
    assert "resnet18-f37072fd.pth" in message
    assert str(offline_torch_home / "hub" / "checkpoints") in message
    assert "model.pretrained=false" in message and "model=efficientnet_lite0" in message
    assert not (offline_torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth").exists()


def test_a_cached_file_whose_sha256_does_not_match_its_name_is_refused(offline_torch_home):
    folder = offline_torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "resnet18-f37072fd.pth").write_bytes(_state_dict_bytes(models.resnet18()))
    with pytest.raises(GemLightningError, match=r"sha256 starts [0-9a-f]{8}, the name says f37072fd"):
        create_backbone("resnet18", pretrained=True, allow_download=False)


def test_a_cached_file_with_its_own_hash_in_its_name_loads(offline_torch_home, monkeypatch):
    torch.manual_seed(1)
    source = models.resnet18()
    data = _state_dict_bytes(source)
    prefix = hashlib.sha256(data).hexdigest()[:8]
    folder = offline_torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / f"resnet18-{prefix}.pth").write_bytes(data)
    monkeypatch.setitem(backbones.RESNET_WEIGHTS_URLS, "resnet18", f"https://example.invalid/resnet18-{prefix}.pth")
    backbone = create_backbone("resnet18", pretrained=True, allow_download=False)
    assert torch.equal(backbone.network.conv1.weight, source.conv1.weight)
    assert torch.equal(backbone.network.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)


def test_a_correctly_named_file_of_the_wrong_architecture_is_refused(offline_torch_home, monkeypatch):
    data = _state_dict_bytes(models.resnet34())
    prefix = hashlib.sha256(data).hexdigest()[:8]
    folder = offline_torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / f"resnet18-{prefix}.pth").write_bytes(data)
    monkeypatch.setitem(backbones.RESNET_WEIGHTS_URLS, "resnet18", f"https://example.invalid/resnet18-{prefix}.pth")
    with pytest.raises(GemLightningError, match="do not fit the network"):
        create_backbone("resnet18", pretrained=True, allow_download=False)


def test_a_registered_backbone_is_built_weighted_and_normalised_from_its_one_entry(tmp_path, monkeypatch):
    # A new backbone is one register_backbone call: the factory, the weights lookup and the preprocessing all
    # read that entry. A ResNet-18 under another name, with weights saved here, stands for one.
    weights = tmp_path / "tiny.pth"
    torch.save(models.resnet18(weights=None).state_dict(), weights)
    entry = backbones.BackboneEntry(
        "tiny_resnet",
        (0.1, 0.2, 0.3),
        (0.4, 0.5, 0.6),
        build=lambda: models.resnet18(weights=None),
        weights_file=lambda allow_download: weights,
        load_weights=lambda network, path: network.load_state_dict(torch.load(path, weights_only=True)),
    )
    monkeypatch.setitem(backbones.BACKBONES, "tiny_resnet", entry)
    built = backbones.create_backbone("tiny_resnet", pretrained=True)
    assert (built.mean, built.std, built.num_features) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6), 512)
    assert torch.equal(built.network.conv1.weight, torch.load(weights, weights_only=True)["conv1.weight"])
    assert backbones.pretrained_weights_file("tiny_resnet") == weights
    with pytest.raises(GemLightningError, match="model.backbone='nope' is unknown; choose one of resnet18, "):
        backbones.create_backbone("nope")
