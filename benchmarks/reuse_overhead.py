r"""Reuse and caching end to end on ``sample()``: what the step-plan loop costs when it skips
nothing, and what it saves against the FLOPs a schedule skips (issue 26).

    python -m benchmarks.reuse_overhead [--steps 20] [--batch 16] [--repeats 9] \
        [--out docs/results/reuse_overhead.json]

Two models at their configs' shapes, random weights (the time of a call does not depend on
them): ``configs/digits16.py`` with attention reuse, ``configs/digits.py`` with feature
caching. For each, DDIM on the trailing grid, side by side in one run (interleaved rounds,
one warm-up each, the median of ``--repeats``): the plain denoiser; the transform with a
schedule that skips nothing (all-off reuse, all-full caching), which runs the same program
as every other schedule; and schedules that skip work. ``f`` is the fraction of the whole
call's FLOPs a schedule skips, from XLA's cost analysis of one network call in each mode
(compute, store, reuse / retrieve) weighted by the steps in each; ``saving`` is ``1 -
t / t_plain``. The aims: ``t_all_off / t_plain <= 1.02`` and ``saving >= 0.8 f``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import emit, flops_of, machine, time_interleaved
from configs import digits, digits16
from diffusion.contract import COMPUTE, Modes
from diffusion.data import make_source
from orchestration.build.builders import build_denoiser, init_params
from sampling.grids import make_grid
from sampling.loop import sample
from sampling.solvers import DDIM
from sampling.transforms import AttentionReuse, FeatureCache
from sampling.transforms.schedules import hurry, reuse_steps, uniform_full


def model(config):
    """``(denoiser, params, x_T [B, ...], cond)`` of a config, random weights."""
    _, info = make_source(config.data.name, "train", resolution=config.data.resolution)
    den = build_denoiser(config, info)
    return den, init_params(config, info, jax.random.PRNGKey(0)), info


def call_flops(den, params, x, cond, modes: Modes) -> float:
    """FLOPs of one network call in ``modes`` (with a cache of the store modes it reads)."""
    stored = Modes("store" if modes.attention != "compute" else "compute",
                   "store" if modes.features != "compute" else "compute", modes.feature_branch)
    cache = den.init_cache(params, x, cond, modes=stored)
    t = jnp.full((x.shape[0],), 0.5)
    return flops_of(jax.jit(lambda p, c: den(p, x, t, cond, cache=c, modes=modes)[0]).lower(params, cache))


def skipped_fraction(den, params, x, cond, transform, steps: int) -> float:
    """``f``: the fraction of the chain's FLOPs (plain calls) a transform's plan skips."""
    plan = transform.step_plan(steps)
    attention, features = plan.codes(steps)
    branch = plan.feature_branch
    full = call_flops(den, params, x, cond, COMPUTE)
    cost = {}
    total = 0.0
    for a, f in zip(np.asarray(attention), np.asarray(features)):
        key = (int(a), int(f))
        if key not in cost:
            modes = Modes(("compute", "compute", "reuse")[key[0]], ("compute", "compute", "retrieve")[key[1]], branch)
            cost[key] = call_flops(den, params, x, cond, modes)  # a store step computes what a plain one does
        total += cost[key]
    return 1.0 - total / (steps * full)


def measure(den, params, info, batch: int, steps: int, variants: dict, repeats: int) -> dict:
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, *info.image_shape))
    cond = {"label": jnp.arange(batch, dtype=jnp.int32) % info.num_classes}
    grid, solver = make_grid("trailing", steps, den.schedule), DDIM(den.schedule, 0.0)

    def runner(d):
        return lambda: jax.block_until_ready(sample(d, params, solver, grid, x, cond))

    fns = {"plain": runner(den), **{name: runner(t) for name, t in variants.items()}}
    seconds = time_interleaved(fns, repeats=repeats)
    out = {"seconds": seconds, "rows": {}}
    for name, transform in variants.items():
        f = skipped_fraction(den, params, x[:1], {k: v[:1] for k, v in cond.items()}, transform, steps)
        saving = 1.0 - seconds[name] / seconds["plain"]
        out["rows"][name] = {"skipped_flops_fraction": f, "wall_saving": saving,
                             "time_over_plain": seconds[name] / seconds["plain"],
                             "saving_over_f": saving / f if f > 0 else None}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.steps < 4 or args.batch < 1 or args.repeats < 1:
        ap.error(f"--steps must be >= 4, --batch and --repeats >= 1; got {args.steps}, {args.batch}, {args.repeats}")
    n = args.steps
    result = {"machine": machine(), "steps": n, "batch": args.batch, "repeats": args.repeats,
              "command": f"python -m benchmarks.reuse_overhead --steps {n} --batch {args.batch} "
                         f"--repeats {args.repeats}"}
    den, params, info = model(digits16.get_config())
    result["attention_reuse_digits16"] = measure(den, params, info, args.batch, n, {
        "all_off": AttentionReuse(den, np.zeros(n, bool)),
        f"hurry_{n // 2}": AttentionReuse(den, hurry(n, n // 2)),
        f"hurry_{n // 4}": AttentionReuse(den, hurry(n, n // 4)),
        "alternate": AttentionReuse(den, reuse_steps(n, list(range(2, n, 2)))),
    }, args.repeats)
    den, params, info = model(digits.get_config())
    # FeatureCache's branch b is DeepCache's cache_branch b - 1 (docs/design/caching.md)
    result["feature_cache_digits"] = measure(den, params, info, args.batch, n, {
        "all_full": FeatureCache(den, np.ones(n, bool), branch=3),
        **{f"uniform_{k}_branch2": FeatureCache(den, uniform_full(n, k), branch=3) for k in (2, 5)},
        **{f"uniform_{k}_branch-1": FeatureCache(den, uniform_full(n, k), branch=0) for k in (2, 5)},
    }, args.repeats)
    checks = {}
    for part, off in (("attention_reuse_digits16", "all_off"), ("feature_cache_digits", "all_full")):
        rows = result[part]["rows"]
        checks[f"{part}: {off} / plain <= 1.02"] = rows[off]["time_over_plain"] <= 1.02
        for name, row in rows.items():
            if name != off:
                checks[f"{part}: {name} saving >= 0.8 f"] = row["wall_saving"] >= 0.8 * row["skipped_flops_fraction"]
    result["checks"] = checks
    emit(result, args.out)


if __name__ == "__main__":
    main()
