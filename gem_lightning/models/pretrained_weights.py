"""Find pretrained weights in the torch hub cache (downloading them once), check them, and copy them into a
network whose key names differ."""

# torchvision's weights live in the torch hub cache (``$TORCH_HOME/hub/checkpoints``) under names like
# ``resnet18-f37072fd.pth``, where the hex part is the start of the file's sha256. torch only checks that
# hash while downloading, never when it reuses a cached file, so a truncated or swapped file would load
# silently (or fail deep inside ``load_state_dict``); we check it every time.

from __future__ import annotations

import logging
import re
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import torch

from gem_lightning.errors import GemLightningError
from gem_lightning.files.hashing import file_sha256
from gem_lightning.files.locks import exclusive_lock

log = logging.getLogger(__name__)

# Seconds a download may wait for the server, to connect and then for each piece of the file: a black-holed
# network or a silent proxy ends the run with the offline line instead of hanging it. A slow but live
# connection is not cut short (the wait is per piece, not for the whole file).
DOWNLOAD_TIMEOUT_S = 15.0

# torchvision and timm name hub files "<name>-<first hex digits of sha256>.<ext>".
HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,64})\.")


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def verify_hash_in_name(path: Path) -> None:
    """Refuse a file whose sha256 does not start with the hex digits in its name."""
    match = HASH_IN_NAME.search(path.name)
    if match is None:
        return
    expected = match.group(1)
    actual = file_sha256(path)
    if not actual.startswith(expected):
        raise GemLightningError(
            f"pretrained weights file {path} is damaged or not the file its name promises: its sha256 "
            f"starts {actual[: len(expected)]}, the name says {expected}. Delete it and copy or download it "
            "again, or set model.pretrained=false."
        )


def cached_hub_weights(
    url: str, architecture: str, allow_download: bool, timeout_s: float = DOWNLOAD_TIMEOUT_S
) -> Path:
    """The verified file for ``url`` in the torch hub cache, downloaded into it first when missing and allowed.

    One process a machine downloads; others that want the same file meanwhile wait on its lock and then read
    the finished file. Any failure (no route, DNS, proxy, HTTP error, timeout, hash mismatch) is one
    GemLightningError naming the URL, the file, its folder and the ways out; nothing is left under the name.
    """
    filename = Path(urlparse(url).path).name
    folder = hub_checkpoint_dir()
    path = folder / filename
    if not path.is_file():
        ways_out = (
            f"copy {filename} from {url} into {folder} (the torch hub cache; TORCH_HOME moves it), or train "
            "without them (model.pretrained=false), or use model=efficientnet_lite0, whose ImageNet weights ship "
            "in a pip package"
        )
        if not allow_download:
            raise GemLightningError(
                f"pretrained weights for {architecture} not found and downloads are off "
                f"(model.allow_download=false): {ways_out}"
            )
        try:
            _download_once(url, path, timeout_s)
        except (OSError, RuntimeError) as error:  # URLError and timeouts are OSErrors; a hash mismatch a RuntimeError
            reason = " ".join(str(error).split())
            raise GemLightningError(
                f"pretrained weights for {architecture} could not be downloaded ({reason}): {ways_out}"
            ) from None
    verify_hash_in_name(path)
    return path


def _download_once(url: str, path: Path, timeout_s: float) -> None:
    """torch's own hub download of ``url`` to ``path`` (a temp file beside it, the sha256 prefix in the name
    checked, then renamed), unless another process finished it while this one waited for the lock."""
    # The lock file is hidden beside the weights: the hub folder is shared by every run on the machine.
    with exclusive_lock(path.parent / f".{path.name}.lock"):
        if path.is_file():
            return
        match = HASH_IN_NAME.search(path.name)
        log.info("downloading %s to %s", url, path)
        with _socket_timeout(timeout_s):
            # tqdm's bar only where someone watches; under nohup or SLURM it would fill the log with lines.
            torch.hub.download_url_to_file(
                url, str(path), hash_prefix=match.group(1) if match else None, progress=sys.stderr.isatty()
            )


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Sockets opened inside get ``seconds`` as their timeout: torch's download opens its URL without one."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a file that is not a checkpoint
        raise GemLightningError(f"cannot read pretrained weights {path}: {error}") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise GemLightningError(f"{path} does not hold a state dict of tensors")
    return state


def load_weights_strictly(network: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise GemLightningError(f"pretrained weights {source} do not fit the network: {error}") from error


def map_keys_in_order(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], source_name: str
) -> dict[str, torch.Tensor]:
    """Rename ``source``'s tensors to ``target``'s keys, pairing them in order; every shape must agree.

    Two ports of one architecture register the same layers in the same order under other names; pairing
    by position is then exact, and checking every shape catches the case where the orders differ.
    """
    if len(source) != len(target):
        raise GemLightningError(
            f"{source_name} holds {len(source)} tensors but the network has {len(target)}: not the same architecture"
        )
    mapped = {}
    for (source_key, tensor), (target_key, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise GemLightningError(
                f"{source_name}: {source_key} has shape {tuple(tensor.shape)} but {target_key} needs "
                f"{tuple(expected.shape)}; the key orders do not line up"
            )
        mapped[target_key] = tensor
    return mapped
