"""The page that identifies a gem photo in the browser (command: ``gem-web``)."""

# Upload (or paste) a photo; the page shows the stone as the model sees it, cut out as in training, and the
# top-5 classes with calibrated confidence bars.
#
# Why Gradio: its ``Label`` component is exactly a top-k list with confidence bars and its ``Image`` input
# handles upload, drag-and-drop and paste, so the page is a dozen lines with no front-end code to keep;
# ML students know it (Hugging Face Spaces run it), so they can extend the page themselves. It runs fully
# offline here: analytics are off and nothing is shared unless ``share=true`` is asked for.

from __future__ import annotations

import os
from pathlib import Path

from gem_lightning.errors import GemLightningError
from gem_lightning.inference.predictor import Predictor
from gem_lightning.trust.answers import Answering

TOP_K = 5


def _import_gradio():
    # Gradio would otherwise report usage to its servers on start-up; this page must work offline.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError as error:
        raise GemLightningError("the web page needs Gradio: pip install -e '.[web]'") from error
    return gradio


def build_page(predictor: Predictor, answering: Answering):
    """The Gradio Blocks app for ``predictor``; ``answering`` words the answer (set, family) above the bars."""
    gr = _import_gradio()

    def identify(photo: dict | str | None):
        # The upload as sent (preprocess=False below): Gradio's own decoding would turn a non-image, an empty
        # file or a decompression bomb into its generic "the upstream app raised an exception"; the
        # predictor's check says which of them it is.
        path = photo.get("path") if isinstance(photo, dict) else photo
        if not path:
            return None, None, ""
        predictions, skipped = predictor.predict_files([Path(path)])
        if skipped:
            raise gr.Error(f"cannot use this file: {skipped[0].reason}")
        (prediction,) = predictions
        (answer,) = answering.answers(prediction.probabilities[None], TOP_K, prediction.features[None])
        return predictor.model_view(prediction.model_input), dict(answer.top), f"**{answer.sentence()}**"

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
        # "Ruby or Spinel, 90 % sure": the prediction set, and the family when the class is unsure; "not one
        # of the 87 classes I know" for a photo far from all of them.
        answer = gr.Markdown(elem_id="answer")
        ranking = gr.Label(num_top_classes=TOP_K, label=f"top {TOP_K} (calibrated confidence)", elem_id="top-classes")
        photo.change(identify, inputs=photo, outputs=[cut_out, ranking, answer], preprocess=False)
    return page
