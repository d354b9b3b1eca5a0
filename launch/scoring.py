"""What ``launch.evaluate`` conditions and scores a run's samples with.

* a digits model: class labels cycling ``0..9`` (when class-conditional); FD-digits and
  class accuracy (``diffusion/metrics/fd_digits.py``);
* a digit-scenes text model: the captions of a held-out split as prompts (``heldout``:
  unseen glyphs, the training caption distribution; ``novel``: caption combinations
  never trained on), decoded through the run's VAE; caption accuracy and the scenes FD
  (``diffusion/metrics/caption_accuracy.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

CAPTION_SPLITS = ("heldout", "novel")
# (FD field, accuracy field) of a record, by what scored it
METRICS = {"digits": ("fd_digits", "class_accuracy"), "scenes": ("scenes_fd", "caption_accuracy")}


@dataclasses.dataclass(frozen=True)
class Scoring:
    """``num`` samples' conditions and their scorer.

    Attributes:
      kind: ``digits`` or ``scenes`` (the keys of :data:`METRICS`).
      labels: ``[num]`` class labels, or None.
      conds: other condition arrays ``[num, ...]`` (a text model's ``context`` and
        ``null_context``).
      decode: latents -> images for a latent model, else None.
      score: images ``[num, H, W, C]`` -> ``{fd field, accuracy field, ...}``.
      tag: what a record's id gets beyond the cell's (``/novel``), ``""`` by default.
      fields: what every record of these samples states (``{"captions": "novel"}``).
    """

    kind: str
    labels: np.ndarray | None
    conds: dict
    decode: Callable[[np.ndarray], np.ndarray] | None
    score: Callable[[np.ndarray], dict]
    tag: str = ""
    fields: dict = dataclasses.field(default_factory=dict)


def split_captions(config, split: str, num: int) -> list[str]:
    """``num`` captions of the scenes split ``split``, cycling through it (example ``i``'s
    caption for sample ``i``)."""
    from launch.builders import build_source

    source, _ = build_source(config, split)
    n = min(num, len(source))
    captions = [str(source[i]["caption"]) for i in range(n)]
    return [captions[i % n] for i in range(num)]


def scoring_for(run, num: int, captions: str = "heldout") -> Scoring:
    """The scoring of ``num`` samples of the loaded run ``run``; ``captions`` picks a text
    model's prompt split.

    Raises:
      ValueError: a model with no metric here (names what is supported), or a bad split.
    """
    from launch.generate import class_labels

    data = run.config.data.name
    if captions not in CAPTION_SPLITS:
        raise ValueError(f"--captions must be one of {', '.join(CAPTION_SPLITS)}, got {captions!r}")
    if data == "digits" and not run.caps.text:
        if captions != "heldout":
            raise ValueError("--captions applies to text-to-image scenes models only; this is a digits model")
        from diffusion.metrics.fd_digits import fd_digits

        labels = class_labels(num, run.num_classes)
        return Scoring("digits", labels, {}, None, lambda images: fd_digits(images, labels))
    if data == "scenes" and run.caps.text:
        from diffusion.metrics.caption_accuracy import score_scenes
        from launch.conditioning import text_conds

        prompts = split_captions(run.config, captions, num)
        conds = text_conds(run.prompt_encoder(), prompts)
        return Scoring("scenes", None, conds, run.decoder(), lambda images: score_scenes(images, prompts),
                       tag="" if captions == "heldout" else f"/{captions}", fields={"captions": captions})
    raise ValueError(f"launch.evaluate scores digits models (FD-digits) and text-to-image digit-scenes models (caption "
                     f"accuracy, scenes FD); {run.workdir} is a {'text ' if run.caps.text else ''}model of "
                     f"{data!r}: sample it with launch.sample")
