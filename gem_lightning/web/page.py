"""The page that identifies a gem photo in the browser (command: ``gem-web``)."""

# Upload (or paste) a photo; the page shows the stone as the model sees it, cut out as in training, a heat map of
# where it found evidence for its top class, the answer in words, the top-5 classes with calibrated confidence
# bars, and the training photos it most resembles in each of its top classes; with ``save_to``, a class list and
# a button that keep the photo as a labelled photo of the user's source (for ``adapt``).
#
# Why Gradio: its ``Label`` component is exactly a top-k list with confidence bars and its ``Image`` input
# handles upload, drag-and-drop and paste, so the page is a dozen lines with no front-end code to keep;
# ML students know it (Hugging Face Spaces run it), so they can extend the page themselves. It runs fully
# offline here: analytics are off and nothing is shared unless ``share=true`` is asked for.

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from gem_lightning.data.image_files import load_rgb
from gem_lightning.errors import GemLightningError
from gem_lightning.inference.heat_maps import heat_maps, overlay
from gem_lightning.inference.predictor import Predictor
from gem_lightning.trust.answers import Answer, Answering
from gem_lightning.web.labelled_photos import save_labelled_photo

TOP_K = 5
THUMBNAIL = 160  # the longer side, in pixels, of a training photo shown as a look-alike


def _import_gradio():
    # Gradio would otherwise report usage to its servers on start-up; this page must work offline.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError as error:
        raise GemLightningError("the web page needs Gradio: pip install -e '.[web]'") from error
    return gradio


def look_alikes(answer: Answer, class_names: list[str]) -> list[tuple[Image.Image, str]]:
    """(thumbnail, "class (distance)") of the answer's nearest training photos that can still be read."""
    shown = []
    for near in answer.nearest or []:
        try:
            image = load_rgb(near.file, min_side=THUMBNAIL)
        except (OSError, UnidentifiedImageError):  # moved or deleted since training: one thumbnail fewer
            continue
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        shown.append((image, f"{class_names[near.class_index]} ({near.distance:.2f})"))
    return shown


def where_it_looked(predictor: Predictor, view: np.ndarray, class_index: int) -> np.ndarray:
    """``view`` (the model's input, (S, S, 3) uint8) under the Grad-CAM heat map of ``class_index`` (an
    ensemble's first member's)."""
    (heat,) = heat_maps(predictor.model, torch.from_numpy(view).permute(2, 0, 1)[None], [class_index])
    return overlay(view, heat.numpy())


def build_page(predictor: Predictor, answering: Answering, save_to: Path | None = None):
    """The Gradio Blocks app for ``predictor``; ``answering`` words the answer (set, family) above the bars.
    With ``save_to``, the user can keep the photo under the class they know it is (``labelled_photos``)."""
    gr = _import_gradio()

    def save(photo: dict | str | None, class_name: str | None):
        path = photo.get("path") if isinstance(photo, dict) else photo
        if not path or not class_name:
            raise gr.Error("upload a photo and choose its class first")
        try:
            saved, written = save_labelled_photo(Path(path), class_name, predictor.class_names, save_to)
        except GemLightningError as error:
            raise gr.Error(str(error)) from None
        return f"{'saved' if written else 'already saved'} as `{saved}`"

    def identify(photo: dict | str | None):
        # The upload as sent (preprocess=False below): Gradio's own decoding would turn a non-image, an empty
        # file or a decompression bomb into its generic "the upstream app raised an exception"; the
        # predictor's check says which of them it is.
        path = photo.get("path") if isinstance(photo, dict) else photo
        if not path:
            return None, None, None, "", []
        predictions, skipped = predictor.predict_files([Path(path)])
        if skipped:
            raise gr.Error(f"cannot use this file: {skipped[0].reason}")
        (prediction,) = predictions
        (answer,) = answering.answers(prediction.probabilities[None], TOP_K, prediction.features[None])
        shown = look_alikes(answer, predictor.class_names)
        view = predictor.model_view(prediction.model_input)
        heat = where_it_looked(predictor, view, int(prediction.probabilities.argmax()))
        return view, heat, dict(answer.top), f"**{answer.sentence()}**", shown

    classes = len(predictor.class_names)
    with gr.Blocks(title="gem-lightning: identify a gemstone") as page:
        gr.Markdown(
            f"## Identify a gemstone\n{classes} classes; background removal: {predictor.describe_background()}; "
            f"temperature {predictor.temperature:.2f}. Model: `{predictor.describe_model()}`"
        )
        with gr.Row():
            photo = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"], label="gem photo")
            # PNG, not Gradio's default WebP: the exact pixels the model took, black background included.
            steps = "cut out, centre crop" if predictor.background is not None else "centre crop"
            cut_out = gr.Image(
                label=f"what the model sees ({steps})", format="png", interactive=False, elem_id="cut-out"
            )
            heat = gr.Image(
                label="where it found evidence for its top class (Grad-CAM)",
                format="png",
                interactive=False,
                elem_id="heat-map",
            )
        # "Ruby or Spinel, 90 % sure": the prediction set, and the family when the class is unsure; "not one
        # of the 87 classes I know" for a photo far from all of them.
        answer = gr.Markdown(elem_id="answer")
        ranking = gr.Label(num_top_classes=TOP_K, label=f"top {TOP_K} (calibrated confidence)", elem_id="top-classes")
        # Real examples to compare with: the nearest training photos of each top class (cosine distance).
        nearest = gr.Gallery(
            label="nearest training photos of the top classes", elem_id="nearest", columns=6, height="auto"
        )
        outputs = [cut_out, heat, ranking, answer, nearest]
        photo.change(identify, inputs=photo, outputs=outputs, preprocess=False)
        if save_to is not None:
            # A wrong answer corrected, or a right one confirmed: a labelled photo of the user's source for adapt.
            with gr.Row():
                right_class = gr.Dropdown(
                    choices=predictor.class_names, label=f"its class, to keep it in {save_to}", elem_id="right-class"
                )
                keep = gr.Button("save as a labelled photo", elem_id="save")
            saved = gr.Markdown(elem_id="saved")
            keep.click(save, inputs=[photo, right_class], outputs=saved, preprocess=False)
    return page
