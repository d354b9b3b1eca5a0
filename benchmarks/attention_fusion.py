r"""Why the attention-reuse timings of the reuse_and_caching run are confounded.

    python -m benchmarks.attention_fusion --workdir runs/digits16 [--batch 16] [--steps 20] \
        [--out docs/results/attention_fusion.json]

DDIM ``sample()`` on the 16x16 digits model, all variants interleaved (median of 5):
* ``plain_unfused``: the plain denoiser (as in ``diffusion/nn/attention.py``);
* ``plain``: the plain denoiser with the map materialised (``optimization_barrier``), to
  test whether softmax fusion is what makes the plain path slow;
* ``never_reuse``: ``AttentionReuse`` with an all-False schedule (stores maps, same output);
* ``hurry_K``: ``AttentionReuse`` reusing the last K = steps / 4 maps.
``hurry_K`` vs ``never_reuse`` / ``plain`` is the real gain of attention reuse.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import diffusion.nn.attention as attention
from benchmarks.common import emit, machine, time_interleaved
from launch.run_loader import load_run
from sampling.grids import make_grid
from sampling import loop
from sampling.loop import sample
from sampling.solvers import DDIM
from sampling.transforms import AttentionReuse
from sampling.transforms.schedules import hurry


def materialised_weights(q, k):
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)
    return jax.lax.optimization_barrier(weights)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="runs/digits16")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    run = load_run(args.workdir)
    params = run.params(run.select("latest")[0])
    den, n, k = run.denoiser, args.steps, args.steps // 4
    x_T = jax.random.normal(jax.random.PRNGKey(0), (args.batch, *run.info.image_shape))
    cond = {"label": jnp.arange(args.batch) % run.num_classes}
    grid, solver = make_grid("trailing", n, den.schedule), DDIM(den.schedule, 0.0)

    def runner(d):
        return lambda: np.asarray(jax.block_until_ready(sample(d, params, solver, grid, x_T, cond)))

    def materialised_chain(*args):  # its own function, so its own trace and compile caches
        return loop._chain(*args)

    materialised_jit = jax.jit(materialised_chain, static_argnums=(7,))

    def run_materialised():
        original, attention.attention_weights = attention.attention_weights, materialised_weights
        try:  # the swap matters at trace time (the warm-up call); later calls reuse the program
            out = materialised_jit(den, params, solver, grid, x_T, cond, jax.random.PRNGKey(0), False)[0].x
            return np.asarray(jax.block_until_ready(out))
        finally:
            attention.attention_weights = original

    fns = {"plain_unfused": runner(den), "plain": run_materialised,
           "never_reuse": runner(AttentionReuse(den, np.zeros(n, bool))),
           f"hurry_{k}": runner(AttentionReuse(den, hurry(n, k)))}
    jax.clear_caches()
    outs = {name: fn() for name, fn in fns.items()}
    max_diff = {name: float(np.abs(o - outs["plain_unfused"]).max()) for name, o in outs.items()}
    med = time_interleaved(fns)
    result = {"machine": machine(), "batch": args.batch, "steps": n, "seconds": med,
              "max_abs_diff_vs_plain_unfused": max_diff,
              "plain_unfused_over_plain": med["plain_unfused"] / med["plain"],
              "reuse_speedup_vs_plain": med["plain_unfused"] / med[f"hurry_{k}"],
              "reuse_speedup_vs_never_reuse": med["never_reuse"] / med[f"hurry_{k}"]}
    emit(result, args.out)


if __name__ == "__main__":
    main()
