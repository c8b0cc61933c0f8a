"""Settings that take one of a few values: the one check (a user line naming the setting and every choice),
and config enums as their plain values."""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from typing import Any

from gem_lightning.errors import GemLightningError


def plain_value(value: Any) -> Any:
    """A config enum's plain value (``BackboneName.resnet18`` -> ``"resnet18"``); anything else as it is."""
    return value.value if isinstance(value, Enum) else value


def checked_choice(value: Any, choices: Iterable[Any] | type[Enum], setting: str, hint: str = "") -> Any:
    """``value`` (an enum as its plain value) if it is one of ``choices``, else one GemLightningError:
    ``setting='value': use one of a, b, c`` and ``hint``."""
    names = [plain_value(choice) for choice in choices]
    value = plain_value(value)
    if value not in names:
        raise GemLightningError(f"{setting}={value!r}: use one of {', '.join(map(str, names))}{hint}")
    return value
