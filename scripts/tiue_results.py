r"""TiUE on the digits teachers (issues 13, 26) -> docs/results/tiue.{md,json}, tiue_similarity.png,
tiue_samples.png.

    bash scripts/tiue_digits.sh                # the teachers and the students (resumable)
    python -m scripts.tiue_results [--num 1000] [--out docs/results]

1. **Motivation** (the paper's feature-similarity figure): along the unguided DDIM
   trajectory at N = 2, 4, 8, 25 steps, the cosine similarity and the relative change
   between consecutive steps of every encoder block's output (``conv_in``, down blocks,
   middle block) and every decoder block's (up blocks), per sample, averaged over the
   samples and the blocks of each half (``distill/step_features.py``); on both digits
   teachers (``--similarity_num`` class-balanced samples) and, when ``runs/scenes`` exists,
   on the SD-family scenes UNet (held-out captions): the paper's claim is about SD.
2. **Students at matched training compute** (each run's wall time of its steps is in the
   table): TiUE K = 4 with the reference's settings (configs/digits_tiue.py: eps teacher on
   SD's betas, leading grid, CFG 4.5, KL 0.1 grouped by 8, LoRA fake score), KL off, the
   data-free regression baseline, the full-copy fake score, the v teacher (KL on derived
   eps), the settings before issue 26 (``:legacy``), the 1-step VSD student (K = 1), the
   progressive student at 4 and 1 steps, the consistency student at 4 and 1 steps; the
   teachers with DDIM as baselines and references. Each TiUE run is checked against its
   config variant as it is now (a stale run is refused). Each scored on
   ``--num`` class-balanced samples (seed 0): FD-digits, class accuracy, recall and
   coverage (k = 5) in the digits CNN's features against the 360 held-out digits
   (``diffusion/metrics/coverage.py``), and within-class pixel variance relative to the
   train digits'. Cached in each work directory's ``eval_tiue/report.json``.
3. **Wall time**: each sampler at batch ``--time_batch``, jitted, interleaved, median of
   ``--repeats`` rounds after a warm-up (``benchmarks.common.time_interleaved``).
"""

from __future__ import annotations

import argparse
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import machine, time_interleaved, write_keeping_verdict
from orchestration.workdir import files
from orchestration.workdir.records import load_records, save_records
from orchestration.build.run_loader import load_run
from orchestration.generation.sweep import parse_sweep
from scripts.distillation_results import round_checkpoints
from scripts.scenes_results import training

TEACHER = "runs/digits_sd_eps"  # TiUE's teacher: eps prediction on SD's betas (configs/digits_sd_eps.py)
V_TEACHER = "runs/digits_v"  # the progressive and consistency students' (and TiUE's :v, :legacy)
SIMILARITY_STEPS = (2, 4, 8, 25)
TIUE_GUIDANCE = 4.5  # configs/digits_tiue.py's distill.guidance (train_loopfree.sh; checked against each run)
LEADING4, TRAILING4 = "solver=ddim;steps=4;grid=leading;loopfree=on", "solver=ddim;steps=4;grid=trailing;loopfree=on"
# (key, label, work directory, student steps picking a progressive round or None for the last checkpoint, sampler;
# each student on its own method's sampler: progressive clips x0 as its reference does, consistency on LCM's lattice)
ENTRIES = (
    ("tiue", "TiUE K=4 (the reference's settings: VSD + KL 0.1)", "runs/digits_tiue", None, LEADING4),
    ("tiue_kl0", "TiUE K=4, KL off", "runs/digits_tiue_kl0", None, LEADING4),
    ("tiue_regress", "TiUE K=4, regression baseline", "runs/digits_tiue_regress", None, LEADING4),
    ("tiue_fake_full", "TiUE K=4, full-copy fake score", "runs/digits_tiue_fake_full", None, LEADING4),
    ("tiue_v", "TiUE K=4, v teacher (KL on derived eps)", "runs/digits_tiue_v", None, LEADING4),
    ("tiue_legacy", "TiUE K=4 as before issue 26 (v teacher, trailing, w=3, KL / 8)", "runs/digits_tiue_legacy",
     None, TRAILING4),
    ("vsd1", "1-step VSD student (K=1)", "runs/digits_tiue_k1", None, "solver=ddim;steps=1;grid=trailing;loopfree=on"),
    ("progressive4", "progressive, 4 steps", "runs/digits_progressive", 4, "solver=ddim;steps=4;clip_x0=1"),
    ("progressive1", "progressive, 1 step", "runs/digits_progressive", 1, "solver=ddim;steps=1;clip_x0=1"),
    ("consistency4", "consistency, 4 steps", "runs/digits_consistency", None, "solver=consistency;steps=4;grid=lcm"),
    ("consistency1", "consistency, 1 step", "runs/digits_consistency", None, "solver=consistency;steps=1;grid=lcm"),
    ("eps_teacher4_cfg", f"eps teacher, DDIM 4 (leading) + CFG w={TIUE_GUIDANCE:g}", TEACHER, None,
     f"solver=ddim;steps=4;grid=leading;guidance={TIUE_GUIDANCE:g}"),
    ("eps_teacher64_cfg", f"eps teacher, DDIM 64 + CFG w={TIUE_GUIDANCE:g}", TEACHER, None,
     f"solver=ddim;steps=64;guidance={TIUE_GUIDANCE:g}"),
    ("eps_teacher64", "eps teacher, DDIM 64", TEACHER, None, "solver=ddim;steps=64"),
    ("teacher4", "v teacher, DDIM 4", V_TEACHER, None, "solver=ddim;steps=4"),
    ("teacher64", "v teacher, DDIM 64", V_TEACHER, None, "solver=ddim;steps=64"),
)
SCENES = "runs/scenes"  # the SD-family latent text-to-image model (configs/scenes.py), optional
# each TiUE run and the configs/digits_tiue.py variant that must have made it
TIUE_VARIANTS = {"runs/digits_tiue": "", "runs/digits_tiue_kl0": "kl0", "runs/digits_tiue_regress": "regress",
                 "runs/digits_tiue_fake_full": "fake_full", "runs/digits_tiue_v": "v",
                 "runs/digits_tiue_legacy": "legacy", "runs/digits_tiue_k1": "k1"}
TIUE_RUNS = tuple(TIUE_VARIANTS)
GRID_PER_ROW = 20


def checkpoint_of(workdir: str, student_steps: int | None) -> int:
    if student_steps is None:
        return load_run(workdir).steps[-1]
    return dict(round_checkpoints(workdir))[student_steps]


def real_features():
    """``(held-out CNN features, per-class pixel variance of the train digits [10])``."""
    from diffusion.data.digits import load_digits
    from diffusion.metrics.fd_digits import classify

    heldout, _ = load_digits("heldout")
    train, labels = load_digits("train")
    return classify(heldout)[1], np.array([train[labels == c].var(axis=0).mean() for c in range(10)])


def diversity(images: np.ndarray, labels: np.ndarray, real) -> dict:
    """Recall / coverage against the held-out digits and the within-class pixel variance
    relative to the train digits' (mean over classes)."""
    from diffusion.metrics.coverage import recall_coverage
    from diffusion.metrics.fd_digits import classify

    heldout_feats, real_var = real
    var = np.array([images[labels == c].var(axis=0).mean() for c in range(10)])
    return {**recall_coverage(heldout_feats, classify(images)[1]), "pixel_var_ratio": float(np.mean(var / real_var))}


def score(workdir: str, ckpt: int, sampler: str, num: int, real) -> dict:
    """One model's record, computed or read back from ``<workdir>/eval_tiue/report.json``;
    the first samples are kept beside it for the figure."""
    from diffusion.metrics.fd_digits import fd_digits
    from orchestration.generation.generate import class_labels, generate

    spec = parse_sweep(sampler)[0].spec
    out_dir = pathlib.Path(workdir) / "eval_tiue"
    path, rid = out_dir / "report.json", f"ckpt{ckpt}/{spec.tag()}/seed0/n{num}"
    records = load_records(path)
    found = [r for r in records if r["id"] == rid]
    samples = out_dir / (rid.replace("/", "_").replace(";", "_").replace("=", "-") + ".npy")
    if found and samples.is_file():
        return found[0]
    run = load_run(workdir)
    labels = class_labels(num, run.num_classes)
    images = generate(run.denoiser, run.params(ckpt), run.sample_shape, num, spec, run.caps, labels=labels)
    record = {"id": rid, "ckpt": ckpt, "sampler": sampler, "num": num, **fd_digits(images, labels),
              **diversity(images, labels, real), "network_calls": spec.network_calls(run.denoiser.schedule)}
    out_dir.mkdir(exist_ok=True)
    tmp = samples.with_suffix(".tmp.npy")
    np.save(tmp, images[:GRID_PER_ROW])
    tmp.replace(samples)
    save_records(path, [r for r in records if r["id"] != rid] + [record], {"workdir": workdir})
    print(f"{workdir} {sampler}: FD {record['fd_digits']:.3f}, accuracy {record['class_accuracy']:.3f}, "
          f"recall {record['recall']:.3f}, coverage {record['coverage']:.3f}", flush=True)
    return record


def real_row(real) -> dict:
    """The train digits scored like samples: the metrics' floor."""
    from diffusion.data.digits import load_digits
    from diffusion.metrics.fd_digits import fd_digits

    train, labels = load_digits("train")
    return {**fd_digits(train, labels), **diversity(train, labels, real)}


def similarity(num: int, workdir: str = TEACHER) -> dict:
    """``{N: {"encoder", "decoder": cosine [N-1], "encoder_change", "decoder_change": [N-1],
    "times": [N]}}`` along the unguided DDIM trajectories of ``workdir``'s model (class labels
    cycling, or a text model's held-out captions)."""
    from orchestration.generation.generate import class_labels
    from sampling.spec import make_spec
    from distill.step_features import consecutive_cosine, consecutive_relative_change, trajectory_features

    run = load_run(workdir)
    params = run.params(run.steps[-1])
    x_T = jax.random.normal(jax.random.PRNGKey(0), (num, *run.sample_shape))
    if run.caps.text:
        from orchestration.build.frozen import text_conds
        from orchestration.generation.scoring import split_captions

        conds = text_conds(run.prompt_encoder(), split_captions(run.config, "heldout", num))
        cond = {k: jnp.asarray(v) for k, v in conds.items()}
    else:
        cond = {"label": jnp.asarray(class_labels(num, run.num_classes))}
    out = {}
    for n in SIMILARITY_STEPS:
        den, solver, grid = make_spec("ddim", n).build(run.denoiser, run.caps)
        enc, dec = trajectory_features(den, params, solver, grid, x_T, cond)
        mean = lambda fn, blocks: np.mean([np.asarray(fn(f)) for f in blocks.values()], axis=0).tolist()  # noqa: E731
        out[n] = {"encoder": mean(consecutive_cosine, enc), "decoder": mean(consecutive_cosine, dec),
                  "encoder_change": mean(consecutive_relative_change, enc),
                  "decoder_change": mean(consecutive_relative_change, dec),
                  "encoder_output": np.asarray(consecutive_cosine(list(enc.values())[-1])).tolist(),
                  "decoder_output": np.asarray(consecutive_cosine(list(dec.values())[-1])).tolist(),
                  "blocks": [len(enc), len(dec)],
                  "times": np.asarray(grid[:-1] * run.denoiser.schedule.T).round(1).tolist()}
    return out


def wall_times(entries: list[dict], batch: int, repeats: int) -> dict[str, float]:
    """Median seconds of one jitted ``sample()`` of ``batch`` samples per entry."""
    from orchestration.generation.generate import class_labels
    from sampling.loop import sample

    fns = {}
    for e in entries:
        run = load_run(e["workdir"])
        params = run.params(e["ckpt"])
        den, solver, grid = parse_sweep(e["sampler"])[0].spec.build(run.denoiser, run.caps)
        x = jax.random.normal(jax.random.PRNGKey(1), (batch, *run.sample_shape))
        cond = {"label": jnp.asarray(class_labels(batch, run.num_classes))}
        fn = jax.jit(lambda p, x, c, den=den, solver=solver, grid=grid: sample(den, p, solver, grid, x, c))
        fns[e["key"]] = lambda fn=fn, p=params, x=x, c=cond: fn(p, x, c).block_until_ready()
    return time_interleaved(fns, repeats)


def check_runs() -> None:
    missing = sorted({w for *_, w, _, _ in ENTRIES if not (pathlib.Path(w) / "config.json").is_file()})
    if missing:
        raise SystemExit(f"error: missing work directories {missing}: run bash scripts/tiue_digits.sh first")
    from configs import digits_tiue

    for w in TIUE_RUNS:
        d = json.loads((pathlib.Path(w) / "config.json").read_text())["distill"]
        variant = TIUE_VARIANTS.get(w, "")
        made_by = "configs/digits_tiue.py" + (f":{variant}" if variant else "")
        want = {k: v for k, v in digits_tiue.get_config(variant).distill.items() if k != "teacher_workdir"}
        if float(d["guidance"]) != want["guidance"]:
            raise SystemExit(f"error: {w} was distilled with guidance {d['guidance']}, this page compares against "
                             f"the teacher at CFG w={want['guidance']:g} ({made_by})")
        stale = {k: (d.get(k), v) for k, v in want.items() if d.get(k) != v}
        if stale:
            raise SystemExit(f"error: {w} was not made by {made_by} as it is now (saved vs now: "
                             f"{stale}): distil it again into a fresh work directory (bash scripts/tiue_digits.sh)")


def figures(res: dict, out: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffusion.metrics.grid import save_grid

    models = res["similarity"]
    fig, axes = plt.subplots(2 * len(models), len(SIMILARITY_STEPS), figsize=(3.2 * len(SIMILARITY_STEPS),
                                                                              2.6 * 2 * len(models)), squeeze=False)
    for row, (model, sims) in enumerate(models.items()):
        for col, (n, s) in enumerate(sims.items()):
            for r, (key, what) in enumerate((("", "cosine similarity"), ("_change", "relative change"))):
                ax = axes[2 * row + r, col]
                pairs = np.arange(1, len(s["encoder"]) + 1)
                ax.plot(pairs, s["encoder" + key], "o-", label="encoder blocks")
                ax.plot(pairs, s["decoder" + key], "s--", label="decoder blocks")
                ax.set_title(f"{model}, N = {n}", fontsize=9)
                ax.grid(alpha=0.3)
                if col == 0:
                    ax.set_ylabel(what)
                if r == 1:
                    ax.set_xlabel("step k -> k+1")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "tiue_similarity.png", dpi=110)
    plt.close(fig)
    rows = [files.load_npy(e["samples"]) for e in res["entries"]]
    save_grid(np.concatenate(rows), out / "tiue_samples.png", nrow=GRID_PER_ROW, scale=3)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num", type=int, default=1000, help="samples per model (class-balanced)")
    ap.add_argument("--similarity_num", type=int, default=200, help="trajectories for the similarity figure")
    ap.add_argument("--time_batch", type=int, default=100, help="batch of the wall-time measurement")
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds")
    ap.add_argument("--out", default="docs/results")
    args = ap.parse_args()
    if min(args.num, args.similarity_num, args.time_batch, args.repeats) < 1 or args.num < 20:
        ap.error("--num must be >= 20 and --similarity_num, --time_batch, --repeats >= 1")
    check_runs()
    real = real_features()
    entries = []
    for key, label, workdir, steps, sampler in ENTRIES:
        ckpt = checkpoint_of(workdir, steps)
        rec = score(workdir, ckpt, sampler, args.num, real)
        samples = pathlib.Path(workdir) / "eval_tiue" / (rec["id"].replace("/", "_").replace(";", "_")
                                                         .replace("=", "-") + ".npy")
        entries.append({"key": key, "label": label, "workdir": workdir, "ckpt": ckpt, "sampler": sampler,
                        "samples": str(samples), **{k: v for k, v in rec.items() if k not in ("id", "sampler")}})
    seconds = wall_times(entries, args.time_batch, args.repeats)
    for e in entries:
        e["sample_seconds"] = seconds[e["key"]]
    res = {"command": f"python -m scripts.tiue_results --num {args.num}", "machine": machine(), "num": args.num,
           "time_batch": args.time_batch, "real": real_row(real),
           "similarity": {"digits eps teacher": similarity(args.similarity_num),
                          "digits v teacher": similarity(args.similarity_num, V_TEACHER),
                          **({"scenes UNet": similarity(args.similarity_num, SCENES)}
                             if (pathlib.Path(SCENES) / "config.json").is_file() else {})},
           "entries": entries,
           "training": {w: training(w) for w in sorted({e["workdir"] for e in entries} - {TEACHER, V_TEACHER})}}
    out = pathlib.Path(args.out)
    figures(res, out)
    files.write_text(out / "tiue.json", json.dumps(res, indent=1) + "\n")
    write_keeping_verdict(out / "tiue.md", markdown(res))
    print(f"wrote {out / 'tiue.md'}")


def criteria(res: dict) -> list[str]:
    e = {x["key"]: x for x in res["entries"]}
    lines = []
    for model, sim in res["similarity"].items():
        per_n = [(n, np.mean(v["encoder"]), np.mean(v["decoder"]), np.mean(v["encoder_change"]),
                  np.mean(v["decoder_change"])) for n, v in sim.items()]
        by_cos, by_change = all(a > b for _, a, b, _, _ in per_n), all(c < d for *_, c, d in per_n)
        lines.append(f"1. **Encoder similarity exceeds decoder similarity at every N** ({model}): by cosine "
                     f"similarity {'holds' if by_cos else 'does not hold'} ("
                     + ", ".join(f"N = {n}: {a:.3f} vs {b:.3f}" for n, a, b, _, _ in per_n)
                     + f"); by relative change {'holds' if by_change else 'does not hold'} ("
                     + ", ".join(f"{c:.3f} vs {d:.3f}" for *_, c, d in per_n) + ").")
    t, one = e["tiue"], e["vsd1"]
    ratio = t["sample_seconds"] / one["sample_seconds"]
    better = t["fd_digits"] < one["fd_digits"]
    lines.append(f"2. **TiUE K=4 beats the 1-step VSD student on FD with wall time <= 1.5x**: "
                 f"{'holds' if better and ratio <= 1.5 else 'does not hold'} (FD {t['fd_digits']:.3f} vs "
                 f"{one['fd_digits']:.3f}: {'better' if better else 'not better'}; wall time {ratio:.2f}x at batch "
                 f"{res['time_batch']} on this CPU).")
    k0 = e["tiue_kl0"]
    up = {m: t[m] > k0[m] for m in ("recall", "coverage", "pixel_var_ratio")}
    fd_ratio = t["fd_digits"] / k0["fd_digits"]
    lines.append(f"3. **The KL term raises recall, coverage or per-class pixel variance without raising FD by more "
                 f"than 5%**: {'holds' if any(up.values()) and fd_ratio <= 1.05 else 'does not hold'} (KL on vs "
                 f"off: recall {t['recall']:.3f} vs {k0['recall']:.3f}, coverage {t['coverage']:.3f} vs "
                 f"{k0['coverage']:.3f}, pixel variance ratio {t['pixel_var_ratio']:.3f} vs "
                 f"{k0['pixel_var_ratio']:.3f}; FD {fd_ratio:.2f}x).")
    return lines


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = ["# TiUE: the time-independent unified encoder on the digits teacher", "",
             f"`bash scripts/tiue_digits.sh && {res['command']}` — {m['cpu']}, {m['cores']} cores, {m['backend']}, "
             f"jax {m['jax']}, {m['date']}.",
             f"Teachers: `{TEACHER}` (configs/digits_sd_eps.py: eps prediction on SD's betas, as the reference's "
             "SD 2.1-base) teaches TiUE (configs/digits_tiue.py: the reference's settings, and its variants); "
             f"`{V_TEACHER}` (configs/digits_v.py) teaches the progressive and consistency students and TiUE's `:v` "
             "and `:legacy` variants. Students distilled by `launch.distill`. "
             f"{res['num']} class-balanced samples per model, seed 0.", "",
             "## Why a shared encoder: feature similarity along the trajectory", "",
             "Between consecutive DDIM steps (unguided, trailing grid), per sample: the cosine similarity and the "
             "relative change `||f_k+1 - f_k|| / ||f_k||` (lower = more similar; a constant offset in a feature "
             "cannot inflate it) of every encoder block's output (`conv_in`, down blocks, middle block) and every "
             "decoder block's (up blocks), averaged over samples and over the blocks of each half. The last two "
             "columns are the cosine of the halves' outputs alone (the middle block, TiUE's shared feature, and "
             "the last up block).", "", "![similarity](tiue_similarity.png)", "",
             "| model | N | cosine, encoder | cosine, decoder | rel. change, encoder | rel. change, decoder | "
             "cosine, middle block | cosine, last up block |", "|---|---|---|---|---|---|---|---|"]
    for model, sim in res["similarity"].items():
        for n, v in sim.items():
            lines.append(f"| {model} | {n} | {np.mean(v['encoder']):.3f} | {np.mean(v['decoder']):.3f} | "
                         f"{np.mean(v['encoder_change']):.3f} | {np.mean(v['decoder_change']):.3f} | "
                         f"{np.mean(v['encoder_output']):.3f} | {np.mean(v['decoder_output']):.3f} |")
    r = res["real"]
    lines += ["", "## Students", "",
              "FD-digits and class accuracy as in docs/results/distillation.md; recall and coverage (k = 5) in the "
              "digits CNN's features against the 360 held-out digits; pixel var: within-class pixel variance over "
              "the train digits'. Wall time: one jitted `sample()` of "
              f"{res['time_batch']} samples, median of interleaved rounds. The TiUE students learn their teacher "
              f"under CFG w={TIUE_GUIDANCE:g} (train_loopfree.sh's setting; `:legacy` w=3), whose own FD is in the "
              "eps-teacher rows; the progressive and consistency students learn the unguided v teacher.", "",
              "| model | sampler | network calls | FD-digits | class acc. | recall | coverage | pixel var | "
              "wall time (s) |", "|---|---|---|---|---|---|---|---|---|",
              f"| real train digits | - | - | {r['fd_digits']:.3f} | {r['class_accuracy']:.3f} | {r['recall']:.3f} "
              f"| {r['coverage']:.3f} | {r['pixel_var_ratio']:.3f} | - |"]
    for e in res["entries"]:
        lines.append(f"| {e['label']} | `{e['sampler']}` | {e['network_calls']} | {e['fd_digits']:.3f} | "
                     f"{e['class_accuracy']:.3f} | {e['recall']:.3f} | {e['coverage']:.3f} | "
                     f"{e['pixel_var_ratio']:.3f} | {e['sample_seconds']:.4f} |")
    lines += ["", "Samples, one row per model in the table's order (2 per class):", "",
              "![samples](tiue_samples.png)", "", "## Training compute", "",
              "| run | optimizer steps | batch | wall time of the steps |", "|---|---|---|---|"]
    for w, t in res["training"].items():
        lines.append(f"| {w} | {t['steps']} | {t['batch_size']} | {t['step_seconds'] / 60:.1f} min |")
    lines += ["", "## METHODS.md's criteria", "", *criteria(res), "", "## Verdict", "", "VERDICT", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
