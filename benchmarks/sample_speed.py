r"""Sampling speed: compile time vs steps, and sample() vs a Python loop vs the model itself.

    python -m benchmarks.sample_speed [--workdir runs/digits | --config configs/digits.py] \
        [--batch 256] [--out docs/results/sample_speed.json]

1. Compile time of ``sample()`` (DDIM, DPM-Solver++ 2M, F-PNDM) at 10, 100 and 1000 steps,
   median of 3: the scan compiles the step once, so it should be flat in the number of steps.
2. Images/s at 50 DDIM steps of (a) ``sample()`` (one jitted ``lax.scan``), (b) a
   per-step Python loop calling the jitted denoiser and a jitted DDIM update, and (c) the
   model's own forward throughput (jitted denoiser alone, 50 calls): (c)/(a) in time is
   the fraction of the model's speed the loop keeps. FLOP/s: the network's FLOPs (XLA's
   cost analysis of one call) x steps / time.
Medians of 5 after warm-up; all variants timed in one run.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import emit, flops_of, machine, time_interleaved
from sampling import loop
from sampling.grids import make_grid
from sampling import registry
from sampling.solvers import DDIM
from sampling.solvers.ddim import ddim_update


def load_model(args):
    """(denoiser, params, image_shape, labels) from a work directory or a fresh config."""
    if args.workdir:
        from orchestration.build.run_loader import load_run

        run = load_run(args.workdir)
        params = run.params(run.select("latest")[0])
        den, shape, classes = run.denoiser, run.info.image_shape, run.num_classes
    else:
        from configs import digits
        from orchestration.build.builders import build_denoiser, build_source, init_params, model_caps

        config = digits.get_config()
        _, info = build_source(config)
        den, shape = build_denoiser(config, info), info.image_shape
        classes = model_caps(config, info).null_label
        params = init_params(config, info, jax.random.PRNGKey(0))
    labels = jnp.arange(args.batch) % classes if classes else None
    return den, params, shape, labels


def compile_times(den, params, shape, labels, batch, rounds: int = 3) -> dict:
    """Median of ``rounds`` compilations of each (solver, steps), the step counts
    interleaved within a round so that machine drift hits them alike."""
    x_T = jnp.zeros((batch, *shape))
    cond = {"label": labels} if labels is not None else None
    out = {}
    for name in ("ddim", "dpmpp2m", "fpndm"):
        solver = registry.solver(name).make(den.schedule)
        times = {n: [] for n in (10, 100, 1000)}
        for _ in range(rounds):
            for n in times:
                grid = make_grid("trailing", n, den.schedule)
                jax.clear_caches()  # otherwise a repeat is served from the in-memory cache
                t0 = time.perf_counter()
                loop._chain_jit.lower(den, params, solver, grid, x_T, cond, jax.random.PRNGKey(0), False).compile()
                times[n].append(time.perf_counter() - t0)
        for n, ts in times.items():
            out[f"{name}/{n}"] = float(np.median(ts))
        out[f"{name}/ratio_1000_vs_10"] = out[f"{name}/1000"] / out[f"{name}/10"]
    return out


def throughput(den, params, shape, labels, batch, steps=50) -> dict:
    sched = den.schedule
    grid = make_grid("trailing", steps, sched)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (batch, *shape))
    cond = {"label": labels} if labels is not None else None
    solver = DDIM(sched, 0.0)
    key = jax.random.PRNGKey(1)

    compiled_scan = loop._chain_jit.lower(den, params, solver, grid, x_T, cond, key, False).compile()

    def run_scan():
        jax.block_until_ready(compiled_scan(den, params, solver, grid, x_T, cond, key)[0].x)

    model = jax.jit(lambda p, x, t: den(p, x, t, cond)[0])
    model_lowered = model.lower(params, x_T, grid[0])
    model_c = model_lowered.compile()
    model_flops = flops_of(model_lowered)

    @jax.jit
    def update(x, pred_x0, pred_eps, t, s):
        at, st = sched.alpha_sigma(t)
        as_, ss = sched.alpha_sigma(s)
        return ddim_update(pred_x0, pred_eps, as_, ss, at, st, 0.0, jnp.zeros_like(x))

    def run_python_loop():
        x = x_T
        for i in range(steps):
            pred = model_c(params, x, grid[i])
            x = update(x, pred.x0, pred.eps, grid[i], grid[i + 1])
        jax.block_until_ready(x)

    def run_model_only():
        out = None
        for i in range(steps):
            out = model_c(params, x_T, grid[i])
        jax.block_until_ready(out)

    np.testing.assert_allclose(np.asarray(compiled_scan(den, params, solver, grid, x_T, cond, key)[0].x),
                               np.asarray(_python_result(model_c, update, params, x_T, grid, steps)),
                               rtol=2e-3, atol=2e-3)
    med = time_interleaved({"scan": run_scan, "python_loop": run_python_loop, "model_only": run_model_only})
    return {
        "batch": batch, "steps": steps,
        "seconds": med,
        "images_per_s": {k: batch / v for k, v in med.items()},
        "scan_vs_model_only": med["model_only"] / med["scan"],
        "scan_vs_python_loop": med["python_loop"] / med["scan"],
        "gflops_per_image_step": model_flops / batch / 1e9,
        # the network's FLOPs x steps (XLA's cost analysis does not multiply a loop body
        # by its trip count; the DDIM update adds ~0.1%)
        "achieved_gflops": {k: model_flops * steps / v / 1e9 for k, v in med.items()},
    }


def _python_result(model_c, update, params, x_T, grid, steps):
    x = x_T
    for i in range(steps):
        pred = model_c(params, x, grid[i])
        x = update(x, pred.x0, pred.eps, grid[i], grid[i + 1])
    return x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--parts", default="compile,throughput", help="compile and/or throughput")
    ap.add_argument("--out", default=None, help="JSON file; parts not run now are kept from it")
    args = ap.parse_args()
    den, params, shape, labels = load_model(args)
    parts = set(args.parts.split(","))
    old = json.loads(pathlib.Path(args.out).read_text()) if args.out and pathlib.Path(args.out).exists() else {}
    result = {**old, "machine": machine()}
    if "compile" in parts:
        result["compile_s"] = compile_times(den, params, shape, labels, args.batch)
    if "throughput" in parts:
        result["throughput"] = throughput(den, params, shape, labels, args.batch)
    emit(result, args.out)


if __name__ == "__main__":
    main()
