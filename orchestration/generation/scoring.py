"""What ``launch.evaluate`` conditions and scores a run's samples with.

* a digits model: class labels cycling ``0..9`` (when class-conditional); FD-digits and
  class accuracy (``diffusion/metrics/fd_digits.py``);
* a digit-scenes text model: the captions of a held-out split as prompts (``heldout``:
  unseen glyphs, the training caption distribution; ``novel``: caption combinations
  never trained on), decoded through the run's VAE; caption accuracy and the scenes FD
  (``diffusion/metrics/caption_accuracy.py``);
* a moving-digits video model: under each cell's plan (``sampling/transforms/plan.py``),
  given frames from the held-out videos; the FVD proxy of the first window and identity
  stability, per-frame FD, PSNR / SSIM of the generated frames against the ground truth
  when the plan gives frames, and per-window per-frame FD (drift) for long video
  (``diffusion/metrics/video_metrics.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

CAPTION_SPLITS = ("heldout", "novel")
# (FD field, accuracy field) of a record, by what scored it
METRICS = {"digits": ("fd_digits", "class_accuracy"), "scenes": ("scenes_fd", "caption_accuracy"),
           "video": ("fvd_proxy", "identity_stability")}
VIDEO_TRUTH_SPLIT = "heldout"  # given frames and ground-truth continuations
VIDEO_REFERENCE_SPLIT = "train"  # the real videos FDs compare against


@dataclasses.dataclass(frozen=True)
class Scoring:
    """``num`` samples' conditions and their scorer.

    Attributes:
      kind: ``digits`` or ``scenes`` (the keys of :data:`METRICS`).
      labels: ``[num]`` class labels, or None.
      conds: other condition arrays ``[num, ...]`` (a text model's ``context`` and
        ``null_context``).
      decode: latents -> images for a latent model, else None.
      score: ``(images [num, H, W, C], spec)`` -> ``{fd field, accuracy field, ...}`` (a
        video model's scores depend on the cell's plan).
      truth: ``spec -> [num, L, ...]`` ground-truth videos a video cell's plan gives
        frames from, or None.
      tag: what a record's id gets beyond the cell's (``/novel``), ``""`` by default.
      fields: what every record of these samples states (``{"captions": "novel"}``).
    """

    kind: str
    labels: np.ndarray | None
    conds: dict
    decode: Callable[[np.ndarray], np.ndarray] | None
    score: Callable[[np.ndarray, object], dict]
    tag: str = ""
    fields: dict = dataclasses.field(default_factory=dict)
    truth: Callable[[object], np.ndarray | None] = lambda spec: None


def caption_tag(captions: str) -> str:
    """What a text model's record ids get for a caption split (``/novel``; ``""`` for the default)."""
    return "" if captions == "heldout" else f"/{captions}"


def split_captions(config, split: str, num: int) -> list[str]:
    """``num`` captions of the scenes split ``split``, cycling through it (example ``i``'s
    caption for sample ``i``)."""
    from orchestration.build.builders import build_source

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
    from orchestration.generation.generate import class_labels

    data = run.config.data.name
    if captions not in CAPTION_SPLITS:
        raise ValueError(f"--captions must be one of {', '.join(CAPTION_SPLITS)}, got {captions!r}")
    if data in ("digits", "digits_thick") and not run.caps.text:  # FD to the plain digits (a tuned style's drift)
        if captions != "heldout":
            raise ValueError("--captions applies to text-to-image scenes models only; this is a digits model")
        from diffusion.metrics.fd_digits import fd_digits

        labels = class_labels(num, run.num_classes)
        return Scoring("digits", labels, {}, None, lambda images, spec: fd_digits(images, labels))
    if data == "scenes" and run.caps.text:
        from diffusion.metrics.caption_accuracy import score_scenes
        from orchestration.build.frozen import text_conds

        prompts = split_captions(run.config, captions, num)
        conds = text_conds(run.prompt_encoder(), prompts)
        return Scoring("scenes", None, conds, run.decoder(), lambda images, spec: score_scenes(images, prompts),
                       tag=caption_tag(captions), fields={"captions": captions})
    if data == "moving_digits":
        if captions != "heldout":
            raise ValueError("--captions applies to text-to-image scenes models only; this is a video model")
        return video_scoring(run, num)
    raise ValueError(f"launch.evaluate scores digits models (FD-digits), text-to-image digit-scenes models (caption "
                     f"accuracy, scenes FD) and moving-digits video models (the video metrics); {run.workdir} is a "
                     f"{'text ' if run.caps.text else ''}model of {data!r}, which has no metric here (no FID yet): "
                     "sample it with launch.sample")


def video_scoring(run, num: int) -> Scoring:
    """Scores ``num`` videos of a moving-digits run under each cell's plan (module docstring)."""
    from diffusion.metrics.psnr import mean_psnr
    from diffusion.metrics.video_metrics import ssim, video_scores
    from orchestration.generation.generate import class_labels
    from orchestration.generation.video import needs_truth, truth_videos, video_length
    from sampling.transforms.plan import given_frames

    frames = run.caps.frames
    if num < 2:
        raise ValueError("video scores need at least 2 videos")
    reference = truth_videos(run.config, VIDEO_REFERENCE_SPLIT, num, frames)
    made = {}  # ground truth by length: a cell's sampling and its scoring read it once

    def truth(spec):
        if not needs_truth(spec, frames):
            return None
        length = video_length(spec, frames)
        if length not in made:
            made[length] = truth_videos(run.config, VIDEO_TRUTH_SPLIT, num, length)
        return made[length]

    def score(videos, spec):
        out = video_scores(videos, reference, frames)
        knobs = spec.knobs("plan")
        given = given_frames(knobs, frames) if knobs is not None else ()
        if given:
            real = truth(spec)[:, :frames]
            new = [f for f in range(frames) if f not in given]
            gen = videos[:, new].reshape(-1, *videos.shape[2:])
            ref = real[:, new].reshape(-1, *real.shape[2:])
            out.update(psnr=mean_psnr(gen, ref), ssim=float(ssim(gen, ref).mean()))
        return out

    return Scoring("video", class_labels(num, run.num_classes), {}, None, score, truth=truth)
