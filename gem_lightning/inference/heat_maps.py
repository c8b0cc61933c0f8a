"""Where the model looked: class-activation heat maps over the model's input, for the report and the web page.

Grad-CAM (Selvaraju et al., 2017) through captum's ``LayerGradCam``: the gradient of one class's score weighs
each channel of the backbone's last feature map (``models.backbones.last_feature_map``); their positive sum,
upsampled to the input, marks the regions whose evidence raised that class.
"""

# Why captum rather than grad-cam (pytorch-grad-cam): captum is the PyTorch team's attribution library, a pure
# wheel whose dependencies this project already has (matplotlib, numpy, tqdm); grad-cam would add ttach,
# scikit-learn and scipy for the same Grad-CAM. The overlay is a few lines of matplotlib colour mapping.

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradCam
from matplotlib import colormaps

from gem_lightning.models.backbones import last_feature_map
from gem_lightning.models.classifier import GemClassifier

HEAT_COLOURS = "jet"  # Grad-CAM's customary palette: blue cold, red hot
BATCH = 16  # images per backward pass: a gallery of 48 at 224 px stays within a laptop's memory


def heat_maps(model: GemClassifier, images: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """(N, S, S) float32 in [0, 1] for a (N, 3, S, S) uint8 batch: where the evidence for ``classes[i]`` lies in
    image i, scaled so that each map's hottest point is 1 (a map with no positive evidence is all 0)."""
    # The class's log-probability rather than its logit: evidence for it against the other classes. A logit can be
    # below zero everywhere for the class it wins, which would leave the map empty after Grad-CAM's ReLU.
    gradcam = LayerGradCam(lambda images: model(images).log_softmax(-1), last_feature_map(model.backbone))
    was_training = model.training
    model.eval()
    maps = []
    # Gradients are the method: callers inside torch.inference_mode() (the predictor's loop) get them too.
    with torch.inference_mode(False), torch.enable_grad():
        for start in range(0, len(images), BATCH):
            batch = images[start : start + BATCH].to(model.device).float().div(255)
            target = torch.as_tensor(list(classes[start : start + BATCH]), device=model.device)
            coarse = gradcam.attribute(batch, target=target, relu_attributions=True)
            fine = LayerAttribution.interpolate(coarse, tuple(batch.shape[-2:]), "bilinear")[:, 0].detach().float()
            peaks = fine.flatten(1).amax(1).clamp_min(torch.finfo(fine.dtype).tiny)
            maps.append((fine / peaks[:, None, None]).clamp(0, 1).cpu())
    model.train(was_training)
    return torch.cat(maps) if maps else torch.zeros(0, *images.shape[-2:])


def overlay(image: np.ndarray, heat: np.ndarray, strength: float = 0.6) -> np.ndarray:
    """(S, S, 3) uint8: ``image`` (uint8) with ``heat`` (S, S in [0, 1]) painted over it, in colour where it is
    hot and untouched where it is cold, so the stone stays visible under the map."""
    colours = colormaps[HEAT_COLOURS](heat)[..., :3]
    weight = strength * heat[..., None]
    mixed = (1 - weight) * (image.astype(np.float32) / 255) + weight * colours
    return np.clip(mixed * 255 + 0.5, 0, 255).astype(np.uint8)
