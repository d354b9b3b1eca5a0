r"""TS-DPM on the digits model: FD-digits with and without the time shift in both modes, the
authors' selection rule beside the forward-marginal one, where the rule's choices land, its
overhead, and the exposure-bias diagnostic. Writes docs/results/time_shift.{md,json} and plots.

    python -m scripts.time_shift_results --workdir runs/digits [--num 1000] [--out docs/results]
        [--variants query,destination,released] [--rules authors,marginal]

Variants (``VARIANTS``): how the shifted time is used and on which grid.

* ``query``: the paper's algorithm (``time_shift_mode=query``) on the DDIM ``uniform`` grid,
  5, 10, 20, 50 steps.
* ``destination``: the authors' released PNM samplers' form (``time_shift_mode=destination``)
  on the same grid and steps.
* ``released``: the destination form on the released samplers' own grid (``tsdpm``: the
  authors' ``S`` = 5, 10, 20, 50 run ``S - 1`` = 4, 9, 19, 49 steps): DDIM, DDPM, S-PNDM and
  F-PNDM as the authors ran them (DPM-Solver++ is not among their PNM samplers; it is run
  the same way for comparison).

Rules (``RULES``): ``authors`` compares the sample variance with ``1 - alpha_bar``
(``time_shift_data_var=0``, the default); ``marginal`` with ``V0 alpha_bar + 1 - alpha_bar``,
``V0`` the training digits' mean per-sample variance (``ddof = 1``, measured here).

1. Calibration (seed 100, 10 steps; ``released``: 9): for each variant, rule and solver,
   every (window, cutoff) in ``WINDOWS x CUTOFFS``; the lowest FD-digits is kept (TS "on").
   Cutoffs are the authors' 0-based step index (``sampling/transforms/time_shift.py``).
2. Report (seeds 0, 1, 2): every solver at the variant's step counts, TS off and on (each rule).
3. Overhead: warm wall time of ``sample()`` with and without the shift (median of 5,
   interleaved), per solver at 10 and 20 steps, batch 250, query and destination.
4. Diagnostics: the mean per-sample variance of ``x_t`` along DDIM chains against the forward
   process's ``alpha_bar V0 + 1 - alpha_bar``, with and without TS; and where the rule's
   choices land: per shifted DDIM step at the calibrated setting, the shares at the
   window's top edge, its bottom edge and inside it (an edge means the variance asked for
   more than the window allows).

Sampling cells are cached in ``<workdir>/eval_time_shift/report.json`` (the evaluate
machinery), so an interrupted run resumes; cells of the code before the cutoff fix (tag
version 2) are read back under their own cutoff, ``C - 1``, and not reused for ``C``.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import machine, time_interleaved, write_keeping_verdict
from orchestration.workdir import files
from orchestration.generation.evaluation import run_cells
from orchestration.generation.generate import class_labels
from orchestration.build.run_loader import load_run
from orchestration.generation.sweep import Cell
from sampling.registry import fmt
from sampling.spec import make_spec

SOLVERS = ("ddpm", "ddim", "spndm", "fpndm", "dpmpp2m")
VARIANTS = {  # name -> (time_shift_mode, grid, report steps, calibration steps)
    "query": ("query", "uniform", (5, 10, 20, 50), 10),
    "destination": ("destination", "uniform", (5, 10, 20, 50), 10),
    "released": ("destination", "tsdpm", (4, 9, 19, 49), 9),
}
RULES = ("authors", "marginal")
WINDOWS = (5, 10, 20, 40, 80)
CUTOFFS = (300, 550)
CALIBRATION_SEED = 100
SEEDS = (0, 1, 2)


# ---------------------------------------------------------------- shared with scripts/scenes_results.py


def data_variance(x0: np.ndarray, lead: int = 1) -> float:
    """``V0``: the mean per-sample (``lead = 2``: per-frame) unbiased variance of ``x0``,
    over the axes the time shift takes its variance over."""
    x0 = np.asarray(x0, np.float64)
    return float(np.mean(np.var(x0.reshape(*x0.shape[:lead], -1), axis=-1, ddof=1)))


def time_shift_values(mode: str, ts, data_var: float = 0.0, min_snr: float = 0.0) -> dict:
    """The sampler keys of a time shift: ``ts`` ``(window, cutoff)``, ``"W:C"`` or None (off)."""
    if ts is None or ts == "off":
        return {"time_shift": "off"}
    text = ts if isinstance(ts, str) else f"{fmt(float(ts[0]))}:{fmt(float(ts[1]))}"
    values = {"time_shift": text, "time_shift_mode": mode}
    if data_var:
        values["time_shift_data_var"] = data_var
    if min_snr:
        values["time_shift_min_snr"] = min_snr
    return values


def edge_shares(run, params, spec, x_T, cond) -> list[dict]:
    """Where ``spec``'s time shift chooses, step by step, on the chain it samples from ``x_T``.

    The choices are recomputed from the chain's states with the sampler's own rule: in
    destination mode from the state before step ``k`` (``k >= 1``), in query mode from the
    state after it (used at step ``k + 1``), each around the next grid time above the cutoff.

    Returns:
      one entry per shifted step: ``n`` (the window's centre, a training step), ``top``,
      ``bottom``, ``inside`` (shares of the samples), ``mean_offset`` (steps from the centre).
    """
    from sampling.loop import sample_trajectory
    from sampling.transforms.time_shift import closest_time, sample_variance

    den, solver, grid = spec.build(run.denoiser, run.caps)
    knobs = spec.knobs("time_shift")
    traj = np.asarray(sample_trajectory(den, params, solver, grid, jnp.asarray(x_T), cond))  # [N, B, ...]
    sched, lead = run.denoiser.schedule, 2 if run.caps.frames else 1
    T, steps = sched.T, len(grid) - 1
    before = np.concatenate([np.asarray(x_T)[None], traj[:-1]])  # the state each step starts from
    half = math.floor(knobs["window"] / 2)
    out = []
    for k in range(steps):
        c = int(round(float(grid[k + 1]) * T))
        if c - 1 <= knobs["cutoff"]:
            continue
        if knobs["mode"] == "destination":
            if k == 0:
                continue
            x = before[k]
        else:
            if k + 1 >= steps:
                continue
            x = traj[k]
        tau = closest_time(sched, sample_variance(jnp.asarray(x), lead), grid[k + 1], knobs["window"],
                           knobs["data_var"], knobs["min_snr"], math.prod(x.shape[lead:]))
        offset = np.rint(np.asarray(tau, np.float64) * T).astype(int) - c
        top, bottom = offset == min(half, T - c), offset == -min(half, c)
        out.append({"n": c, "top": float(np.mean(top)), "bottom": float(np.mean(bottom)),
                    "inside": float(np.mean(~top & ~bottom)), "mean_offset": float(np.mean(offset))})
    return out


# ---------------------------------------------------------------- the digits page


def spec_of(variant, solver, steps, ts=None, data_var=0.0):
    """``ts``: ``(window, cutoff)`` or None (off)."""
    mode, grid, _, _ = VARIANTS[variant]
    return make_spec(solver, steps, grid, **time_shift_values(mode, ts, data_var))


def fd_of(records, spec, seed):
    key = spec.tag()
    return [r["fd_digits"] for r in records if r["id"].split("/")[1] == key and r["seed"] == seed]


def calibrate(run, ckpt, out_dir, num, variants, rules, v0) -> dict:
    """``{variant: {rule: {solver: best}}}``."""
    cells = []
    for v in variants:
        n = VARIANTS[v][3]
        cells += [Cell(spec_of(v, s, n), CALIBRATION_SEED) for s in SOLVERS]
        cells += [Cell(spec_of(v, s, n, (w, c), v0[r]), CALIBRATION_SEED)
                  for r in rules for s in SOLVERS for w in WINDOWS for c in CUTOFFS]
    records = run_cells(run, [ckpt], list(dict.fromkeys(cells)), out_dir, num)
    best = {}
    for v in variants:
        n = VARIANTS[v][3]
        for r in rules:
            for s in SOLVERS:
                base = fd_of(records, spec_of(v, s, n), CALIBRATION_SEED)[0]
                scores = {(w, c): fd_of(records, spec_of(v, s, n, (w, c), v0[r]), CALIBRATION_SEED)[0]
                          for w in WINDOWS for c in CUTOFFS}
                (w, c), fd = min(scores.items(), key=lambda kv: kv[1])
                best.setdefault(v, {}).setdefault(r, {})[s] = {
                    "window": w, "cutoff": c, "fd_on": fd, "fd_off": base, "steps": n,
                    "grid": {f"{w}:{c}": x for (w, c), x in scores.items()}}
    return best


def on_spec(variant, rule, solver, steps, best, v0):
    b = best[variant][rule][solver]
    return spec_of(variant, solver, steps, (b["window"], b["cutoff"]), v0[rule])


def report_cells(run, ckpt, out_dir, num, best, variants, rules, v0) -> list[dict]:
    cells = []
    for v in variants:
        for seed in SEEDS:
            for s in SOLVERS:
                for n in VARIANTS[v][2]:
                    cells.append(Cell(spec_of(v, s, n), seed))
                    cells += [Cell(on_spec(v, r, s, n, best, v0), seed) for r in rules]
    return run_cells(run, [ckpt], list(dict.fromkeys(cells)), out_dir, num)


def summarize(records, best, variants, rules, v0) -> dict:
    table = {}
    for v in variants:
        for s in SOLVERS:
            for n in VARIANTS[v][2]:
                off = [fd_of(records, spec_of(v, s, n), seed)[0] for seed in SEEDS]
                row = {"off": off}
                for r in rules:
                    on = [fd_of(records, on_spec(v, r, s, n, best, v0), seed)[0] for seed in SEEDS]
                    row[r] = on
                    row[f"{r}_relative_change"] = float(np.mean(on) / np.mean(off) - 1.0)
                table[f"{v}/{s}/{n}"] = row
    return table


def overhead(run, params, best, variants, rule, v0, batch=250) -> dict:
    """On/off wall time of the query and destination variants with ``rule``'s calibrated setting."""
    from sampling.loop import sample

    labels = jnp.asarray(class_labels(batch, run.num_classes))
    x_T = jax.random.normal(jax.random.PRNGKey(0), (batch, *run.info.image_shape))
    out = {}
    for v in [v for v in ("query", "destination") if v in variants]:
        for s in SOLVERS:
            for n in (10, 20):
                fns = {}
                for name, spec in (("off", spec_of(v, s, n)), ("on", on_spec(v, rule, s, n, best, v0))):
                    den, solver, grid = spec.build(run.denoiser, run.caps)
                    fns[name] = lambda den=den, solver=solver, grid=grid: jax.block_until_ready(
                        sample(den, params, solver, grid, x_T, {"label": labels}))
                med = time_interleaved(fns)
                out[f"{v}/{s}/{n}"] = {"off_s": med["off"], "on_s": med["on"], "ratio": med["on"] / med["off"]}
    return out


def diagnostics(run, params, best, num, out_dir: pathlib.Path, variants, rules, v0) -> dict:
    """The variance along DDIM chains (plot) and the edge shares of the calibrated DDIM settings."""
    from sampling.loop import sample_trajectory

    sched = run.denoiser.schedule
    labels = jnp.asarray(class_labels(num, run.num_classes))
    cond = {"label": labels}
    x_T = jax.random.normal(jax.random.PRNGKey(7), (num, *run.info.image_shape))
    result = {"data_variance": v0["marginal"], "variance": {}, "edges": {}}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(variants), figsize=(5 * len(variants), 4), squeeze=False)
    for ax, v in zip(axes[0], variants):
        n = VARIANTS[v][3]
        chains = [("off", spec_of(v, "ddim", n))] + [(r, on_spec(v, r, "ddim", n, best, v0)) for r in rules]
        for name, spec in chains:
            den, solver, grid = spec.build(run.denoiser, run.caps)
            traj = sample_trajectory(den, params, solver, grid, x_T, cond)
            var = np.asarray(jnp.mean(jnp.var(traj.reshape(n, num, -1), axis=2, ddof=1), axis=1))
            times = np.asarray(grid[1:])
            ab = np.asarray(sched.alpha_bar(grid[1:]))
            predicted = ab * v0["marginal"] + 1 - ab
            result["variance"][f"{v}/ddim{n}/{name}"] = {
                "t": times.tolist(), "variance": var.tolist(), "predicted": predicted.tolist(),
                "mean_abs_gap": float(np.mean(np.abs(var[:-1] - predicted[:-1])))}
            ax.plot(times * 1000, var, "o-" if name == "off" else "s--", label=f"sampler, TS {name}")
            if name != "off":
                result["edges"][f"{v}/{name}"] = edge_shares(run, params, spec, x_T, cond)
        ax.plot(times * 1000, predicted, "k:", label="forward process")
        ax.set_xlabel("grid time (training steps)")
        ax.set_ylabel("mean per-sample variance of x_t")
        ax.set_title(f"DDIM {n} steps, {v}")
        ax.invert_xaxis()
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "time_shift_variance.png", dpi=120)
    plt.close(fig)
    return result


def markdown(result: dict) -> str:
    m, variants, rules = result["machine"], result["variants"], result["rules"]
    v0 = result["data_var"]["marginal"]
    lines = [
        "# Time-shift sampling (TS-DPM) on the digits model",
        "",
        f"`{result['command']}` — {m['cpu']}, {m['cores']} cores, {m['backend']}, jax {m['jax']}, {m['date']}.",
        f"Model: `{result['workdir']}` checkpoint {result['ckpt']} (the default digits config). Every cell: "
        f"{result['num']} class-balanced samples, FD-digits against the 360 held-out digits (the floor of real "
        "digits at 1,000 samples is 2.0). Cutoffs are the authors' 0-based step index.",
        "",
        "Variants: **query** (the paper's algorithm, DDIM `uniform` grid), **destination** (the authors' released "
        "DDIM/PNDM form, same grid), **released** (destination on the released samplers' own `tsdpm` grid: the "
        "authors' S = 5, 10, 20, 50 run 4, 9, 19, 49 steps). Rules: **authors** (variance against "
        f"1 - alpha_bar), **marginal** (against V0 alpha_bar + 1 - alpha_bar, V0 = {v0:.4f}, the training digits' "
        "mean per-sample variance, ddof 1).",
    ]
    for v in variants:
        for r in rules:
            lines += ["", f"## Calibration, {v}, {r} rule (seed 100, {VARIANTS[v][3]} steps)", "",
                      "| solver | FD, TS off | best window:cutoff | FD, TS on | all settings (FD) |",
                      "|---|---|---|---|---|"]
            for s, b in result["calibration"][v][r].items():
                grid = ", ".join(f"{k}: {x:.2f}" for k, x in b["grid"].items())
                lines.append(f"| {s} | {b['fd_off']:.2f} | {b['window']}:{b['cutoff']} | {b['fd_on']:.2f} | {grid} |")
    for v in variants:
        steps = VARIANTS[v][2]
        seeds = ", ".join(map(str, SEEDS))
        lines += ["", f"## FD-digits, {v}: mean ± std over seeds {seeds} (TS at the calibrated setting)", "",
                  "| solver | TS | " + " | ".join(f"{n} steps" for n in steps) + " |",
                  "|---|---|" + "---|" * len(steps)]
        for s in SOLVERS:
            for name in ("off", *rules):
                cells = []
                for n in steps:
                    x = np.asarray(result["table"][f"{v}/{s}/{n}"][name])
                    cells.append(f"{x.mean():.2f} ± {x.std(ddof=1):.2f}")
                lines.append(f"| {s} | {name} | " + " | ".join(cells) + " |")
        lines += ["", f"Relative change of the mean FD with TS, {v} (negative = better):", "",
                  "| solver, rule | " + " | ".join(f"{n} steps" for n in steps) + " |", "|---|" + "---|" * len(steps)]
        for s in SOLVERS:
            for r in rules:
                lines.append(f"| {s}, {r} | " + " | ".join(
                    f"{100 * result['table'][f'{v}/{s}/{n}'][f'{r}_relative_change']:+.1f}%" for n in steps) + " |")
    lines += ["", f"## Wall-time overhead of the shift ({rules[0]} rule; batch 250, warm, median of 5 interleaved "
              "runs)",
              "", "| variant | solver | steps | off (s) | on (s) | on / off |", "|---|---|---|---|---|---|"]
    for k, x in result["overhead"].items():
        v, s, n = k.split("/")
        lines.append(f"| {v} | {s} | {n} | {x['off_s']:.3f} | {x['on_s']:.3f} | {x['ratio']:.3f} |")
    d = result["diagnostic"]
    lines += ["", "## Exposure-bias diagnostic", "",
              "![variance along the chain](time_shift_variance.png)", "",
              f"Mean per-sample variance of the training digits (ddof 1): {d['data_variance']:.4f}. "
              "Mean |sampler variance - forward-process variance| over the DDIM chain (final step excluded):", "",
              "| chain | TS off | " + " | ".join(f"TS on, {r}" for r in rules) + " |",
              "|---|---|" + "---|" * len(rules)]
    for v in variants:
        n = VARIANTS[v][3]
        lines.append(f"| {v}, DDIM {n} steps | " + " | ".join(
            f"{d['variance'][f'{v}/ddim{n}/{name}']['mean_abs_gap']:.4f}" for name in ("off", *rules)) + " |")
    lines += ["", "## Where the rule's choices land (DDIM at the calibrated setting)", "",
              "Per shifted step: the window's centre (a training step) and the shares of samples whose chosen time "
              "is the window's top edge / bottom edge / inside it, and the mean offset from the centre in steps.", "",
              "| variant, rule | " + "shifted steps: centre top/bottom/inside % (mean offset) |", "|---|---|"]
    for key, rows in d["edges"].items():
        cells = "; ".join(f"{e['n']}: {100 * e['top']:.0f}/{100 * e['bottom']:.0f}/{100 * e['inside']:.0f} "
                          f"({e['mean_offset']:+.1f})" for e in rows) or "none above the cutoff"
        lines.append(f"| {key.replace('/', ', ')} | {cells} |")
    lines += ["", "## Verdict", "", "VERDICT", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="runs/digits")
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--rules", default=",".join(RULES), help=f"comma list of {', '.join(RULES)}")
    args = ap.parse_args()
    variants, rules = args.variants.split(","), args.rules.split(",")
    if set(variants) - set(VARIANTS) or set(rules) - set(RULES) or not variants or not rules:
        ap.error(f"--variants takes {', '.join(VARIANTS)} and --rules {', '.join(RULES)}, comma-separated")
    run = load_run(args.workdir)
    ckpt = run.select("latest")[0]
    cache = pathlib.Path(args.workdir) / "eval_time_shift"
    t0 = time.time()
    from diffusion.data.digits import load_digits

    x0, _ = load_digits("train", run.info.image_shape[0])
    v0 = {"authors": 0.0, "marginal": round(data_variance(x0), 4)}
    best = calibrate(run, ckpt, cache, args.num, variants, rules, v0)
    records = report_cells(run, ckpt, cache, args.num, best, variants, rules, v0)
    params = run.params(ckpt)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = "".join(f" --{k} {getattr(args, k)}" for k in ("variants", "rules")
                    if getattr(args, k) != ap.get_default(k))
    result = {
        "command": f"python -m scripts.time_shift_results --workdir {args.workdir} --num {args.num}{extra}",
        "workdir": args.workdir, "ckpt": ckpt, "num": args.num, "machine": machine(),
        "variants": variants, "rules": rules, "data_var": v0,
        "calibration": best, "table": summarize(records, best, variants, rules, v0),
        "overhead": overhead(run, params, best, variants, rules[0], v0),
        "diagnostic": diagnostics(run, params, best, args.num, out, variants, rules, v0),
        "wall_s": time.time() - t0,
    }
    files.write_text(out / "time_shift.json", json.dumps(result, indent=1) + "\n")
    md = out / "time_shift.md"
    write_keeping_verdict(md, markdown(result))
    print(f"wrote {md} and {out / 'time_shift.json'} in {result['wall_s']:.0f}s")


if __name__ == "__main__":
    main()
