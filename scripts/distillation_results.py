r"""Distillation results on the digits teacher -> docs/results/distillation.{md,json}.

    bash scripts/distill_digits.sh            # the teacher and the students (resumable)
    python -m scripts.distillation_results [--num 1000] [--out docs/results]

FD-digits and class accuracy (``--num`` samples, class-balanced, seed 0) of:
* the teacher (runs/digits_v) with DDIM at 1, 2, 4, 8 steps (the baselines) and at 50
  and 256 steps (the references), with x0 clipped to [-1, 1] (the references' evaluation
  sampler, ``clip_x0=1``) and without; with CFG w = 2 at 1, 2, 4, 8 and 64 steps, clipped
  (for guided students; CFG doubles the batch, so its reference stops at 64 steps on a CPU);
* the progressive student at 8, 4, 2, 1 steps (the checkpoint that ends each round),
  clipped and unclipped, and the student distilled with the settings before issue 26
  (``:legacy``: Adam kept across rounds), unclipped as it was reported;
* the guided student (Meng et al.: w-conditioned, w ~ U[1, 5]) at w = 2 likewise, at 4
  steps over w = 1..5, and its ``:legacy`` run (w ~ U[1, 4], told the drawn w);
* guided distillation's p (one 8 -> 4 round each, 4 steps, w = 2 and 4): SnapFusion's
  CFG-aware mode (a w-free student under CFG) at p = 0, 0.1, 1 with w ~ U[1, 6] and at its
  paper's settings (p 0.1, w ~ U[2, 14]); Kairos' construction before issue 26 at p = 0,
  0.5, 1 (declared rows);
* the consistency student at 1, 2, 4, 8 steps on the ``lcm`` grid (LCM's times, on the
  training lattice) and on the trailing grid, its ``:legacy`` run (cosine learning rate) on
  the trailing grid as reported before, and the LCD student (LCM's guided teacher) at w = 2;
and each run's training cost (optimizer steps, wall time from its logged steps/s).
Evaluations are cached in each work directory's ``eval/report.json`` (``launch.evaluate``'s
store), so a re-run only computes what is missing.
"""

from __future__ import annotations

import argparse
import json
import pathlib

from benchmarks.common import machine, write_keeping_verdict
from diffusion.train.writer import read_metrics
from distill.progressive import students_steps
from orchestration.workdir import files
from orchestration.generation.evaluation import run_cells
from orchestration.build.run_loader import load_run
from orchestration.generation.sweep import parse_sweep

TEACHER = "runs/digits_v"
CLIP = ";clip_x0=1"  # Salimans & Ho's / Meng et al.'s evaluation DDIM (eval_clip_denoised=True)
SF_P = ("0.0", "0.1", "1.0")  # SnapFusion-mode p sweep (runs/digits_guided_sf_p<p>)
LEGACY_P = ("0.0", "0.5", "1.0")  # the p sweep before issue 26 (runs/digits_guided_p<p>)


def evaluate(workdir: str, ckpt: int | None, sweep: str, num: int) -> list[dict]:
    run = load_run(workdir)
    ckpt = run.steps[-1] if ckpt is None else ckpt
    cells = parse_sweep(sweep)
    records = run_cells(run, [ckpt], cells, pathlib.Path(workdir) / "eval", num, progress=True)
    keys = {c.key(ckpt, num) for c in cells}
    return [{**{k: r[k] for k in ("ckpt", "solver", "steps", "grid", "fd_digits", "class_accuracy")},
             "clip_x0": float(r.get("clip_x0") or 0.0),
             "guidance": None if r.get("guidance") is None else float(r["guidance"])}
            for r in records if r["id"] in keys]


def training_cost(workdir: str) -> dict:
    """Optimizer steps and the wall time of the steps (sum of log windows / steps per second;
    compilation, checkpoints and evaluations excluded)."""
    config = json.loads((pathlib.Path(workdir) / "config.json").read_text())
    logged = [r for r in read_metrics(workdir) if "steps_per_sec" in r]
    seconds, last = 0.0, 0
    for r in logged:
        seconds += (r["step"] - last) / r["steps_per_sec"]
        last = r["step"]
    return {"steps": last, "batch_size": config["train"]["batch_size"], "train_seconds": seconds}


def round_checkpoints(workdir: str) -> list[tuple[int, int]]:
    """``(student steps, checkpoint)`` for the last four rounds of a progressive-style run."""
    d = json.loads((pathlib.Path(workdir) / "config.json").read_text())["distill"]
    steps = students_steps(d["start_steps"], d["rounds"])
    return [(n, d["steps_per_round"] * (r + 1)) for r, n in enumerate(steps)][-4:]


def per_round(workdir: str, extra: str, num: int) -> list[dict]:
    """Each of the last four rounds' checkpoints at its own step count, DDIM + ``extra``."""
    return [r for steps, ck in round_checkpoints(workdir)
            for r in evaluate(workdir, ck, f"solver=ddim;steps={steps}{extra}", num)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--out", default="docs/results")
    args = ap.parse_args()
    n = args.num
    res = {"command": f"python -m scripts.distillation_results --num {n}", "machine": machine(), "num": n}
    res["teacher"] = evaluate(TEACHER, None, "solver=ddim;steps=1,2,4,8,50,256" + CLIP, n)
    res["teacher_unclipped"] = evaluate(TEACHER, None, "solver=ddim;steps=1,2,4,8,50,256", n)
    res["teacher_cfg"] = evaluate(TEACHER, None, "solver=ddim;steps=1,2,4,8,64;guidance=2" + CLIP, n)
    res["teacher_cfg_unclipped"] = evaluate(TEACHER, None, "solver=ddim;steps=1,2,4,8,64;guidance=2", n)
    res["progressive"] = per_round("runs/digits_progressive", CLIP, n)
    res["progressive_unclipped"] = per_round("runs/digits_progressive", "", n)
    res["progressive_legacy"] = per_round("runs/digits_progressive_legacy", "", n)
    res["guided"] = per_round("runs/digits_guided", ";guidance=2" + CLIP, n)
    res["guided_unclipped"] = per_round("runs/digits_guided", ";guidance=2", n)
    res["guided_legacy"] = per_round("runs/digits_guided_legacy", ";guidance=2", n)
    four = dict(round_checkpoints("runs/digits_guided"))[4]
    res["guided_w"] = evaluate("runs/digits_guided", four, "solver=ddim;steps=4;guidance=1,2,3,4,5" + CLIP, n)
    res["guided_sf_p"] = {p: evaluate(f"runs/digits_guided_sf_p{p}", None, "solver=ddim;steps=4;guidance=2,4" + CLIP, n)
                          for p in SF_P}
    res["guided_snapfusion"] = evaluate("runs/digits_guided_snapfusion", None,
                                        "solver=ddim;steps=4;guidance=2,4" + CLIP, n)
    res["guided_p_legacy"] = {p: evaluate(f"runs/digits_guided_p{p}", None, "solver=ddim;steps=4;guidance=2,4", n)
                              for p in LEGACY_P}
    res["consistency"] = evaluate("runs/digits_consistency", None, "solver=consistency;steps=1,2,4,8;grid=lcm", n)
    res["consistency_trailing"] = evaluate("runs/digits_consistency", None,
                                           "solver=consistency;steps=1,2,4,8;grid=trailing", n)
    res["consistency_legacy"] = evaluate("runs/digits_consistency_legacy", None,
                                         "solver=consistency;steps=1,2,4,8;grid=trailing", n)
    res["consistency_lcd"] = evaluate("runs/digits_consistency_lcd", None,
                                      "solver=consistency;steps=1,2,4,8;grid=lcm;guidance=2", n)
    res["cost"] = {w: training_cost(f"runs/{w}") for w in
                   ("digits_v", "digits_progressive", "digits_progressive_legacy", "digits_guided",
                    "digits_guided_legacy", "digits_consistency", "digits_consistency_legacy",
                    "digits_consistency_lcd", "digits_guided_sf_p0.1", "digits_guided_p1.0")}
    out = pathlib.Path(args.out)
    files.write_text(out / "distillation.json", json.dumps(res, indent=1) + "\n")
    write_keeping_verdict(out / "distillation.md", markdown(res))
    print(f"wrote {out / 'distillation.md'}")


def _row(label: str, r: dict, ref: float) -> str:
    return f"| {label} | {r['steps']} | {r['fd_digits']:.3f} | {r['class_accuracy']:.3f} | {r['fd_digits'] / ref:.2f}x |"


def _rows(res: dict, entries, ref: float) -> list[str]:
    return [_row(label, r, ref) for key, label in entries for r in sorted(res[key], key=lambda r: r["steps"])]


def _w_rows(label: str, rs: list[dict]) -> list[str]:
    return [f"| {label} | {r['guidance']:g} | {r['fd_digits']:.3f} | {r['class_accuracy']:.3f} |"
            for r in sorted(rs, key=lambda r: r["guidance"])]


def markdown(res: dict) -> str:
    m = res["machine"]
    t256 = next(r for r in res["teacher"] if r["steps"] == 256)["fd_digits"]
    lines = ["# Distillation on the digits teacher", "",
             f"`bash scripts/distill_digits.sh && {res['command']}` — {m['cpu']}, {m['cores']} cores, "
             f"{m['backend']}, jax {m['jax']}, {m['date']}.",
             f"Teacher: `runs/digits_v` (configs/digits_v.py: the 8x8 digits UNet with v-prediction, 2500 steps). "
             f"FD-digits and class accuracy of {res['num']} class-balanced samples (seed 0); the last column is FD "
             "relative to the teacher's 256-step DDIM with x0 clipped to [-1, 1]. "
             "Students use the references' choices (issue 26, docs/design/fidelity.md); rows marked "
             "*before issue 26* are the settings the page reported earlier, kept as declared variants.", "",
             "## FD-digits by sampling steps", "",
             "DDIM rows clip x0 to [-1, 1] at every step as Salimans & Ho's evaluation sampler does "
             "(`clip_x0=1`) unless marked unclipped. Consistency students sample with multistep "
             "consistency sampling on LCM's times (`grid=lcm`) unless marked trailing.", "",
             "| sampler | steps | FD-digits | class accuracy | FD / teacher-256 |", "|---|---|---|---|---|"]
    lines += _rows(res, (("teacher", "teacher, DDIM"), ("teacher_unclipped", "teacher, DDIM unclipped"),
                         ("progressive", "progressive student"),
                         ("progressive_unclipped", "progressive student, unclipped"),
                         ("progressive_legacy", "progressive student before issue 26 (Adam kept across rounds), "
                                                "unclipped"),
                         ("consistency", "consistency student (constant lr), lcm grid"),
                         ("consistency_trailing", "consistency student (constant lr), trailing grid"),
                         ("consistency_legacy", "consistency student before issue 26 (cosine lr), trailing grid")),
                   t256)
    tc = next(r for r in res["teacher_cfg"] if r["steps"] == 64)["fd_digits"]
    lines += ["", "## Guided (w = 2)", "",
              "FD relative to the teacher's 64-step DDIM with CFG w = 2, x0 clipped. The guided student is Meng "
              "et al.'s w-conditioned student (w ~ U[1, 5], their [0, 4] in our scale convention); the LCD student "
              "is consistency-distilled from the teacher under CFG (LCM's w ~ U[0, 3], scales 1-4).", "",
              "| sampler | steps | FD-digits | class accuracy | FD / teacher-CFG-64 |", "|---|---|---|---|---|"]
    lines += _rows(res, (("teacher_cfg", "teacher, DDIM + CFG w=2"),
                         ("teacher_cfg_unclipped", "teacher, DDIM + CFG w=2, unclipped"),
                         ("guided", "guided student, w=2"), ("guided_unclipped", "guided student, w=2, unclipped"),
                         ("guided_legacy", "guided student before issue 26 (w ~ U[1, 4], Adam kept), unclipped"),
                         ("consistency_lcd", "LCD student, w=2, lcm grid")), tc)
    lines += ["", "## Guided distillation: FD vs class accuracy over w and p (4 steps)", "",
              "SnapFusion's CFG-aware mode: a w-free student run under CFG (cond and uncond), each sample guided "
              "with probability p (else the plain conditional loss), plus 0.2 x the plain v-loss; sampled with "
              "CFG. The rows before issue 26 are Kairos' own construction: a w-conditioned student told the drawn "
              "w while trained on the w = 1 target with probability 1 - p, whose mean target is CFG at "
              "1 + p (w - 1).", "",
              "| student | w | FD-digits | class accuracy |", "|---|---|---|---|"]
    lines += _w_rows("Meng et al., 128 -> 4 rounds", res["guided_w"])
    for p, rs in res["guided_sf_p"].items():
        lines += _w_rows(f"SnapFusion mode, one 8 -> 4 round, w ~ U[1, 6], p = {p}", rs)
    lines += _w_rows("SnapFusion mode, one 8 -> 4 round, its paper's p = 0.1, w ~ U[2, 14]", res["guided_snapfusion"])
    for p, rs in res["guided_p_legacy"].items():
        lines += _w_rows(f"before issue 26: one 8 -> 4 round, p = {p}, unclipped", rs)
    lines += ["", "## Training cost", "", "| run | optimizer steps | batch | wall time of the steps |",
              "|---|---|---|---|"]
    lines += [f"| {w} | {c['steps']} | {c['batch_size']} | {c['train_seconds'] / 60:.1f} min |"
              for w, c in res["cost"].items()]
    lines += ["", "## Verdict", "", "VERDICT", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
