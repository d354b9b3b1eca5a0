"""Samples a loaded work directory (``orchestration.build.run_loader.LoadedRun``) as its
model asks: class labels cycled, a text model's prompts encoded, a latent model's samples
decoded, a video model's under its plan."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from orchestration.build.frozen import text_conds
from orchestration.generation.generate import check_prompts, class_labels, cycled_prompts, generate
from orchestration.generation.video import generate_video
from sampling.spec import SamplerSpec


def draw(run: Any, params: Any, spec: SamplerSpec, num: int, *, seed: int = 0, batch_size: int = 500,
         prompts: list[str] | None = None, negative_prompt: str = "", x_T: np.ndarray | None = None,
         progress: bool = False, external: Mapping[str, Callable[..., Any]] | None = None,
         truth: np.ndarray | None = None, mesh: Any = None, sdxl: dict | None = None
         ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Samples a loaded run (``orchestration.build.run_loader.LoadedRun``): ``(images [num, H, W, C]
    float32 in about [-1, 1], conditions)``. Labels cycle through the classes of a
    class-conditional model; a text model needs ``prompts`` (cycled to ``num``), with
    ``negative_prompt`` as guidance's null condition; a latent model's samples are decoded
    through its VAE. ``x_T`` replaces the initial noise (``[num, *run.sample_shape]``).
    A video model samples under the spec's plan (:func:`generate_video`; ``truth``:
    the ground-truth videos its given frames come from). ``mesh``: split the batches over
    its devices (:func:`generate`). ``sdxl``: an SDXL run's ``prompts_2`` (cycled like the
    prompts), ``negative_prompt_2``, ``original_size``, ``crop``, ``target_size``
    (``diffusion.nn.text.sdxl_prompts``)."""
    check_prompts(run, prompts)
    conds: dict[str, np.ndarray] = {}
    if run.caps.text:
        options = dict(sdxl or {})
        if options.get("prompts_2"):
            options["prompts_2"] = cycled_prompts(num, options["prompts_2"])
        conds = text_conds(run.prompt_encoder(), cycled_prompts(num, prompts), negative_prompt, options)
    elif sdxl:
        raise ValueError("--prompt_2 and the size flags apply to SDXL runs only")
    labels = class_labels(num, run.num_classes)
    if run.caps.frames is not None:
        if x_T is not None or prompts:
            raise ValueError("video models take neither prompts nor initial noise")
        out = generate_video(run.denoiser, params, run.sample_shape, num, spec, run.caps, truth=truth, seed=seed,
                             batch_size=batch_size, labels=labels, progress=progress, external=external, mesh=mesh)
        return out, ({"label": labels} if labels is not None else {})
    out = generate(run.denoiser, params, run.sample_shape, num, spec, run.caps, batch_size=batch_size, seed=seed,
                   labels=labels, progress=progress, external=external, conds=conds, x_T=x_T, mesh=mesh)
    decode = run.decoder()
    if labels is not None:
        conds["label"] = labels
    return (decode(out) if decode is not None else out), conds
