"""Cut the gem out of its photo and put it on black: rembg (a U²-Net family model) or OpenCV GrabCut."""

# Backends are small picklable settings objects (Hydra instantiates them from ``conf/background/``); the
# heavy part (an onnxruntime session, OpenCV) is only built by ``load()`` inside the process that uses it.
# Every backend returns an 8-bit mask; ``cut_out`` checks that mask and applies the configured fallback
# when the gem was not found (an empty mask, or one that keeps almost the whole frame).
#
# rembg models are never downloaded here: ``check()`` looks where rembg itself looks (``U2NET_HOME``, else
# ``~/.u2net``, and rembg's newer ``<home>/models/<name>/``) and stops with one message naming the file.

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from gem_lightning.data.background.framing import framed_on_stone, stone_pixels
from gem_lightning.errors import GemLightningError

FALLBACKS = ("original", "grabcut", "drop")
# Local single-file rembg models. rembg's others need several files, a custom path, or send the image to
# a web service, none of which a reproducible offline preparation step should do.
REMBG_MODELS = (
    "u2net",
    "u2netp",
    "u2net_human_seg",
    "silueta",
    "isnet-general-use",
    "isnet-anime",
    "bria-rmbg",
    "birefnet-general",
    "birefnet-general-lite",
    "birefnet-portrait",
    "birefnet-dis",
    "birefnet-hrsod",
    "birefnet-cod",
    "birefnet-massive",
)


class RembgBackend:
    """rembg with an explicit model (rembg 2.0.86's own default is bria-rmbg at 1024 px; we never rely on it)."""

    name = "rembg"

    def __init__(
        self,
        model: str = "u2net",
        setting: str = "background.backend.model",
        alternative: str | None = "use background=grabcut, which needs no model",
    ):
        # ``setting``: the config key that chose the model, which the errors name (background_swap and the
        # shifted photos have their own). ``alternative``: what else a missing model file leaves the user;
        # None: another model by that key.
        if model not in REMBG_MODELS:
            raise GemLightningError(
                f"{setting}={model!r} is not a local rembg model; use one of {', '.join(REMBG_MODELS)}"
            )
        self.model = model
        self.setting = setting
        self.alternative = alternative or f"choose another model with {setting}="
        self._session = None

    def settings(self) -> dict:
        return {"backend": self.name, "model": self.model}

    def describe(self) -> str:
        return f"rembg {self.model}"

    def _session_class(self):
        from rembg.sessions import sessions_class

        return next(cls for cls in sessions_class if cls.name() == self.model)

    def model_file(self) -> Path | None:
        found = self._session_class().resolve_existing(f"{self.model}.onnx")
        return Path(found) if found else None

    def check(self) -> None:
        if self.model_file() is None:
            session_class = self._session_class()
            home = Path(session_class.legacy_home())
            nested = Path(session_class.model_dir())
            raise GemLightningError(
                f"rembg model file {self.model}.onnx not found: looked for {home / (self.model + '.onnx')} and "
                f"{nested / (self.model + '.onnx')}. Nothing is downloaded at run time: put the file there, or set "
                f"U2NET_HOME to the folder that holds it (this repo's CI: U2NET_HOME=../shared/models/u2net with "
                f"{self.setting}=u2netp), or {self.alternative}."
            )

    def load(self, threads: int) -> None:
        self.check()
        import onnxruntime
        from rembg import new_session

        options = onnxruntime.SessionOptions()
        # One process per core is faster than one session spread over cores (pre/post-processing is
        # single-threaded Python), so each session gets only its share of the machine.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = new_session(self.model, sess_opts=options)

    def mask(self, image: Image.Image) -> np.ndarray:
        from rembg import remove

        if self._session is None:
            self.load(threads=1)
        mask = np.asarray(remove(image, session=self._session, only_mask=True), dtype=np.uint8)
        if mask.shape != (image.height, image.width):
            raise ValueError(f"rembg returned a {mask.shape} mask for a {image.width}x{image.height} image")
        return mask

    def __getstate__(self) -> dict:
        # Sent to worker processes as settings; each worker builds its own session.
        return {"model": self.model, "setting": self.setting, "_session": None}


class GrabCutBackend:
    """OpenCV GrabCut seeded from the image border: a frame of ``border`` (share of the shorter side) is
    taken as background, the rest as probable foreground. Needs no model file; works on a copy reduced to
    ``work_side`` px for speed, and scales the mask back up."""

    name = "grabcut"

    def __init__(self, border: float = 0.04, iterations: int = 5, work_side: int = 256):
        if not 0 < border < 0.5:
            raise GemLightningError(f"background.backend.border={border}: use a share of the side in (0, 0.5)")
        if iterations < 1 or work_side < 32:
            raise GemLightningError("background.backend.iterations must be >= 1 and work_side >= 32")
        self.border, self.iterations, self.work_side = border, iterations, work_side

    def settings(self) -> dict:
        return {"backend": self.name, "border": self.border, "iterations": self.iterations, "work_side": self.work_side}

    def describe(self) -> str:
        return "OpenCV GrabCut"

    def model_file(self) -> None:
        return None  # GrabCut learns its colour models from each image itself

    def check(self) -> None:
        try:
            import cv2  # noqa: F401
        except ImportError as error:
            raise GemLightningError(
                f"background=grabcut needs OpenCV ({error}); install opencv-python-headless"
            ) from error

    def load(self, threads: int) -> None:
        self.check()
        import cv2

        cv2.setNumThreads(threads)

    def mask(self, image: Image.Image) -> np.ndarray:
        import cv2

        work = image.copy()
        work.thumbnail((self.work_side, self.work_side), Image.Resampling.BILINEAR)
        pixels = np.ascontiguousarray(np.asarray(work)[:, :, ::-1])  # OpenCV wants BGR
        height, width = pixels.shape[:2]
        margin = max(1, round(self.border * min(width, height)))
        if width <= 2 * margin + 1 or height <= 2 * margin + 1:
            return np.full((image.height, image.width), 255, dtype=np.uint8)
        labels = np.zeros((height, width), dtype=np.uint8)
        background_model = np.zeros((1, 65), dtype=np.float64)
        foreground_model = np.zeros((1, 65), dtype=np.float64)
        rectangle = (margin, margin, width - 2 * margin, height - 2 * margin)
        # A fixed RNG seed: GrabCut's k-means start is random, and a cache must not depend on luck.
        cv2.setRNGSeed(0)
        cv2.grabCut(
            pixels, labels, rectangle, background_model, foreground_model, self.iterations, cv2.GC_INIT_WITH_RECT
        )
        keep = np.where((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD), 255, 0).astype(np.uint8)
        return np.asarray(Image.fromarray(keep, mode="L").resize(image.size, Image.Resampling.BILINEAR))


@dataclass(frozen=True)
class CutOut:
    """The prepared image (None when dropped) and what happened on the way."""

    image: Image.Image | None
    method: str  # what produced the image: "rembg u2netp", "OpenCV GrabCut", "original" or "dropped"
    foreground: float  # share of the frame the first mask kept (0-1)
    flag: str = ""  # why the first mask was rejected, empty when it was fine


def composite_on(image: Image.Image, mask: np.ndarray, background: tuple[int, int, int]) -> Image.Image:
    """RGB with the background one plain colour; a soft mask keeps the stone's anti-aliased edge."""
    pixels = np.asarray(image, dtype=np.float32)
    alpha = mask.astype(np.float32)[:, :, None] / 255.0
    plain = np.asarray(background, dtype=np.float32)[None, None, :]
    return Image.fromarray(np.clip(pixels * alpha + plain * (1 - alpha) + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def composite_on_black(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """RGB with the background black: what training on cut-outs sees."""
    return composite_on(image, mask, (0, 0, 0))


def mask_problem(mask: np.ndarray, min_foreground: float, max_foreground: float) -> tuple[float, str]:
    """(share of the frame kept, why the mask is unusable or "")."""
    kept = float(stone_pixels(mask).mean()) if mask.size else 0.0
    if kept < min_foreground:
        return kept, f"empty mask: keeps {kept:.1%} of the frame (< {min_foreground:.0%})"
    if kept > max_foreground:
        return kept, f"gem not separated: mask keeps {kept:.1%} of the frame (> {max_foreground:.0%})"
    return kept, ""


def cut_out(
    image: Image.Image,
    backend: RembgBackend | GrabCutBackend,
    fallback: str,
    min_foreground: float,
    max_foreground: float,
    fallback_backend: GrabCutBackend | None = None,
    max_side: int | None = None,
    frame: str = "whole",
    margin: float = 0.15,
) -> CutOut:
    """Cut ``image`` out with ``backend``; if the mask is implausible, apply ``fallback``.

    Masks are found on a copy at most ``max_side`` (None: as given); the result is at most ``max_side``.
    ``frame="stone"`` crops a good cut-out to the square around its mask (``framing.framed_on_stone``),
    from ``image`` at the size given, so a larger ``image`` gives a sharper small stone.
    """
    small = image.copy() if max_side is not None and max(image.size) > max_side else image
    if small is not image:
        small.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)

    def finished(mask: np.ndarray) -> Image.Image:
        if small is not image:
            mask = np.asarray(Image.fromarray(mask, mode="L").resize(image.size, Image.Resampling.BILINEAR))
        result = composite_on_black(image, mask)
        if frame == "stone":
            result = framed_on_stone(result, mask, margin, (0, 0, 0))
        if max_side is not None:
            result.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        return result

    mask = backend.mask(small)
    kept, problem = mask_problem(mask, min_foreground, max_foreground)
    if not problem:
        return CutOut(finished(mask), backend.describe(), kept)
    if fallback == "grabcut" and fallback_backend is not None and backend.name != "grabcut":
        second = fallback_backend.mask(small)
        _, second_problem = mask_problem(second, min_foreground, max_foreground)
        if not second_problem:
            return CutOut(finished(second), fallback_backend.describe(), kept, problem)
        problem = f"{problem}; GrabCut too: {second_problem}"
    if fallback == "drop":
        return CutOut(None, "dropped", kept, problem)
    return CutOut(small, "original", kept, problem)
