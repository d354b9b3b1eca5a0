r"""Attention layout on XLA:CPU, and the real gain of attention-map reuse.

    python -m benchmarks.attention_fusion --workdir runs/digits16 [--batch 16] [--steps 20] \
        [--out docs/results/attention_fusion.json]

1. The attention op alone at the 16x16 level of the digits16 model (``[B, 256, 4, 8]``),
   token-major (``bqhd``, the layout Kairos used before) vs heads-first (``bhqd``, now),
   each as plain attention, with the map as an extra output (``store``) and as ``A v``
   from a given map (``reuse``). Token-major plain attention is the case XLA:CPU fuses
   into one slow kernel.
2. DDIM ``sample()`` on the model: the plain denoiser, ``AttentionReuse`` with an
   all-False schedule (``never_reuse``: stores maps, same output) and ``hurry_K``
   reusing the last K = steps / 4 maps. ``hurry_K`` vs ``plain`` is the real gain.
All variants of a part are interleaved, median of the repeats.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import emit, machine, time_interleaved
from orchestration.build.run_loader import load_run
from sampling.grids import make_grid
from sampling.loop import sample
from sampling.solvers import DDIM
from sampling.transforms import AttentionReuse
from sampling.transforms.schedules import hurry


def layout_ops(batch: int, tokens: int = 256, heads: int = 4, head_dim: int = 8) -> dict:
    """Jitted attention variants, every one on token-major ``q, k, v [B, L, H, D]``."""

    def softmax(logits):
        return jax.nn.softmax(logits / np.sqrt(head_dim), axis=-1)

    def token_major_map(q, k):
        return softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k))

    def heads_first_map(q, k):
        return softmax(jnp.einsum("bhqd,bhkd->bhqk", jnp.swapaxes(q, 1, 2), jnp.swapaxes(k, 1, 2)))

    def token_major_av(a, v):
        return jnp.einsum("bhqk,bkhd->bqhd", a, v)

    def heads_first_av(a, v):
        return jnp.swapaxes(jnp.einsum("bhqk,bhkd->bhqd", a, jnp.swapaxes(v, 1, 2)), 1, 2)

    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    q, k, v = (jax.random.normal(key, (batch, tokens, heads, head_dim)) for key in keys)
    a = token_major_map(q, k)
    fns = {}
    for name, weights, av in (("token_major", token_major_map, token_major_av),
                              ("heads_first", heads_first_map, heads_first_av)):
        plain = jax.jit(lambda q, k, v, w=weights, av=av: av(w(q, k), v))
        store = jax.jit(lambda q, k, v, w=weights, av=av: (av(w(q, k), v), w(q, k)))
        reuse = jax.jit(av)
        fns[f"{name}_plain"] = lambda f=plain: jax.block_until_ready(f(q, k, v))
        fns[f"{name}_store"] = lambda f=store: jax.block_until_ready(f(q, k, v))
        fns[f"{name}_reuse"] = lambda f=reuse: jax.block_until_ready(f(a, v))
    diff = float(jnp.abs(jax.jit(lambda q, k, v: heads_first_av(heads_first_map(q, k), v))(q, k, v)
                         - token_major_av(a, v)).max())
    return {"seconds": time_interleaved(fns, repeats=15), "max_abs_diff_layouts": diff}


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

    fns = {"plain": runner(den), "never_reuse": runner(AttentionReuse(den, np.zeros(n, bool))),
           f"hurry_{k}": runner(AttentionReuse(den, hurry(n, k)))}
    outs = {name: fn() for name, fn in fns.items()}
    med = time_interleaved(fns)
    result = {"machine": machine(), "batch": args.batch, "steps": n,
              "attention_op": layout_ops(args.batch),
              "sample_seconds": med,
              "max_abs_diff_vs_plain": {name: float(np.abs(o - outs["plain"]).max()) for name, o in outs.items()},
              "never_reuse_over_plain": med["never_reuse"] / med["plain"],
              "reuse_speedup_vs_plain": med["plain"] / med[f"hurry_{k}"]}
    emit(result, args.out)


if __name__ == "__main__":
    main()
