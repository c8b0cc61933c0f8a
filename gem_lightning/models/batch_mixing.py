"""MixUp and CutMix of a training batch (``model.mixup_alpha``, ``model.cutmix_alpha``), by torchvision v2."""

from __future__ import annotations

from torchvision.transforms import v2

from gem_lightning.errors import GemLightningError


def batch_mixer(mixup_alpha: float, cutmix_alpha: float, num_classes: int) -> v2.Transform | None:
    """torchvision's MixUp and/or CutMix on (images, int labels) -> (mixed images, soft labels); None if both off.

    With both on, each batch gets one of them at random (timm's and torchvision's reference recipe).
    """
    for name, alpha in (("model.mixup_alpha", mixup_alpha), ("model.cutmix_alpha", cutmix_alpha)):
        if alpha < 0:
            raise GemLightningError(f"{name}={alpha} must be 0 (off) or positive (the Beta distribution's alpha)")
    mixers = [
        mixer(alpha=alpha, num_classes=num_classes)
        for mixer, alpha in ((v2.MixUp, mixup_alpha), (v2.CutMix, cutmix_alpha))
        if alpha > 0
    ]
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)
