r"""Attention-map reuse on the 16x16 digits model and feature caching at DeepCache's DDPM
setting on the digits model: PSNR / FD-digits against a DDIM reference without them,
measured latency, and fewer-step DDIM at equal latency. Writes
docs/results/reuse_and_caching.{md,json} and a plot.

    python -m scripts.reuse_and_caching_results --workdir runs/digits16 --cache_workdir runs/digits \
        [--num 256] [--steps 20[,50]] [--cache_steps 100]

For each reference DDIM sampler of N steps (fixed noises, seed 0):
1. cost: XLA FLOPs of one network call in each mode (full, attention reuse, feature
   retrieve per branch), the attention share, the wall time of one call per mode, and
   the bytes the caches take;
2. a block of K = N/4 reuse steps slid from early to late: PSNR and FD-digits;
3. HURRY and PHAST (searched on separate calibration noises) at K = N/4 and N/2;
4. feature caching at cache_branch -1 (the shallowest, the branch every result before
   issue 26 used): uniform N = 2, 3, 5 and non-uniform 1:3;
5. the two combined, and combined with the time shift;
6. DDIM with fewer steps; each method is compared with the fewer-step DDIM whose
   measured latency is closest (PSNR and FD against the same reference).
Only the first step count gets 3 (PHAST), non-uniform caching and 5. Then DeepCache's own
DDPM setting on ``--cache_workdir`` (its experiments/README.md: DDIM ``--cache_steps`` = 100
steps, quadratic time skip, uniform 1:5 at its branch 2), beside N = 2, 3 at branch 2 and
the shallowest branch -1, with fewer-step DDIM on the same grid. Latency: warm wall
time of ``sample()`` on the first 16 noises, median of 3 runs with all variants and the
reference interleaved, as a ratio to the reference. Sized to a 2-core CPU, where one
16x16 call at batch 256 takes ~4 s.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import flops_of, machine, time_interleaved, write_keeping_verdict
from diffusion.metrics.psnr import mean_psnr
from diffusion.contract import COMPUTE, Modes
from orchestration.workdir import files
from orchestration.workdir.phast_files import external_for
from orchestration.generation.phast_search import search_for_run
from orchestration.build.run_loader import load_run
from orchestration.generation.scoring import METRICS, scoring_for
from sampling.loop import sample
from sampling.spec import SamplerSpec, make_spec
from sampling.transforms import AttentionReuse

TIME_BATCH = 16  # latency is timed on the first 16 noises (a 16x16 call is ~2.5 GFLOP: compute-bound)
TIME_SHIFT = "20:300"  # DDIM's calibrated setting on the 8x8 model (docs/results/time_shift.md)


class Bench:
    """Samples the fixed noises with a spec; caches outputs; times against the reference.

    The run's ``orchestration.generation.scoring`` conditions the samples (a digits model's labels, a scenes
    model's held-out captions) and scores them (FD-digits or the scenes FD, and the
    accuracy); ``base`` holds knobs every spec gets (a text model's ``guidance``). PSNR is
    taken on images (a latent model's samples decoded); latency times ``sample()`` only."""

    def __init__(self, run, params, num: int, steps: int, base: dict | None = None):
        self.run, self.params, self.steps, self.base = run, params, steps, dict(base or {})
        self.scoring = scoring_for(run, num)
        self.fd_name, self.acc_name = METRICS[self.scoring.kind]
        k_noise, self.key = jax.random.split(jax.random.PRNGKey(0))
        self.x_T = jax.random.normal(k_noise, (num, *run.sample_shape))
        self.cond = {k: jnp.asarray(v) for k, v in self.scoring.conds.items()}
        if self.scoring.labels is not None:
            self.cond["label"] = jnp.asarray(self.scoring.labels)
        self.reference_spec = self.spec("ddim", steps)
        self.reference = self.images(self.reference_spec)
        self.timed = []

    def spec(self, solver: str, steps: int, **values) -> SamplerSpec:
        return make_spec(solver, steps, **{**self.base, **values})

    def fn(self, spec: SamplerSpec, reuse=None, batch: int | None = None):
        """A blocking call of ``sample()`` on the fixed noises (the first ``batch`` of them)."""
        den, solver, grid = spec.build(self.run.denoiser, self.run.caps, external_for(self.run.workdir, spec))
        if reuse is not None:
            den = AttentionReuse(den, jnp.asarray(reuse))
        x_T, cond = self.x_T[:batch], {k: v[:batch] for k, v in self.cond.items()}
        return lambda: jax.block_until_ready(sample(den, self.params, solver, grid, x_T, cond, self.key))

    def images(self, spec: SamplerSpec, reuse=None) -> np.ndarray:
        out = np.asarray(self.fn(spec, reuse)())
        return out if self.scoring.decode is None else self.scoring.decode(out)

    def metrics(self, images: np.ndarray) -> dict:
        scores = self.scoring.score(images, None)
        return {self.fd_name: scores[self.fd_name], self.acc_name: scores.get(self.acc_name)}

    def score(self, name: str, spec: SamplerSpec, reuse=None, timed: bool = True) -> dict:
        """PSNR, the FD and the accuracy now; latency later, in one interleaved round (:meth:`time_all`)."""
        images = self.images(spec, reuse)
        out = {"name": name, "spec": spec.tag(), "psnr_db": mean_psnr(images, self.reference), **self.metrics(images)}
        if timed:
            self.timed.append((out, self.fn(spec, reuse, TIME_BATCH)))
        print(f"  {name}: PSNR {out['psnr_db']:.2f} dB, FD {out[self.fd_name]:.3f}", flush=True)
        return out

    def time_all(self, repeats: int = 3) -> float:
        """Warm latency of every timed entry and the reference, interleaved: fills
        ``latency_ratio`` / ``speedup``; returns the reference's median seconds."""
        fns = {"reference": self.fn(self.reference_spec, batch=TIME_BATCH)}
        fns.update({str(i): fn for i, (_, fn) in enumerate(self.timed)})
        med = time_interleaved(fns, repeats)
        for i, (entry, _) in enumerate(self.timed):
            entry["latency_ratio"] = med[str(i)] / med["reference"]
            entry["speedup"] = 1.0 / entry["latency_ratio"]
        self.timed = []
        return med["reference"]


def cost_table(bench: Bench, batch: int = 16) -> dict:
    """FLOPs per image of one network call in each mode, attention share (the digits UNet
    only: it is measured by dropping the attention blocks), cache bytes."""
    run, params = bench.run, bench.params
    den = run.denoiser
    x = jnp.zeros((batch, *run.sample_shape))
    cond = {k: v[:batch] for k, v in bench.cond.items()}
    one = {k: v[:1] for k, v in cond.items()}
    t = jnp.full((batch,), 0.5)

    def stored(modes: Modes) -> Modes:  # the mode that writes what ``modes`` reads
        return Modes("store" if modes.attention != "compute" else "compute",
                     "store" if modes.features != "compute" else "compute", modes.feature_branch)

    def flops(modes: Modes = COMPUTE):
        cache = den.init_cache(params, x, cond, modes=stored(modes))
        fn = lambda p, c: den(p, x, t, cond, cache=c, modes=modes)[0]  # noqa: E731
        return flops_of(jax.jit(fn).lower(params, cache)) / batch

    def timed_call(modes: Modes = COMPUTE):
        xb, cb, tb = jnp.zeros((TIME_BATCH, *run.sample_shape)), {k: v[:TIME_BATCH] for k, v in bench.cond.items()}, \
            jnp.full((TIME_BATCH,), 0.5)
        cache = den.init_cache(params, xb, cb, modes=stored(modes))
        fn = jax.jit(lambda p, c: den(p, xb, tb, cb, cache=c, modes=modes)[0])
        return lambda: jax.block_until_ready(fn(params, cache))

    full = flops()
    wall = time_interleaved({"full": timed_call(), "attention_reuse": timed_call(Modes(attention="reuse")),
                             **{f"retrieve_branch{b - 1}": timed_call(Modes(features="retrieve", feature_branch=b))
                                for b in (0, 1)}}, repeats=5)
    out = {"full_gflops": full / 1e9, "attention_reuse_gflops": flops(Modes(attention="reuse")) / 1e9,
           "call_seconds": wall}
    out["attention_reuse_saves"] = 1 - out["attention_reuse_gflops"] * 1e9 / full
    out["attention_share"] = None
    if hasattr(run.denoiser.module, "attn_resolutions"):
        no_attn = run.denoiser.module.clone(attn_resolutions=())
        p_no = no_attn.init(jax.random.PRNGKey(0), x[:1], t[:1], label=cond["label"][:1])["params"]
        from diffusion.nn.denoiser import Denoiser

        d_no = Denoiser(no_attn, den.schedule, den.pred_type)
        attn_free = flops_of(jax.jit(lambda p: d_no(p, x, t, cond)[0]).lower(p_no)) / batch
        out["attention_share"] = 1 - attn_free / full
    out["feature_retrieve_gflops"] = {}  # by cache_branch (DeepCache's numbering: feature_branch - 1)
    for b in range(run.caps.feature_branches):
        out["feature_retrieve_gflops"][b - 1] = flops(Modes(features="retrieve", feature_branch=b)) / 1e9
    maps = den.init_cache(params, x[:1], one, modes=Modes(attention="store"))
    out["attention_cache_bytes_per_image"] = int(sum(leaf.nbytes for leaf in jax.tree.leaves(maps)))
    out["feature_cache_bytes_per_image"] = {
        b - 1: int(sum(leaf.nbytes for leaf in jax.tree.leaves(
            den.init_cache(params, x[:1], one, modes=Modes(features="store", feature_branch=b)))))
        for b in range(run.denoiser.module.num_branches)}
    return out


def fewer_steps(bench: Bench, steps: int) -> list[dict]:
    """DDIM at fewer steps: the latency-matched baselines."""
    return [bench.score(f"ddim {m} steps", bench.spec("ddim", m))
            for m in range(max(2, steps // 5), steps, max(3, steps // 6))]


def matched(entry: dict, baselines: list[dict], fd_name: str = "fd_digits") -> dict:
    """The fewer-step DDIM whose measured latency is closest to ``entry``'s."""
    best = min(baselines, key=lambda b: abs(b["latency_ratio"] - entry["latency_ratio"]))
    return {"baseline": best["name"], "baseline_latency_ratio": best["latency_ratio"],
            "baseline_psnr_db": best["psnr_db"], f"baseline_{fd_name}": best[fd_name],
            "psnr_gain_db": entry["psnr_db"] - best["psnr_db"]}


def deepcache_experiments(bench: Bench) -> dict:
    """Feature caching at DeepCache's DDPM setting (its branch 2, 1:5, DDIM on the quadratic
    grid) and beside it, against the same reference and equal-latency fewer-step DDIM."""
    steps = bench.steps
    print(f"== DeepCache's setting: DDIM {steps} steps, quadratic grid", flush=True)
    result = {"steps": steps, **{f"reference_{k}": v for k, v in bench.metrics(bench.reference).items()}}
    result["fewer_steps"] = fewer_steps(bench, steps)
    result["feature_cache"] = [
        bench.score(f"cache {text} branch {branch}" + (" (DeepCache's DDPM setting)" if (text, branch) == (
            "uniform:5", 2) else ""), bench.spec("ddim", steps, feature_cache=text, cache_branch=branch))
        for branch in (2, -1) for text in ("uniform:5", "uniform:3", "uniform:2")]
    result["reference_seconds"] = bench.time_all()
    for e in result["feature_cache"]:
        e.update(matched(e, result["fewer_steps"], bench.fd_name))
    return result


def experiments(bench: Bench, phast_evals: int, full: bool) -> dict:
    """One reference of ``steps`` DDIM steps: 5 block positions, HURRY at K = N/4 and N/2,
    PHAST at both K (``full``), caching at branch 0 (uniform 2/3/5, plus non-uniform and
    the combinations when ``full``). Sized to the CPU: a 16x16 call at batch 256 takes ~4 s."""
    run, params, steps = bench.run, bench.params, bench.steps
    print(f"== DDIM {steps} steps", flush=True)
    result = {"steps": steps, **{f"reference_{k}": v for k, v in bench.metrics(bench.reference).items()}}
    k = steps // 4
    result["sliding_block"] = [
        {**bench.score(f"block K={k} from step {s}", bench.spec("ddim", steps, attention_reuse=f"block:{k},{s}"),
                       timed=False), "start": s}
        for s in range(1, steps - k + 1, max(1, (steps - k) // 4))]
    result["fewer_steps"] = fewer_steps(bench, steps)
    result["reuse"] = []
    for kk in (steps // 4, steps // 2):
        result["reuse"].append(bench.score(f"HURRY K={kk}", bench.spec("ddim", steps, attention_reuse=f"hurry:{kk}")))
        if not full:
            continue
        schedule, _, history = search_for_run(run, params, bench.spec("ddim", steps), kk, max_evals=phast_evals,
                                              log=None)
        phast = bench.score(f"PHAST K={kk}", bench.spec("ddim", steps), reuse=schedule)
        phast.update(reuse_steps=np.flatnonzero(schedule).tolist(), search_evaluations=len(history))
        result["reuse"].append(phast)
    result["feature_cache"] = []
    caches = ["uniform:2", "uniform:3", "uniform:5"] + ([f"nonuniform:3,{steps // 2}"] if full else [])
    for branch in (-1,):
        for text in caches:
            result["feature_cache"].append(bench.score(
                f"cache {text} branch {branch}", bench.spec("ddim", steps, feature_cache=text, cache_branch=branch)))
    half = f"hurry:{steps // 2}"
    combos = [("HURRY K=N/2 + cache uniform:2", bench.spec("ddim", steps, attention_reuse=half,
                                                           feature_cache="uniform:2", cache_branch=-1)),
              ("HURRY K=N/2 + cache uniform:2 + TS", bench.spec("ddim", steps, attention_reuse=half,
                                                                feature_cache="uniform:2", cache_branch=-1,
                                                                time_shift=TIME_SHIFT))
              ] if full else []
    result["combined"] = [bench.score(name, spec) for name, spec in combos]
    print("  timing ...", flush=True)
    result["reference_seconds"] = bench.time_all()
    for group in ("reuse", "feature_cache", "combined"):
        for e in result[group]:
            e.update(matched(e, result["fewer_steps"], bench.fd_name))
    return result


def plot(results: list[dict], out: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        blocks = r["sliding_block"]
        axes[0].plot([b["start"] for b in blocks], [b["psnr_db"] for b in blocks], "o-",
                     label=f"DDIM {r['steps']}, K={r['steps'] // 4}")
        ax = axes[1]
        fs = r["fewer_steps"]
        ax.plot([f["latency_ratio"] for f in fs], [f["psnr_db"] for f in fs], "k.-",
                label=f"fewer-step DDIM ({r['steps']})" if r is results[0] else None)
        for group, marker in (("reuse", "s"), ("feature_cache", "^"), ("combined", "D")):
            ax.scatter([e["latency_ratio"] for e in r[group]], [e["psnr_db"] for e in r[group]], marker=marker,
                       label=f"{group} ({r['steps']})")
    axes[0].set_xlabel("first step of the reuse block")
    axes[0].set_ylabel("PSNR vs no-reuse reference (dB)")
    axes[0].legend(fontsize=8)
    axes[1].set_xlabel("latency / reference latency")
    axes[1].set_ylabel("PSNR vs reference (dB)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "reuse_and_caching.png", dpi=120)
    plt.close(fig)


def markdown(result: dict) -> str:
    m, c = result["machine"], result["cost"]
    lines = [
        "# Attention-map reuse and feature caching on the 16x16 digits model", "",
        f"`{result['command']}` — {m['cpu']}, {m['cores']} cores, {m['backend']}, jax {m['jax']}, {m['date']}.",
        f"Model: `{result['workdir']}` checkpoint {result['ckpt']} (configs/digits16.py). {result['num']} fixed "
        "noises (seed 0), class-balanced labels; references: DDIM without reuse on the same noises. FD-digits of "
        f"{result['num']} samples is biased upward against the 1,000-sample figures elsewhere; compare within "
        "this page. Latency: `sample()` wall time on 16 of the noises, median of 3, all variants interleaved with the reference.", "",
        "## Cost per network call (XLA cost analysis, per image)", "",
        f"* full call: {c['full_gflops'] * 1e3:.2f} MFLOP; attention blocks are {100 * c['attention_share']:.1f}% of it",
        f"* attention-reuse call: {c['attention_reuse_gflops'] * 1e3:.2f} MFLOP "
        f"(saves {100 * c['attention_reuse_saves']:.1f}%: query/key projections, q k^T, softmax)",
        "* feature-retrieve call by cache_branch (DeepCache's numbering): " + ", ".join(
            f"{b}: {v * 1e3:.2f} MFLOP ({v / c['full_gflops']:.2f}x)" for b, v in c["feature_retrieve_gflops"].items()),
        f"* wall time of one call, batch {TIME_BATCH} (median of 5, interleaved): " + ", ".join(
            f"{k} {1e3 * v:.1f} ms ({v / c['call_seconds']['full']:.2f}x)" for k, v in c["call_seconds"].items()),
        f"* cache memory per image: attention maps {c['attention_cache_bytes_per_image'] / 2**20:.2f} MiB; "
        "features by cache_branch " + ", ".join(
            f"{b}: {v / 1024:.1f} KiB" for b, v in c["feature_cache_bytes_per_image"].items()),
        "",
    ]
    for r in result["runs"]:
        n = r["steps"]
        lines += [f"## DDIM {n} steps (reference FD-digits {r['reference_fd_digits']:.3f}, "
                  f"class accuracy {r['reference_class_accuracy']:.3f})", "",
                  f"### A block of K = {n // 4} reuse steps slid from early to late", "",
                  "| first reuse step | PSNR (dB) | FD-digits |", "|---|---|---|"]
        lines += [f"| {b['start']} | {b['psnr_db']:.2f} | {b['fd_digits']:.3f} |" for b in r["sliding_block"]]
        lines += ["", "### Fewer-step DDIM (the equal-latency baselines)", "",
                  "| sampler | latency ratio | PSNR (dB) | FD-digits |", "|---|---|---|---|"]
        lines += [f"| {f['name']} | {f['latency_ratio']:.3f} | {f['psnr_db']:.2f} | {f['fd_digits']:.3f} |"
                  for f in r["fewer_steps"]]
        for title, key in (("Attention reuse: HURRY and PHAST", "reuse"), ("Feature caching", "feature_cache"),
                           ("Combined", "combined")):
            if not r[key]:
                continue
            lines += ["", f"### {title}", "",
                      "| method | speed-up | PSNR (dB) | FD-digits | equal-latency DDIM | its PSNR | its FD | PSNR gain (dB) |",
                      "|---|---|---|---|---|---|---|---|"]
            for e in r[key]:
                extra = f" (steps {e['reuse_steps']})" if "reuse_steps" in e else ""
                lines.append(f"| {e['name']}{extra} | {e['speedup']:.2f}x | {e['psnr_db']:.2f} | {e['fd_digits']:.3f} | "
                             f"{e['baseline']} ({e['baseline_latency_ratio']:.2f}) | {e['baseline_psnr_db']:.2f} | "
                             f"{e['baseline_fd_digits']:.3f} | {e['psnr_gain_db']:+.2f} |")
        lines.append("")
    d = result["deepcache"]
    lines += [f"## Feature caching at DeepCache's DDPM setting: `{d['workdir']}` checkpoint {d['ckpt']}, DDIM "
              f"{d['steps']} steps on the quadratic grid (reference FD-digits {d['reference_fd_digits']:.3f})", "",
              "DeepCache's experiments/README.md runs DDIM 100 steps, eta 0, quadratic skip, uniform 1:5 at its "
              "branch 2; `cache_branch` is its numbering. Retrieve-call cost on this model: " + ", ".join(
                  f"branch {b}: {v / d['cost']['full_gflops']:.2f}x" for b, v in
                  d["cost"]["feature_retrieve_gflops"].items()) + " of a full call.", "",
              "| method | speed-up | PSNR (dB) | FD-digits | equal-latency DDIM | its PSNR | its FD | PSNR gain (dB) |",
              "|---|---|---|---|---|---|---|---|"]
    for e in d["feature_cache"]:
        lines.append(f"| {e['name']} | {e['speedup']:.2f}x | {e['psnr_db']:.2f} | {e['fd_digits']:.3f} | "
                     f"{e['baseline']} ({e['baseline_latency_ratio']:.2f}) | {e['baseline_psnr_db']:.2f} | "
                     f"{e['baseline_fd_digits']:.3f} | {e['psnr_gain_db']:+.2f} |")
    lines += ["", "![PSNR vs reuse position and vs latency](reuse_and_caching.png)", "", "## Verdict", "", "VERDICT", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default="runs/digits16")
    ap.add_argument("--num", type=int, default=256)
    ap.add_argument("--steps", default="20")
    ap.add_argument("--phast_evals", type=int, default=12)
    ap.add_argument("--cache_workdir", default="runs/digits", help="the model of DeepCache's DDPM setting")
    ap.add_argument("--cache_steps", type=int, default=100, help="DeepCache's DDPM steps (quadratic grid)")
    ap.add_argument("--out", default="docs/results")
    args = ap.parse_args()
    run = load_run(args.workdir)
    ckpt = run.select("latest")[0]
    params = run.params(ckpt)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    result = {"command": f"python -m scripts.reuse_and_caching_results --workdir {args.workdir} --num {args.num}"
                         f" --steps {args.steps} --phast_evals {args.phast_evals} --cache_workdir "
                         f"{args.cache_workdir} --cache_steps {args.cache_steps}",
              "workdir": args.workdir, "ckpt": ckpt, "num": args.num, "machine": machine()}
    result["runs"] = []
    for i, n in enumerate(args.steps.split(",")):
        bench = Bench(run, params, args.num, int(n))
        if i == 0:
            result["cost"] = cost_table(bench)
        result["runs"].append(experiments(bench, args.phast_evals, full=i == 0))
    cache_run = load_run(args.cache_workdir)
    cache_ckpt = cache_run.select("latest")[0]
    cache_bench = Bench(cache_run, cache_run.params(cache_ckpt), args.num, args.cache_steps, base={"grid": "quadratic"})
    result["deepcache"] = {"workdir": args.cache_workdir, "ckpt": cache_ckpt, "cost": cost_table(cache_bench),
                           **deepcache_experiments(cache_bench)}
    result["wall_s"] = time.time() - t0
    files.write_text(out / "reuse_and_caching.json", json.dumps(result, indent=1, default=float) + "\n")
    plot(result["runs"], out)
    md = out / "reuse_and_caching.md"
    write_keeping_verdict(md, markdown(result))
    print(f"wrote {md} in {result['wall_s']:.0f}s")


if __name__ == "__main__":
    main()
