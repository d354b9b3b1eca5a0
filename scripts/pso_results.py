r"""PSO on the 4-step progressive digits student (issue 13) -> docs/results/pso.{md,json},
pso_samples.png.

    bash scripts/distill_digits.sh && bash scripts/pso_digits.sh   # resumable
    python -m scripts.pso_results [--num 1000] [--out docs/results]

The start is ``runs/digits_progressive`` at its 4-step checkpoint; the target style is
``digits_thick`` (strokes grey-dilated). The runs of configs/digits_pso.py (its docstring
lists them): naive fine-tuning (the plain diffusion loss on the thick digits); PSO with the
authors' loss settings (eps-space pair errors at their times, the prior term on hinge and
DPO, beta per loss; online: DMD2's re-noising kernel over all transitions) offline with the
hinge (``pso_db``) and DPO, and online (ranked by the ``thick`` reward); our settings before
issue 26 (``x0_grid``: x0-MSE at the grid times; ``online_old``: DDIM eta 1, one transition);
and the authors' recipes (``lora``: rank-16 LoRA, lr 2e-4, 600 steps of 4 pairs, weight decay
1e-4; ``lora_few``: the same on 5 images per class; ``online_lora``). Offline models are
sampled at the student's 4 DDIM steps (eta 0, its own sampler); online models with their
kernel's sampler (re-noising: the consistency sampler; DDIM eta 1) as the reference
evaluates them, and at DDIM eta 0 beside it (``--num`` class-balanced samples, seed 0). Each
is scored in the digits CNN's features:

* **target score**: the ``thick`` reward (a classifier's log-odds that the strokes are
  thick) and the fraction it calls thick;
* **FD to the target**: against the 360 held-out digits thickened; **FD to the original**:
  FD-digits (against the plain held-out digits); class accuracy;
* **coverage** of the thick held-out digits (k = 5): collapse shows as low coverage;
* **sharpness**: mean absolute Laplacian over the real thick digits' (blur lowers it).

Cached in each work directory's ``eval_pso/report.json``.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import jax
import numpy as np

from benchmarks.common import machine, write_keeping_verdict
from orchestration.workdir import files
from orchestration.workdir.records import load_records, save_records
from orchestration.build.run_loader import load_run
from scripts.scenes_results import training

START = "runs/digits_progressive"
STEPS = 4
# (key, label, work directory, checkpoint or None for the last, sampler: "ddim" DDIM eta 0 at STEPS
# steps, "kernel" the run's own: distill.pso.student_sampler of its config)
RUNS = (
    ("start", "start: the 4-step progressive student", START, "four", "ddim"),
    ("naive", "naive fine-tuning (diffusion loss)", "runs/digits_pso_naive", None, "ddim"),
    ("pso", "PSO offline, hinge (pso_db)", "runs/digits_pso", None, "ddim"),
    ("pso_dpo", "PSO offline, DPO (beta 200)", "runs/digits_pso_dpo", None, "ddim"),
    ("pso_online", "PSO online (thick reward), at its kernel", "runs/digits_pso_online", None, "kernel"),
    ("pso_online_eta0", "PSO online (thick reward), at DDIM eta 0", "runs/digits_pso_online", None, "ddim"),
    ("pso_x0_grid", "PSO offline, hinge, before issue 26 (x0-MSE, grid times)", "runs/digits_pso_x0_grid", None,
     "ddim"),
    ("pso_online_old", "PSO online before issue 26 (DDIM eta 1, one transition), at eta 1",
     "runs/digits_pso_online_old", None, "kernel"),
    ("pso_lora", "PSO offline, hinge, the authors' LoRA recipe (r16, 600 x 4 pairs)", "runs/digits_pso_lora", None,
     "ddim"),
    ("pso_lora_few", "PSO offline, hinge, the authors' LoRA recipe on 5 images per class", "runs/digits_pso_lora_few",
     None, "ddim"),
    ("pso_online_lora", "PSO online, the authors' LoRA recipe (r16, lr 1e-5), at its kernel",
     "runs/digits_pso_online_lora", None, "kernel"),
)
PSO_KEYS = tuple(r[0] for r in RUNS if r[0] not in ("start", "naive"))
GRID_PER_ROW = 20


def laplacian_sharpness(images: np.ndarray) -> float:
    """Mean absolute 4-neighbour Laplacian of ``[N, H, W, 1]`` images (interior pixels)."""
    x = images[..., 0]
    lap = 4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
    return float(np.abs(lap).mean())


def references():
    """What every set is scored against: the thick held-out digits' CNN features and
    sharpness, and the target FD's statistics."""
    from diffusion.data.digits import load_digits
    from diffusion.metrics.fd_digits import classify, reference_stats
    from diffusion.metrics.frechet import feature_stats

    thick, _ = load_digits("heldout", thick=True)
    feats = classify(thick)[1] * reference_stats()[2]  # the FD-digits feature scale
    return {"feats": feats, "stats": feature_stats(feats), "sharpness": laplacian_sharpness(thick)}


def score_images(images: np.ndarray, labels: np.ndarray | None, refs: dict) -> dict:
    from diffusion.metrics import rewards
    from diffusion.metrics.coverage import recall_coverage
    from diffusion.metrics.fd_digits import classify, fd_digits, reference_stats
    from diffusion.metrics.frechet import feature_stats, frechet_distance

    feats = classify(images)[1] * reference_stats()[2]
    reward = np.asarray(jax.jit(rewards.get("thick"))(images, None))
    out = fd_digits(images, labels)
    return {"fd_original": out["fd_digits"], "class_accuracy": out.get("class_accuracy"),
            "fd_target": frechet_distance(*feature_stats(feats), *refs["stats"]),
            "thick_reward": float(reward.mean()), "thick_fraction": float((reward > 0).mean()),
            "coverage": recall_coverage(refs["feats"], feats)["coverage"],
            "sharpness_ratio": laplacian_sharpness(images) / refs["sharpness"]}


def four_step_checkpoint() -> int:
    from configs.digits_pso import FOUR_STEP_CHECKPOINT

    return FOUR_STEP_CHECKPOINT


def run_sampler(run, sampler: str):
    """The ``SamplerSpec`` a row samples with: DDIM eta 0 at ``STEPS`` steps, or the run's
    own (``distill.pso.student_sampler``: an online run's kernel)."""
    from distill.pso import student_sampler
    from sampling.spec import make_spec

    if sampler == "ddim" or run.config.get("distill") is None or run.config.distill.method != "pso":
        return make_spec("ddim", STEPS)
    values = dict(student_sampler(run.config.distill))
    return make_spec(values.pop("solver"), values.pop("steps"), **values)


def score_run(workdir: str, ckpt: int, num: int, refs: dict, sampler: str = "ddim") -> dict:
    from orchestration.generation.generate import class_labels, generate

    run = load_run(workdir)
    spec = run_sampler(run, sampler)
    out_dir = pathlib.Path(workdir) / "eval_pso"
    tag = spec.tag()  # ddim_4steps (the ids and files of earlier pages), consistency_4steps, ddim_4steps_eta1
    path, rid = out_dir / "report.json", f"ckpt{ckpt}/{tag}/seed0/n{num}"
    samples = out_dir / (f"ckpt{ckpt}_n{num}.npy" if tag == f"ddim_{STEPS}steps" else f"ckpt{ckpt}_{tag}_n{num}.npy")
    records = load_records(path)
    found = [r for r in records if r["id"] == rid]
    if found and samples.is_file():
        return {**found[0], "samples": str(samples)}
    labels = class_labels(num, run.num_classes)
    images = generate(run.denoiser, run.params(ckpt), run.sample_shape, num, spec, run.caps, labels=labels)
    record = {"id": rid, "ckpt": ckpt, "num": num, "sampler": spec.to_string(), **score_images(images, labels, refs)}
    out_dir.mkdir(exist_ok=True)
    tmp = samples.with_suffix(".tmp.npy")
    np.save(tmp, images[:GRID_PER_ROW])
    tmp.replace(samples)
    save_records(path, [r for r in records if r["id"] != rid] + [record], {"workdir": workdir})
    print(f"{workdir}: {json.dumps({k: round(v, 3) for k, v in record.items() if isinstance(v, float)})}", flush=True)
    return {**record, "samples": str(samples)}


def check_runs() -> None:
    missing = sorted({r[2] for r in RUNS if not (pathlib.Path(r[2]) / "config.json").is_file()})
    if missing:
        raise SystemExit(f"error: missing work directories {missing}: run bash scripts/distill_digits.sh and "
                         "bash scripts/pso_digits.sh first")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num", type=int, default=1000, help="samples per model (class-balanced)")
    ap.add_argument("--out", default="docs/results")
    args = ap.parse_args()
    if args.num < 20:
        ap.error("--num must be >= 20")
    check_runs()
    refs = references()
    from diffusion.data.digits import load_digits

    thick, labels = load_digits("train", thick=True)  # real thick digits scored like samples: the floor
    entries = []
    for key, label, workdir, ckpt, sampler in RUNS:
        step = four_step_checkpoint() if ckpt == "four" else load_run(workdir).steps[-1]
        rec = score_run(workdir, step, args.num, refs, sampler)
        entries.append({"key": key, "label": label, "workdir": workdir, "samples": rec["samples"],
                        **{k: v for k, v in rec.items() if k not in ("id", "samples")}})
    res = {"command": f"python -m scripts.pso_results --num {args.num}", "machine": machine(), "num": args.num,
           "real_thick": score_images(thick, labels, refs), "entries": entries,
           "training": {e["workdir"]: training(e["workdir"]) for e in entries if e["key"] != "start"}}
    out = pathlib.Path(args.out)
    from diffusion.metrics.grid import save_grid

    save_grid(np.concatenate([files.load_npy(e["samples"]) for e in entries] + [thick[:GRID_PER_ROW]]),
              out / "pso_samples.png", nrow=GRID_PER_ROW, scale=3)
    files.write_text(out / "pso.json", json.dumps(res, indent=1) + "\n")
    write_keeping_verdict(out / "pso.md", markdown(res))
    print(f"wrote {out / 'pso.md'}")


def criteria(res: dict) -> list[str]:
    e = {x["key"]: x for x in res["entries"]}
    start, naive = e["start"], e["naive"]
    base = start["fd_original"]  # the distilled model's FD to its own distribution
    blur = naive["fd_target"] / base
    lines = [f"1. **Naive fine-tuning raises the few-step FD by at least 30% (blur)**: "
             f"{'holds' if blur >= 1.3 else 'does not hold'}: naive's FD to its target is {naive['fd_target']:.2f}, "
             f"{blur:.2f}x the start's FD to its own distribution ({base:.2f}); sharpness "
             f"{naive['sharpness_ratio']:.2f} of the real thick digits'."]
    for key in PSO_KEYS:
        p = e[key]
        ok = p["thick_fraction"] >= naive["thick_fraction"] and p["fd_target"] <= 1.1 * base
        lines.append(f"2. **{p['label']} reaches a higher or equal target fraction than naive with an FD to its "
                     f"target within 10% of the start's own**: {'holds' if ok else 'does not hold'}: thick fraction "
                     f"{p['thick_fraction']:.3f} vs naive {naive['thick_fraction']:.3f}; FD to target "
                     f"{p['fd_target']:.2f} = {p['fd_target'] / base:.2f}x the start's {base:.2f}.")
    lines.append(f"3. **Without the reference term (plain fine-tuning on the targets) the model collapses**: "
                 f"coverage of the thick digits {naive['coverage']:.3f} (naive) vs "
                 + ", ".join(f"{e[k]['coverage']:.3f} ({k})" for k in PSO_KEYS)
                 + f"; real thick digits {res['real_thick']['coverage']:.3f}: "
                 f"{'holds' if naive['coverage'] < 0.5 * max(e[k]['coverage'] for k in ('pso', 'pso_dpo')) else 'does not hold'}.")
    return lines


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = ["# PSO: tuning the 4-step digits student towards thick strokes", "",
             f"`bash scripts/distill_digits.sh && bash scripts/pso_digits.sh && {res['command']}` — {m['cpu']}, "
             f"{m['cores']} cores, {m['backend']}, jax {m['jax']}, {m['date']}.",
             f"Start: `{START}` at its {STEPS}-step checkpoint. Target: `digits_thick`. Every model sampled at "
             f"{STEPS} steps with the row's sampler (DDIM eta 0, the progressive student's own; online runs also "
             f"with their training kernel's), {res['num']} class-balanced samples, seed 0. FD to target: against the "
             "360 held-out digits thickened; FD to original: FD-digits (plain held-out digits); coverage (k = 5) of "
             "the thick held-out digits; sharpness: mean absolute Laplacian over the real thick digits'.", "",
             "| model | sampler | thick reward | thick fraction | FD to target | FD to original | class acc. | "
             "coverage | sharpness |", "|---|---|---|---|---|---|---|---|---|"]
    rows = [*res["entries"], {"label": "real thick train digits", "sampler": "", **res["real_thick"]}]
    for e in rows:
        sampler = e.get("sampler") or ("" if "workdir" not in e else f"solver=ddim;steps={STEPS}")
        lines.append(f"| {e['label']} | `{sampler}` | {e['thick_reward']:.2f} | {e['thick_fraction']:.3f} | "
                     f"{e['fd_target']:.2f} | "
                     f"{e['fd_original']:.2f} | {e['class_accuracy']:.3f} | {e['coverage']:.3f} | "
                     f"{e['sharpness_ratio']:.2f} |")
    lines += ["", "Samples, one row per model in the table's order (2 per class), then real thick train digits:", "",
              "![samples](pso_samples.png)", "", "## Training", "",
              "| run | optimizer steps | batch | wall time of the steps | final loss |", "|---|---|---|---|---|"]
    for w, t in res["training"].items():
        lines.append(f"| {w} | {t['steps']} | {t['batch_size']} | {t['step_seconds'] / 60:.1f} min | "
                     f"{t['final_loss']:.4f} |")
    lines += ["", "## METHODS.md's criteria", "", *criteria(res), "", "## Verdict", "", "VERDICT", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
