"""PHAST on a work directory (``python -m launch.phast``): searches an attention-reuse
schedule with K reuse steps for one sampler, scoring each candidate by the mean PSNR of
its samples against that sampler on calibration noises, starting from HURRY
(``sampling/transforms/phast.py``), and writes ``<workdir>/phast/<sampler tag>_reuse<K>.json``
(``orchestration/workdir/phast_files.py``), which ``attention_reuse=phast:K`` reads.
"""

from __future__ import annotations

import datetime
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.metrics.psnr import mean_psnr
from orchestration.build.frozen import text_conds
from orchestration.build.run_loader import load_run
from orchestration.generation.generate import class_labels, cycled_prompts
from orchestration.generation.scoring import split_captions
from orchestration.workdir.phast_files import CACHING, reference, save_schedule, schedule_path
from sampling import registry
from sampling.loop import sample
from sampling.spec import SamplerSpec
from sampling.transforms import AttentionReuse
from sampling.transforms.phast import search
from sampling.transforms.schedules import hurry


def calibration_prompts(run, num: int, prompts: list[str] | None = None) -> list[str] | None:
    """A text model's ``num`` calibration prompts: ``prompts`` cycled, or for a digit-scenes
    model the captions of its ``train`` split (evaluation prompts the held-out ones); None
    for a model without text.

    Raises:
      ValueError: prompts for a model without text, or none for a text model that has no
        caption split to take them from.
    """
    if prompts and not run.caps.text:
        raise ValueError(f"{run.workdir} is not a text-conditioned model; --prompt and --prompts_file do not apply")
    if not run.caps.text:
        return None
    if prompts:
        return cycled_prompts(num, prompts)
    if run.config.data.name == "scenes":
        return split_captions(run.config, "train", num)
    raise ValueError(f"{run.workdir} is a text-to-image model: give calibration prompts with --prompt \"...\" or "
                     "--prompts_file (prompts like the ones you will sample)")


def search_for_run(run, params, spec, k: int, num: int = 32, seed: int = 1000, max_evals: int = 60,
                   log=print, prompts: list[str] | None = None, negative_prompt: str = ""):
    """PHAST on a loaded run: ``(schedule bool [steps], PSNR dB, history)`` for sampler
    ``spec`` (without its reuse and caching, ``phast_files.reference``) and ``k``
    reuse steps, on ``num`` noises of ``seed`` (and a text model's calibration prompts,
    :func:`calibration_prompts`; a latent model's PSNR is measured on its latents)."""
    den, solver, grid = reference(spec).build(run.denoiser, run.caps)
    k_noise, k_solver = jax.random.split(jax.random.PRNGKey(seed))
    x_T = jax.random.normal(k_noise, (num, *run.sample_shape))
    labels = class_labels(num, run.num_classes)
    cond = {} if labels is None else {"label": jnp.asarray(labels)}
    texts = calibration_prompts(run, num, prompts)
    if texts is not None:
        cond.update({k: jnp.asarray(v) for k, v in text_conds(run.prompt_encoder(), texts, negative_prompt).items()})
    cond = cond or None
    target = np.asarray(sample(den, params, solver, grid, x_T, cond, k_solver))

    def score(schedule):
        out = sample(AttentionReuse(den, jnp.asarray(schedule)), params, solver, grid, x_T, cond, k_solver)
        return mean_psnr(np.asarray(out), target)

    return search(score, spec.steps, k, max_evals, log=log)


def search_and_save(workdir: str | pathlib.Path, k: int, *, overrides: dict | None = None, num: int = 32,
                    seed: int = 1000, max_evals: int = 60, ckpt: str = "latest", overwrite: bool = False,
                    prompts: list[str] | None = None, negative_prompt: str = "", command: str = ""
                    ) -> tuple[pathlib.Path, np.ndarray, dict]:
    """Searches ``k`` reuse steps for the run's ``config.sample.sampler`` merged with
    ``overrides`` (which may not hold reuse or caching) and writes the schedule file; returns
    ``(path, schedule bool [steps], its info)``. Everything is checked before anything is
    computed; an existing file is kept unless ``overwrite``.
    """
    keys = registry.keys()
    caching = sorted(key for key in overrides or {} if key in keys and keys[key][0] in CACHING)
    if caching:
        raise ValueError(f"launch.phast searches a reuse schedule for a sampler without reuse or caching: leave out "
                         f"{', '.join('--' + key for key in caching)}")
    run = load_run(workdir)
    calibration_prompts(run, num, prompts)  # checked before anything is computed
    spec = reference(SamplerSpec.parse(run.config.sample.sampler).merged(overrides or {}))
    path = schedule_path(workdir, spec, k)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to search again and replace it")
    hurry(spec.steps, k)  # validates k before anything is computed
    spec.build(run.denoiser, run.caps)  # and the sampler (guidance needs labels, ...)
    params = run.params(run.select(ckpt)[0])
    t0 = time.perf_counter()
    best, best_score, history = search_for_run(run, params, spec, k, num, seed, max_evals, prompts=prompts,
                                               negative_prompt=negative_prompt)
    calibration = {"num": num, "seed": seed}
    if run.caps.text:
        calibration.update(prompts=prompts or "train captions", negative_prompt=negative_prompt)
    info = {"k": k, "psnr_db": best_score, "hurry_psnr_db": history[0]["score"], "calibration": calibration,
            "evaluations": len(history), "search_seconds": time.perf_counter() - t0, "command": command,
            "date": datetime.date.today().isoformat(), "history": history}
    save_schedule(path, spec, best, info)
    return path, best, info
