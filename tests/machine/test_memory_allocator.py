"""The entry points' allocator setting: freed large blocks are reused instead of being faulted in afresh."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

# One forward pass of ResNet-18 at half the report's batch (24 x 224 px: its largest activations, 77 MB, are
# beyond glibc's largest dynamic mmap threshold of 32 MB, as the report's are) to warm up, then count the minor
# page faults (fresh pages the kernel had to hand out and zero) of a second one. In a fresh interpreter, so the
# allocator starts untouched.
PROBE = """
import resource, sys
import torch, torchvision
from gem_lightning.machine.memory_allocator import keep_freed_memory
changed = keep_freed_memory() if sys.argv[1] == "keep" else False
torch.set_num_threads(2)
network, images = torchvision.models.resnet18().eval(), torch.rand(24, 3, 224, 224)
with torch.inference_mode():
    network(images)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    network(images)
print(changed, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only"
)


def _faults(mode: str, **environment: str) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | environment
    output = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env
    ).stdout.split()
    return output[0], int(output[1])


def test_freed_memory_is_reused_instead_of_faulted_in_again():
    changed, kept = _faults("keep")
    _, default = _faults("default")
    assert changed == "True"
    # With glibc's defaults every pass maps its large activations afresh: about 128,000 4 KiB pages (0.5 GB) here.
    assert default > 60_000, default
    assert kept < default / 5, (kept, default)  # measured here: about 9,500 against 128,000


def test_a_user_allocator_setting_is_left_alone():
    changed, faults = _faults("keep", MALLOC_ARENA_MAX_="2")
    assert changed == "False" and faults > 60_000
    changed, _ = _faults("keep", GEM_LIGHTNING_SYSTEM_MALLOC="1")
    assert changed == "False"
