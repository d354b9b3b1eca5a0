r"""Distillation results on the digits teacher -> docs/results/distillation.{md,json}.

    bash scripts/distill_digits.sh            # the teacher and the students (resumable)
    python -m scripts.distillation_results [--num 1000] [--out docs/results]

FD-digits and class accuracy (``--num`` samples, class-balanced, seed 0) of:
* the teacher (runs/digits_v) with DDIM at 1, 2, 4, 8 steps (the baselines) and at 50
  and 256 steps (the references); with CFG w = 2 at 1, 2, 4, 8 and 64 steps (for guided
  students; CFG doubles the batch, so its reference stops at 64 steps on a CPU);
* the progressive student at 8, 4, 2, 1 steps: the checkpoint that ends each round;
* the guided student (w = 2) likewise, and at 4 steps over w = 1..4;
* the guided p sweep (one 8 -> 4 round per p) at 4 steps, w = 2 and 4;
* the consistency student at 1, 2, 4, 8 steps (multistep consistency sampling);
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


def evaluate(workdir: str, ckpt: int | None, sweep: str, num: int) -> list[dict]:
    run = load_run(workdir)
    ckpt = run.steps[-1] if ckpt is None else ckpt
    cells = parse_sweep(sweep)
    records = run_cells(run, [ckpt], cells, pathlib.Path(workdir) / "eval", num, progress=True)
    keys = {c.key(ckpt, num) for c in cells}
    return [{**{k: r[k] for k in ("ckpt", "solver", "steps", "fd_digits", "class_accuracy")},
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--out", default="docs/results")
    args = ap.parse_args()
    n = args.num
    res = {"command": f"python -m scripts.distillation_results --num {n}", "machine": machine(), "num": n}
    res["teacher"] = evaluate(TEACHER, None, "solver=ddim;steps=1,2,4,8,50,256", n)
    res["teacher_cfg"] = evaluate(TEACHER, None, "solver=ddim;steps=1,2,4,8,64;guidance=2", n)
    res["progressive"] = [r for steps, ck in round_checkpoints("runs/digits_progressive")
                          for r in evaluate("runs/digits_progressive", ck, f"solver=ddim;steps={steps}", n)]
    res["guided"] = [r for steps, ck in round_checkpoints("runs/digits_guided")
                     for r in evaluate("runs/digits_guided", ck, f"solver=ddim;steps={steps};guidance=2", n)]
    four = dict(round_checkpoints("runs/digits_guided"))[4]
    res["guided_w"] = evaluate("runs/digits_guided", four, "solver=ddim;steps=4;guidance=1,2,3,4", n)
    res["guided_p"] = {p: evaluate(f"runs/digits_guided_p{p}", None, "solver=ddim;steps=4;guidance=2,4", n)
                       for p in ("0.0", "0.5", "1.0")}
    res["consistency"] = evaluate("runs/digits_consistency", None, "solver=consistency;steps=1,2,4,8", n)
    res["cost"] = {w: training_cost(f"runs/{w}") for w in
                   ("digits_v", "digits_progressive", "digits_guided", "digits_consistency", "digits_guided_p1.0")}
    out = pathlib.Path(args.out)
    files.write_text(out / "distillation.json", json.dumps(res, indent=1) + "\n")
    write_keeping_verdict(out / "distillation.md", markdown(res))
    print(f"wrote {out / 'distillation.md'}")


def _row(label: str, r: dict, ref: float) -> str:
    return f"| {label} | {r['steps']} | {r['fd_digits']:.3f} | {r['class_accuracy']:.3f} | {r['fd_digits'] / ref:.2f}x |"


def markdown(res: dict) -> str:
    m = res["machine"]
    t256 = next(r for r in res["teacher"] if r["steps"] == 256)["fd_digits"]
    lines = ["# Distillation on the digits teacher", "",
             f"`bash scripts/distill_digits.sh && {res['command']}` — {m['cpu']}, {m['cores']} cores, "
             f"{m['backend']}, jax {m['jax']}, {m['date']}.",
             f"Teacher: `runs/digits_v` (configs/digits_v.py: the 8x8 digits UNet with v-prediction, 2500 steps). "
             f"FD-digits and class accuracy of {res['num']} class-balanced samples (seed 0); the last column is FD "
             "relative to the teacher's 256-step DDIM.", "",
             "## FD-digits by sampling steps", "",
             "| sampler | steps | FD-digits | class accuracy | FD / teacher-256 |", "|---|---|---|---|---|"]
    for key, label in (("teacher", "teacher, DDIM"), ("progressive", "progressive student, DDIM"),
                       ("consistency", "consistency student, multistep consistency")):
        lines += [_row(label, r, t256) for r in sorted(res[key], key=lambda r: r["steps"])]
    tc = next(r for r in res["teacher_cfg"] if r["steps"] == 64)["fd_digits"]
    lines += ["", "## Guided (w = 2)", "", "FD relative to the teacher's 64-step DDIM with CFG w = 2.", "",
              "| sampler | steps | FD-digits | class accuracy | FD / teacher-CFG-64 |", "|---|---|---|---|---|"]
    for key, label in (("teacher_cfg", "teacher, DDIM + CFG w=2"), ("guided", "guided student, w=2")):
        lines += [_row(label, r, tc) for r in sorted(res[key], key=lambda r: r["steps"])]
    lines += ["", "## Guided student: FD vs class accuracy over w and p (4 steps)", "",
              "| student | w | FD-digits | class accuracy |", "|---|---|---|---|"]
    lines += [f"| 128 -> 4 rounds, p = 1 | {r['guidance']:g} | {r['fd_digits']:.3f} | {r['class_accuracy']:.3f} |"
              for r in sorted(res["guided_w"], key=lambda r: r["guidance"])]
    for p, rs in res["guided_p"].items():
        lines += [f"| one 8 -> 4 round, p = {p} | {r['guidance']:g} | {r['fd_digits']:.3f} | "
                  f"{r['class_accuracy']:.3f} |" for r in rs]
    lines += ["", "## Training cost", "", "| run | optimizer steps | batch | wall time of the steps |",
              "|---|---|---|---|"]
    lines += [f"| {w} | {c['steps']} | {c['batch_size']} | {c['train_seconds'] / 60:.1f} min |"
              for w, c in res["cost"].items()]
    lines += ["", "## Verdict", "", "VERDICT", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
