"""The student report's plain PyTorch pipeline, timed: ``ImageFolder`` on the raw photos, the classic
transforms, a torchvision ResNet-18 in float32 under Adam at 3e-4. Each function runs in a fresh process."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from gem_lightning.bench.timing import Clock, Setup, cycle, memory, time_loader
from gem_lightning.models.backbones import IMAGENET_MEAN, IMAGENET_STD

REPORT_LR = 3e-4


def _plain_loader(setup: Setup, augment: bool, shuffle: bool = True) -> DataLoader:
    from torchvision import datasets
    from torchvision import transforms as T

    size = setup.image_size
    if augment:  # the report's policy: rotate, random crop, flip
        steps = [T.RandomRotation(30), T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(size), T.CenterCrop(size)]
    transform = T.Compose([*steps, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return DataLoader(
        datasets.ImageFolder(setup.photos, transform),
        batch_size=setup.batch_size,
        shuffle=shuffle,
        num_workers=setup.num_workers,
        pin_memory=setup.device.startswith("cuda"),
        drop_last=True,
    )


def plain_loader(settings: dict, augment: bool) -> dict:
    setup = Setup(**settings)
    return time_loader(_plain_loader(setup, augment), setup)


def _plain_network(setup: Setup, classes: int) -> torch.nn.Module:
    from torchvision import models

    # ImageNet weights or not, a step costs the same; offline runs cannot fetch them anyway.
    return models.resnet18(num_classes=classes).to(setup.device)


def plain_training(settings: dict) -> dict:
    setup = Setup(**settings)
    loader = _plain_loader(setup, augment=True)
    network = _plain_network(setup, len(loader.dataset.classes)).train()
    optimizer = torch.optim.Adam(network.parameters(), lr=REPORT_LR)
    clock = Clock(setup.warmup_batches, setup.device)
    for index, (images, targets) in enumerate(cycle(loader, setup.warmup_batches + setup.timed_batches)):
        images, targets = images.to(setup.device), targets.to(setup.device)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(network(images), targets)
        loss.backward()
        optimizer.step()
        clock.batch_done(index, len(images))
    return {"images_per_second": clock.rate, **memory(setup.device)}


def plain_evaluation(settings: dict) -> dict:
    setup = Setup(**settings)
    loader = _plain_loader(setup, augment=False, shuffle=False)
    network = _plain_network(setup, len(loader.dataset.classes)).eval()
    clock = Clock(setup.warmup_batches, setup.device)
    with torch.no_grad():
        for index, (images, _) in enumerate(cycle(loader, setup.warmup_batches + setup.timed_batches)):
            network(images.to(setup.device))
            clock.batch_done(index, len(images))
    return {"images_per_second": clock.rate, **memory(setup.device)}
