"""PHAST on a loaded work directory (flag-free, so scripts can import it; the command is
``launch/phast.py``)."""

from __future__ import annotations


def calibration_prompts(run, num: int, prompts: list[str] | None = None) -> list[str] | None:
    """A text model's ``num`` calibration prompts: ``prompts`` cycled, or for a digit-scenes
    model the captions of its ``train`` split (evaluation prompts the held-out ones); None
    for a model without text.

    Raises:
      ValueError: prompts for a model without text, or none for a text model that has no
        caption split to take them from.
    """
    from launch.generate import cycled_prompts

    if prompts and not run.caps.text:
        raise ValueError(f"{run.workdir} is not a text-conditioned model; --prompt and --prompts_file do not apply")
    if not run.caps.text:
        return None
    if prompts:
        return cycled_prompts(num, prompts)
    if run.config.data.name == "scenes":
        from launch.scoring import split_captions

        return split_captions(run.config, "train", num)
    raise ValueError(f"{run.workdir} is a text-to-image model: give calibration prompts with --prompt \"...\" or "
                     "--prompts_file (prompts like the ones you will sample)")


def search_for_run(run, params, spec, k: int, num: int = 32, seed: int = 1000, max_evals: int = 60,
                   log=print, prompts: list[str] | None = None, negative_prompt: str = ""):
    """PHAST on a loaded run: ``(schedule bool [steps], PSNR dB, history)`` for sampler
    ``spec`` (without its reuse and caching, ``launch.phast_files.reference``) and ``k``
    reuse steps, on ``num`` noises of ``seed`` (and a text model's calibration prompts,
    :func:`calibration_prompts`; a latent model's PSNR is measured on its latents)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from diffusion.metrics.psnr import mean_psnr
    from launch.generate import class_labels
    from launch.phast_files import reference as reference_spec
    from sampling.loop import sample
    from sampling.transforms import AttentionReuse
    from sampling.transforms.phast import search

    den, solver, grid = reference_spec(spec).build(run.denoiser, run.caps)
    k_noise, k_solver = jax.random.split(jax.random.PRNGKey(seed))
    x_T = jax.random.normal(k_noise, (num, *run.sample_shape))
    labels = class_labels(num, run.num_classes)
    cond = {} if labels is None else {"label": jnp.asarray(labels)}
    texts = calibration_prompts(run, num, prompts)
    if texts is not None:
        from launch.conditioning import text_conds

        cond.update({k: jnp.asarray(v) for k, v in text_conds(run.prompt_encoder(), texts, negative_prompt).items()})
    cond = cond or None
    reference = np.asarray(sample(den, params, solver, grid, x_T, cond, k_solver))

    def score(schedule):
        out = sample(AttentionReuse(den, jnp.asarray(schedule)), params, solver, grid, x_T, cond, k_solver)
        return mean_psnr(np.asarray(out), reference)

    return search(score, spec.steps, k, max_evals, log=log)
