"""PHAST on a loaded work directory (flag-free, so scripts can import it; the command is
``launch/phast.py``)."""

from __future__ import annotations


def search_for_run(run, params, spec, k: int, num: int = 32, seed: int = 1000, max_evals: int = 60,
                   log=print):
    """PHAST on a loaded run: ``(schedule bool [steps], PSNR dB, history)`` for sampler
    ``spec`` (without its reuse and caching, ``launch.phast_files.reference``) and ``k``
    reuse steps, on ``num`` noises of ``seed``."""
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
    x_T = jax.random.normal(k_noise, (num, *run.info.image_shape))
    labels = class_labels(num, run.num_classes)
    cond = None if labels is None else {"label": jnp.asarray(labels)}
    reference = np.asarray(sample(den, params, solver, grid, x_T, cond, k_solver))

    def score(schedule):
        out = sample(AttentionReuse(den, jnp.asarray(schedule)), params, solver, grid, x_T, cond, k_solver)
        return mean_psnr(np.asarray(out), reference)

    return search(score, spec.steps, k, max_evals, log=log)
