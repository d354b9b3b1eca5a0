r"""The digit-scenes text-to-image model (issue 11): caption accuracy and scenes FD, sample
grids, and the speed-ups re-measured where the digits model sat at its metric floor.
Writes docs/results/scenes.{md,json} and scenes_*.png.

    python -m scripts.scenes_results --teacher runs/scenes --student runs/scenes_progressive [--num 400] [--reuse_num 128]

1. The teacher at its sampler (DDIM 20 steps, trailing) at guidance 1, 3 and 5 on the
   held-out captions, and at guidance 3 on the novel caption combinations; grids of both.
2. Time shift at 10 steps (DDIM and DPM-Solver++(2M), the uniform grid of the digits
   study, guidance 3; windows 20 and 80, cutoff 300 as calibrated on digits, the authors'
   0-based index), seeds 0, 1: the paper's query form and the authors' released
   destination form, each with the authors' rule (variance against ``1 - alpha_bar``) and
   with the forward-marginal rule (``alpha_bar V0 + 1 - alpha_bar``, ``V0`` the training
   latents' mean per-sample variance, measured), the latter also with the guard
   ``min_snr = 1`` (which should equal "off": unit-variance latents carry no noise level);
   and where the rule's choices land (window edge shares along a DDIM chain).
3. Attention reuse (HURRY, PHAST) and feature caching against equal-latency fewer-step
   DDIM (``scripts/reuse_and_caching_results.py``'s bench on 128 fixed noises and
   held-out captions, guidance 3, reference DDIM 20 steps).
4. The progressive 4-step student against the teacher at 4, 8 and 32 steps (guidance 1:
   the student was distilled from the unguided teacher) and the teacher's own sampler.

Sampling cells go through ``launch.evaluate``'s machinery into
``<workdir>/eval_results/report.json``, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

from benchmarks.common import machine, write_keeping_verdict
from orchestration.workdir import files
from orchestration.generation.evaluation import run_cells
from orchestration.generation.scoring import caption_tag
from orchestration.build.run_loader import load_run
from orchestration.generation.sweep import Cell
from sampling.spec import make_spec

GUIDANCES = (1, 3, 5)
TS_SOLVERS = ("ddim", "dpmpp2m")
TS_MODES = ("query", "destination")
TS_SETTINGS = ("20:300", "80:300")  # window:cutoff, the authors' rule
TS_MARGINAL = "20:300"  # the marginal rule's setting
TS_EDGE_SAMPLES = 128  # the chain whose time-shift choices are tallied
SEEDS = (0, 1)


def cells_of(specs, seeds=(0,)):
    return [Cell(s, seed) for s in specs for seed in seeds]


def evaluate(run, specs, num, captions="heldout", seeds=(0,)) -> list[dict]:
    """The records of ``specs`` (x ``seeds``) on ``captions``, run or read back."""
    ckpt = run.steps[-1]
    cells = cells_of(specs, seeds)
    records = run_cells(run, [ckpt], cells, run.workdir / "eval_results", num, captions=captions)
    wanted = {c.key(ckpt, num) + caption_tag(captions) for c in cells}
    return [r for r in records if r["id"] in wanted]


def summary(records: list[dict]) -> dict:
    """Mean (and spread) over seeds of caption accuracy and scenes FD."""
    acc = np.array([r["caption_accuracy"] for r in records])
    fd = np.array([r["scenes_fd"] for r in records])
    return {"caption_accuracy": float(acc.mean()), "scenes_fd": float(fd.mean()),
            "scenes_fd_std": float(fd.std(ddof=1)) if len(fd) > 1 else None, "seeds": len(records),
            "sample_seconds_incl_compile": float(np.mean([r["sample_seconds_incl_compile"] for r in records]))}


def training(workdir: str) -> dict:
    """A run's length and its time in training steps: the sum over logged windows of
    ``steps / steps_per_sec`` (compilation of the first window included; checkpoints,
    sample grids and start-up excluded)."""
    from diffusion.train.writer import read_metrics
    from orchestration.workdir.directory import read_config

    config = read_config(pathlib.Path(workdir) / "config.json")
    rows = [m for m in read_metrics(workdir) if "steps_per_sec" in m]
    seconds, last = 0.0, 0
    for m in rows:
        seconds += (m["step"] - last) / m["steps_per_sec"]
        last = m["step"]
    out = {"steps": last, "batch_size": config["train"]["batch_size"], "step_seconds": seconds,
           "final_loss": rows[-1]["loss"] if rows else None}
    vae_eval = pathlib.Path(workdir) / "vae_eval.json"
    if vae_eval.is_file():
        out["psnr_heldout"] = json.loads(vae_eval.read_text())["psnr_heldout"]
    return out


def real_scenes(num) -> dict:
    """The metric on ``num`` real held-out scenes with their own captions: the floor at this
    sample count (the FD of a finite sample is biased upward)."""
    from diffusion.data.scenes import ScenesSource
    from diffusion.metrics.caption_accuracy import score_scenes

    src = ScenesSource("heldout", num)
    items = [src[i] for i in range(num)]
    s = score_scenes(np.stack([it["image"] for it in items]), [str(it["caption"]) for it in items])
    return {"caption_accuracy": s["caption_accuracy"], "scenes_fd": s["scenes_fd"], "scenes_fd_std": None}


def teacher_section(run, num) -> dict:
    out = {"real": real_scenes(num)}
    for w in GUIDANCES:
        out[f"heldout_w{w}"] = summary(evaluate(run, [make_spec("ddim", 20, guidance=w)], num))
    out["novel_w3"] = summary(evaluate(run, [make_spec("ddim", 20, guidance=3)], num, captions="novel"))
    return out


def latent_data_variance(run, num: int = 1024) -> float:
    """``V0`` of the diffusion model's data: the mean per-sample variance (``ddof = 1``) of the
    scaled latents of the first ``num`` training scenes (the VAE posterior means, as training
    encodes them)."""
    import jax
    import jax.numpy as jnp

    from diffusion.nn.vae import AutoencoderKL, latents_from_images
    from orchestration.build.builders import build_source
    from orchestration.build.vae import images_of
    from orchestration.workdir.components import load_from
    from scripts.time_shift_results import data_variance

    comp = load_from(run.workdir, "vae", ("vae",))
    vae, params = AutoencoderKL(comp.config), jax.tree.map(jnp.asarray, comp.params)
    train, _ = build_source(run.config, "train")
    images = images_of(train, num)
    encode = jax.jit(lambda x: latents_from_images(vae, params, x))
    return data_variance(np.concatenate([np.asarray(encode(images[i:i + 64])) for i in range(0, len(images), 64)]))


def time_shift_rows(v0: float) -> dict:
    """Row label -> sampler keys of the time shift."""
    from scripts.time_shift_results import time_shift_values

    rows = {"off": time_shift_values("query", None)}
    for mode in TS_MODES:
        rows.update({f"{mode} {ts}": time_shift_values(mode, ts) for ts in TS_SETTINGS})
        rows[f"{mode} {TS_MARGINAL}, marginal"] = time_shift_values(mode, TS_MARGINAL, v0)
        rows[f"{mode} {TS_MARGINAL}, marginal, min_snr 1"] = time_shift_values(mode, TS_MARGINAL, v0, 1.0)
    return rows


def ts_spec(solver, values):
    return make_spec(solver, 10, "uniform", guidance=3, **values)  # the grid of the digits study


def time_shift_section(run, num) -> dict:
    import jax

    from orchestration.build.frozen import text_conds
    from orchestration.generation.scoring import split_captions
    from scripts.time_shift_results import edge_shares

    v0 = round(latent_data_variance(run), 4)
    rows = time_shift_rows(v0)
    out = {"data_variance": v0, "rows": list(rows), "cells": {}, "edges": {}}
    for solver in TS_SOLVERS:
        for label, values in rows.items():
            out["cells"][f"{solver}, {label}"] = summary(evaluate(run, [ts_spec(solver, values)], num, seeds=SEEDS))
    k = out["edge_samples"] = min(num, TS_EDGE_SAMPLES)
    cond = text_conds(run.prompt_encoder(), split_captions(run.config, "heldout", k))
    x_T = np.asarray(jax.random.normal(jax.random.PRNGKey(7), (k, *run.sample_shape)))
    params = run.params(run.steps[-1])
    for label, values in rows.items():
        if label != "off":
            out["edges"][label] = edge_shares(run, params, ts_spec("ddim", values), x_T, cond)
    return out


def distill_section(teacher, student, num) -> dict:
    out = {"student_4": summary(evaluate(student, [make_spec("ddim", 4)], num))}
    for n in (4, 8, 32):
        out[f"teacher_{n}"] = summary(evaluate(teacher, [make_spec("ddim", n)], num))
    out["teacher_20_w3"] = summary(evaluate(teacher, [make_spec("ddim", 20, guidance=3)], num))
    return out


def grids(run, out: pathlib.Path, n: int = 20) -> dict:
    """``scenes_heldout.png`` / ``scenes_novel.png``: the teacher's samples for the first
    ``n`` captions of each split (guidance 3, DDIM 20), 10 per row; returns the captions."""
    from diffusion.metrics.grid import save_grid
    from orchestration.generation.draw import draw
    from orchestration.generation.scoring import split_captions

    params = run.params(run.steps[-1])
    captions = {}
    for split in ("heldout", "novel"):
        prompts = split_captions(run.config, split, n)
        images, _ = draw(run, params, make_spec("ddim", 20, guidance=3), n, prompts=prompts)
        save_grid(images, out / f"scenes_{split}.png", nrow=10, scale=2)
        captions[split] = prompts
    return captions


def reuse_section(run, num) -> dict:
    from scripts.reuse_and_caching_results import Bench, cost_table, experiments

    bench = Bench(run, run.params(run.steps[-1]), num, 20, base={"guidance": 3})
    return {"cost": cost_table(bench), **experiments(bench, phast_evals=12, full=True)}


def time_shift_lines(ts: dict) -> list[str]:
    """The time-shift section of the page."""
    edges = ["| time shift | shifted steps: centre top/bottom/inside % (mean offset) |", "|---|---|"]
    for label, rows in ts["edges"].items():
        cells = "; ".join(f"{e['n']}: {100 * e['top']:.0f}/{100 * e['bottom']:.0f}/{100 * e['inside']:.0f} "
                          f"({e['mean_offset']:+.1f})" for e in rows)
        edges.append(f"| {label} | {cells or 'none above the cutoff'} |")
    return [
        "## Time shift at 10 steps (uniform grid as on digits, guidance 3; mean ± std over seeds 0, 1)", "",
        "Window:cutoff in training steps and the authors' 0-based step index; query: the paper's form, "
        "destination: the authors' released DDIM/PNDM form; the authors' rule compares a sample's variance with "
        f"1 - alpha_bar, the marginal rule with V0 alpha_bar + 1 - alpha_bar, V0 = {ts['data_variance']:.4f} "
        "(the training latents' mean per-sample variance, ddof 1).", "",
        "| solver, time shift | caption accuracy | scenes FD |", "|---|---|---|",
        *[_row(key, cell) for key, cell in ts["cells"].items()], "",
        f"Where the rule's choices land (DDIM, {ts['edge_samples']} held-out captions): per shifted step, the "
        "window's centre and the shares of samples at its top edge / bottom edge / inside it (mean offset in "
        "steps).", "", *edges, ""]


def _row(name: str, s: dict) -> str:
    spread = f" ± {s['scenes_fd_std']:.2f}" if s["scenes_fd_std"] is not None else ""
    return f"| {name} | {100 * s['caption_accuracy']:.1f}% | {s['scenes_fd']:.2f}{spread} |"


def markdown(r: dict) -> str:
    m = r["machine"]
    t, ts, d, ru = r["teacher"], r["time_shift"], r["distill"], r["reuse"]
    lines = [
        "# Digit scenes: the latent text-to-image job (issue 11)", "",
        f"`{r['command']}` — {m['cpu']}, {m['cores']} cores, {m['backend']}, jax {m['jax']}, {m['date']}.",
        f"Teacher `{r['teacher_workdir']}` (configs/scenes.py), student `{r['student_workdir']}` "
        "(configs/scenes_progressive.py). Every cell: "
        f"{r['num']} samples prompted with the captions of the held-out split (unseen glyphs) unless marked novel "
        "(held-out digit pairs); caption accuracy and the scenes FD of the scene parser "
        "([../scenes_metric.md](../scenes_metric.md): real held-out scenes score about 0.87 and 0.5, "
        "shuffled captions about 0.1).", "",
        "## The job (time in training steps, from each run's metrics.jsonl)", "",
        "| run | steps x batch | minutes | final loss | |", "|---|---|---|---|---|",
        *[f"| `{r['job'][k]['workdir']}` | {r['job'][k]['steps']} x {r['job'][k]['batch_size']} | "
          f"{r['job'][k]['step_seconds'] / 60:.1f} | {r['job'][k]['final_loss']:.4f} | "
          + (f"held-out PSNR {r['job'][k]['psnr_heldout']:.2f} dB" if "psnr_heldout" in r["job"][k] else "") + " |"
          for k in ("vae", "teacher", "student")], "",
        "## The teacher (DDIM 20 steps, trailing grid)", "",
        "| prompts, guidance | caption accuracy | scenes FD |", "|---|---|---|",
        _row(f"real held-out scenes ({r['num']}, the floor)", t["real"]),
        *[_row(f"held-out, w = {w}", t[f"heldout_w{w}"]) for w in GUIDANCES],
        _row("novel, w = 3", t["novel_w3"]), "",
        "Held-out captions, guidance 3 (row by row: the first 20 held-out captions):", "",
        "![held-out samples](scenes_heldout.png)", "",
        *[f"{i + 1}. {c}" for i, c in enumerate(r["captions"]["heldout"])], "",
        "Novel caption combinations, guidance 3:", "", "![novel samples](scenes_novel.png)", "",
        *[f"{i + 1}. {c}" for i, c in enumerate(r["captions"]["novel"])], "",
        *time_shift_lines(ts),
        "## Attention reuse and feature caching (DDIM 20 steps, guidance 3, reference: no reuse)", "",
        f"{ru['num']} fixed noises with the first held-out captions. Latency: `sample()` on 16 of them, median of 3, "
        "interleaved with the reference; PSNR on decoded images.", "",
        f"* full call: {ru['cost']['full_gflops'] * 1e3:.2f} MFLOP per image; attention reuse "
        f"{ru['cost']['attention_reuse_gflops'] * 1e3:.2f} MFLOP (saves {100 * ru['cost']['attention_reuse_saves']:.1f}%)",
        f"* reference: caption accuracy {ru['reference_caption_accuracy']:.3f}, scenes FD {ru['reference_scenes_fd']:.2f}",
        "", "| method | speed-up | PSNR (dB) | caption accuracy | scenes FD | equal-latency DDIM | its PSNR | its FD | "
        "PSNR gain (dB) |", "|---|---|---|---|---|---|---|---|---|"]
    for e in ru["reuse"] + ru["feature_cache"] + ru["combined"]:
        extra = f" (steps {e['reuse_steps']})" if "reuse_steps" in e else ""
        lines.append(f"| {e['name']}{extra} | {e['speedup']:.2f}x | {e['psnr_db']:.2f} | {e['caption_accuracy']:.3f} | "
                     f"{e['scenes_fd']:.2f} | {e['baseline']} ({e['baseline_latency_ratio']:.2f}) | "
                     f"{e['baseline_psnr_db']:.2f} | {e['baseline_scenes_fd']:.2f} | {e['psnr_gain_db']:+.2f} |")
    lines += ["", "Fewer-step DDIM:", "", "| sampler | latency ratio | PSNR (dB) | caption accuracy | scenes FD |",
              "|---|---|---|---|---|"]
    lines += [f"| {f['name']} | {f['latency_ratio']:.3f} | {f['psnr_db']:.2f} | {f['caption_accuracy']:.3f} | "
              f"{f['scenes_fd']:.2f} |" for f in ru["fewer_steps"]]
    lines += ["", "## Progressive distillation: the 4-step student", "",
              "| sampler | caption accuracy | scenes FD |", "|---|---|---|",
              _row("student, DDIM 4 steps (w = 1)", d["student_4"]),
              *[_row(f"teacher, DDIM {n} steps (w = 1)", d[f"teacher_{n}"]) for n in (4, 8, 32)],
              _row("teacher, DDIM 20 steps, w = 3", d["teacher_20_w3"]), "",
              "## Verdict", "", "VERDICT", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default="runs/scenes")
    ap.add_argument("--student", default="runs/scenes_progressive")
    ap.add_argument("--num", type=int, default=400)
    ap.add_argument("--reuse_num", type=int, default=128)
    ap.add_argument("--out", default="docs/results")
    args = ap.parse_args()
    if args.num < 2 or args.reuse_num < 2:
        ap.error(f"--num and --reuse_num must be >= 2 (an FD needs two samples), got {args.num} and {args.reuse_num}")
    teacher, student = load_run(args.teacher), load_run(args.student)
    vae = str(teacher.config.latent.vae)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    r = {"command": f"python -m scripts.scenes_results --teacher {args.teacher} --student {args.student} "
                    f"--num {args.num} --reuse_num {args.reuse_num}",
         "teacher_workdir": args.teacher, "student_workdir": args.student, "num": args.num, "machine": machine()}
    r["job"] = {k: {"workdir": w, **training(w)} for k, w in
                (("vae", vae), ("teacher", args.teacher), ("student", args.student))}
    r["teacher"] = teacher_section(teacher, args.num)
    r["captions"] = grids(teacher, out)
    r["time_shift"] = time_shift_section(teacher, args.num)
    r["distill"] = distill_section(teacher, student, args.num)
    r["reuse"] = {"num": args.reuse_num, **reuse_section(teacher, args.reuse_num)}
    r["wall_s"] = time.time() - t0
    files.write_text(out / "scenes.json", json.dumps(r, indent=1, default=float) + "\n")
    write_keeping_verdict(out / "scenes.md", markdown(r))
    print(f"wrote {out / 'scenes.md'} in {r['wall_s']:.0f}s")


if __name__ == "__main__":
    main()
