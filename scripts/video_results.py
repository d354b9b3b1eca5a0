r"""FVDM on moving digits (issues 12 and 26): models trained at ``p`` in {0, 0.2, 1} with equal
compute, under every sampling plan. Writes docs/results/video_fvdm.{md,json} and
video_*.png / video_*.gif. The whole page, training included (``scripts/video_fvdm.sh``)::

    python -m launch.train --config configs/moving_digits.py:p0 --workdir runs/moving_digits_p0
    python -m launch.train --config configs/moving_digits.py --workdir runs/moving_digits
    python -m launch.train --config configs/moving_digits.py:p1 --workdir runs/moving_digits_p1
    python -m scripts.video_results --p0 runs/moving_digits_p0 --p02 runs/moving_digits \
        --p1 runs/moving_digits_p1 [--num 100] [--long 32] [--samplers reference,old]

Every run was trained by ``launch.train --config configs/moving_digits.py:<variant>``
(the same steps, batch and model; only ``diffusion.per_frame_prob`` differs). Since issue 26
the config is FVDM's reference's: per-frame adaLN-Zero in the temporal blocks
(``model.temporal_cond``) and the per-frame coin per pair of samples
(``diffusion.per_frame_group = 2``); the runs table says what each work directory was
trained with. Each model is sampled under two samplers:

* ``reference`` (the page's main tables and the criteria): FVDM's, DDIM with 50 steps on
  ADM's respaced grid (``grid=adm``, FVDM@9373f998 ``ucf101_sample_video.yaml:34-36``,
  ``diffusion/respace.py:41-62``), given frames at ``t = 1/T`` and re-estimated by DDIM every
  step (the plan's defaults, ``sampling/transforms/plan.py``);
* ``old`` (a comparison section): the sampler before issue 26, DDIM 25 trailing steps with
  given frames clean at ``t = 0`` and clamped (``given_time=zero;given_update=clamp``, which
  reproduces the old plan bit for bit; plans without given frames are unchanged by it);

under the plans

1. ``sync`` (unconditional), seeds 0 and 1: FVD proxy, per-frame FD, identity stability;
2. ``i2v`` (frame 0 given) and ``interp`` (frames 0 and 7 given), FVDM's per-frame
   conditioning, and the same frames given by the replacement trick (``plan=replace``),
   seeds 0 and 1: PSNR / SSIM of the generated frames against the held-out continuation,
   and the scores above;
3. ``long:<--long>`` (at least 4x the 8 training frames): per-window per-frame FD (drift);
4. ``pyramid:2`` (frame ``i`` trails frame ``i - 1`` by 2 grid steps).

Given frames come from the held-out split (glyphs never seen in training); FDs compare
against the train split. Sampling cells go through ``launch.evaluate``'s machinery into
``<workdir>/eval_results/report.json``, so an interrupted run resumes (records written
before issue 26 are read back under the ``old`` sampler's names: tag version 4).
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
from orchestration.build.run_loader import load_run
from orchestration.generation.sweep import Cell
from sampling.spec import make_spec
from scripts.scenes_results import training

MODELS = (("p0", 0.0), ("p02", 0.2), ("p1", 1.0))
SEEDS = (0, 1)
PYRAMID_LAG = 2
# name -> (solver, steps, grid, knobs added to the plans that give frames or lag them)
SAMPLERS = {
    "reference": ("ddim", 50, "adm", {}),  # FVDM's sampler and plan (configs/moving_digits.py)
    "old": ("ddim", 25, "trailing", {"given_time": "zero", "given_update": "clamp"}),  # before issue 26
}
SAMPLER_TEXT = {"reference": "DDIM 50 steps on ADM's grid, given frames at t = 1/T re-estimated by DDIM (FVDM's)",
                "old": "DDIM 25 trailing steps, given frames clean at t = 0 and clamped (before issue 26)"}
OLD_NOTE = {True: "the last section compares the sampler before issue 26",
            False: "the sampler before issue 26 was not run on these models: `--samplers reference,old` adds it"}
LEGACY_PLANS = ("i2v", "interp", "long", "pyramid")  # the plans whose given frames or lag the knobs change


def plans(frames: int, long: int, sampler: str = "reference") -> dict[str, dict]:
    """Name -> plan knobs of every cell a model is sampled under with ``sampler``."""
    last = f"0,{frames - 1}"
    out = {"sync": {"plan": "sync"}, "i2v": {"plan": "i2v"}, "interp": {"plan": "interp"},
           "replace_i2v": {"plan": "replace"}, "replace_interp": {"plan": "replace", "given_frames": last},
           "long": {"plan": f"long:{long}"}, "pyramid": {"plan": f"pyramid:{PYRAMID_LAG}"}}
    extra = SAMPLERS[sampler][3]
    return {name: {**knobs, **extra} if name in LEGACY_PLANS else knobs for name, knobs in out.items()}


def make_cell_spec(sampler: str, knobs: dict):
    solver, steps, grid, _ = SAMPLERS[sampler]
    return make_spec(solver, steps, grid, **knobs)


SEEDED = ("sync", "i2v", "interp", "replace_i2v", "replace_interp")  # with seeds 0 and 1; the rest seed 0


def evaluate(run, sampler: str, knobs: dict, num: int, seeds) -> list[dict]:
    """The records of one plan under ``sampler`` (x ``seeds``), run or read back."""
    ckpt = run.steps[-1]
    cells = [Cell(make_cell_spec(sampler, knobs), s) for s in seeds]
    records = run_cells(run, [ckpt], cells, run.workdir / "eval_results", num)
    wanted = {c.key(ckpt, num) for c in cells}
    return [r for r in records if r["id"] in wanted]


FIELDS = ("fvd_proxy", "frame_fd", "identity_stability", "psnr", "ssim")


def summary(records: list[dict]) -> dict:
    """Mean over seeds of each score, the FVD proxy's spread, and the per-window FD."""
    out = {"seeds": len(records)}
    for f in FIELDS:
        if records[0].get(f) is not None:
            out[f] = float(np.mean([r[f] for r in records]))
    if len(records) > 1:
        out["fvd_proxy_std"] = float(np.std([r["fvd_proxy"] for r in records], ddof=1))
        out["psnr_std"] = float(np.std([r["psnr"] for r in records], ddof=1)) if "psnr" in out else None
    if "window_frame_fd" in records[0]:
        out["window_frame_fd"] = records[0]["window_frame_fd"]
    out["sample_seconds_incl_compile"] = float(np.mean([r["sample_seconds_incl_compile"] for r in records]))
    return out


def real_section(config, num: int, frames: int, long: int) -> dict:
    """Real held-out videos scored like samples (the floor at ``num``), and the trivial
    conditional baselines: i2v repeating the given frame, interpolation blending the two
    given frames linearly."""
    from diffusion.metrics.psnr import mean_psnr
    from diffusion.metrics.video_metrics import ssim, video_scores
    from orchestration.generation.scoring import VIDEO_REFERENCE_SPLIT, VIDEO_TRUTH_SPLIT
    from orchestration.generation.video import truth_videos

    reference = truth_videos(config, VIDEO_REFERENCE_SPLIT, num, frames)
    truth = truth_videos(config, VIDEO_TRUTH_SPLIT, num, long)
    out = {"real": video_scores(truth[:, :frames], reference, frames),
           "real_long": video_scores(truth, reference, frames)["window_frame_fd"]}
    clip = truth[:, :frames]
    w = np.linspace(0.0, 1.0, frames)[None, :, None, None, None]
    baselines = {"copy_i2v": (np.repeat(clip[:, :1], frames, axis=1), list(range(1, frames))),
                 "blend_interp": ((1 - w) * clip[:, :1] + w * clip[:, -1:], list(range(1, frames - 1)))}
    for name, (video, new) in baselines.items():
        gen = video[:, new].reshape(-1, *video.shape[2:])
        ref = clip[:, new].reshape(-1, *clip.shape[2:])
        out[name] = {**video_scores(video.astype(np.float32), reference, frames),
                     "psnr": mean_psnr(gen, ref), "ssim": float(ssim(gen, ref).mean())}
    return out


def model_section(run, num: int, long: int, sampler: str = "reference") -> dict:
    frames = run.caps.frames
    return {name: summary(evaluate(run, sampler, knobs, num, SEEDS if name in SEEDED else (0,)))
            for name, knobs in plans(frames, long, sampler).items()}


def trained_with(config) -> dict:
    """What a video run was trained with, as its (upgraded) config says: FVDM's reference
    choices since issue 26, or the model and coin before it."""
    return {"temporal_cond": config.model.get("temporal_cond", "none"),
            "per_frame_group": int(config.diffusion.get("per_frame_group", 0))}


def figures(runs: dict, out: pathlib.Path, long: int, n: int = 4) -> None:
    """Filmstrips (one video per row) of ``n`` videos per model and plan, and a GIF of each
    model's unconditional samples; conditional strips start with the ground truth rows."""
    from diffusion.metrics.grid import save_grid, to_uint8
    from orchestration.generation.draw import draw
    from orchestration.generation.scoring import VIDEO_TRUTH_SPLIT
    from orchestration.generation.video import save_gif, truth_videos

    any_run = next(iter(runs.values()))
    frames = any_run.caps.frames
    truth = truth_videos(any_run.config, VIDEO_TRUTH_SPLIT, n, long)
    knobs = plans(frames, long)
    strips = {"sync": ("sync",), "i2v": ("i2v", "replace_i2v"), "interp": ("interp", "replace_interp"),
              "long": ("long",), "pyramid": ("pyramid",)}
    params = {key: run.params(run.steps[-1]) for key, run in runs.items()}
    for figure, names in strips.items():
        length = long if figure == "long" else frames
        rows = [truth[:, :length]] if figure in ("i2v", "interp", "long") else []
        for key, run in runs.items():
            for name in names:
                video, _ = draw(run, params[key], make_cell_spec("reference", knobs[name]), n, truth=truth)
                rows.append(video)
                if figure == "sync":
                    save_gif(to_uint8(video), out / f"video_sync_{key}.gif", ncol=n)
        strip = np.concatenate(rows)
        save_grid(strip.reshape(-1, *strip.shape[2:]), out / f"video_{figure}.png", nrow=length, scale=2)


def criteria(r: dict) -> list[dict]:
    """METHODS.md's three FVDM criteria, each with the figures it is judged on."""
    m = r["models"]
    sync = {k: m[k]["sync"]["fvd_proxy"] for k, _ in MODELS}
    spread = max(m[k]["sync"].get("fvd_proxy_std") or 0.0 for k, _ in MODELS)
    ratio = sync["p02"] / sync["p0"]
    out = [{"criterion": "p = 0.2 stays within 10% of p = 0 on the unconditional FVD proxy",
            "holds": bool(ratio <= 1.10),
            "numbers": f"FVD proxy p = 0.2: {sync['p02']:.1f}, p = 0: {sync['p0']:.1f} (ratio {ratio:.2f}; "
                       f"seed-to-seed std up to {spread:.1f})"}]
    gains, ident = [], []
    for task in ("i2v", "interp"):
        best_p0 = max(m["p0"][task]["psnr"], m["p0"][f"replace_{task}"]["psnr"])
        gains.append(m["p02"][task]["psnr"] - best_p0)
        ident.append(m["p02"][task]["identity_stability"] >= max(m["p0"][task]["identity_stability"],
                                                                  m["p0"][f"replace_{task}"]["identity_stability"]))
    noise = max(m[k][t].get("psnr_std") or 0.0 for k in ("p0", "p02") for t in ("i2v", "interp"))
    out.append({"criterion": "p = 0.2 clearly beats p = 0 on zero-shot i2v and interpolation "
                             "(PSNR above the better of p = 0's two ways by more than twice the seed spread, "
                             "identity preserved at least as often)",
                "holds": bool(all(g > 2 * noise for g in gains) and all(ident)),
                "numbers": f"PSNR gain over p = 0's better way: i2v {gains[0]:+.2f} dB, interp {gains[1]:+.2f} dB "
                           f"(seed spread up to {noise:.2f} dB); identity at least p = 0's: i2v {ident[0]}, "
                           f"interp {ident[1]}"})
    worse = sync["p1"] - max(sync["p0"], sync["p02"])
    out.append({"criterion": "p = 1 degrades unconditional quality (FVD proxy above both others by more than twice "
                             "the seed spread)",
                "holds": bool(worse > 2 * spread),
                "numbers": f"FVD proxy p = 1: {sync['p1']:.1f} vs p = 0 {sync['p0']:.1f}, p = 0.2 {sync['p02']:.1f}"})
    return out


def _fmt(s: dict, f: str, digits: int = 2) -> str:
    return f"{s[f]:.{digits}f}" if s.get(f) is not None else "–"


def _temporal_text(job: dict) -> str:
    return "per-frame adaLN-Zero" if job.get("temporal_cond") == "adaln_zero" else "no time input (before issue 26)"


def _coin_text(job: dict) -> str:
    g = job.get("per_frame_group", 0)
    return "batch (before issue 26)" if not g else f"{g} samples"


def old_sampler_section(r: dict) -> list[str]:
    """The sampler before issue 26 next to FVDM's, per model and plan: the headline score of
    each plan (FVD proxy; PSNR for i2v and interpolation; the last window's FD for long video)."""
    if not r.get("old_sampler"):
        return []
    m, o, f = r["models"], r["old_sampler"], r["frames"]
    names = {"p0": "p = 0", "p02": "p = 0.2", "p1": "p = 1"}
    rows = [("sync", "FVD proxy", "fvd_proxy", 1), ("i2v", "PSNR (dB)", "psnr", 2), ("i2v", "FVD proxy", "fvd_proxy", 1),
            ("interp", "PSNR (dB)", "psnr", 2), ("interp", "FVD proxy", "fvd_proxy", 1),
            ("pyramid", "FVD proxy", "fvd_proxy", 1)]
    lines = ["## FVDM's sampler against the one before issue 26", "",
             f"Left of each arrow: {SAMPLER_TEXT['old']}; right: {SAMPLER_TEXT['reference']}. The replacement "
             "baseline and sync give no frames, so between the two only the steps and the grid differ for them.", "",
             "| plan | score | " + " | ".join(names[k] for k, _ in MODELS) + " |", "|---|---|" + "---|" * len(MODELS)]
    for plan, label, field, digits in rows:
        cells = [f"{_fmt(o[k][plan], field, digits)} → {_fmt(m[k][plan], field, digits)}" for k, _ in MODELS]
        lines.append(f"| {plan} | {label} | " + " | ".join(cells) + " |")
    last = r["long"] // f - 1
    cells = [f"{o[k]['long']['window_frame_fd'][last]:.1f} → {m[k]['long']['window_frame_fd'][last]:.1f}"
             for k, _ in MODELS]
    lines += [f"| long:{r['long']} | per-frame FD, frames {f * last}-{f * last + f - 1} | " + " | ".join(cells) + " |",
              ""]
    return lines


def markdown(r: dict) -> str:
    m, real, mach, f = r["models"], r["real"], r["machine"], r["frames"]
    windows = r["long"] // f
    names = {"p0": "p = 0", "p02": "p = 0.2", "p1": "p = 1"}
    lines = [
        "# FVDM on moving digits: per-frame times at p = 0, 0.2 and 1 (issue 12)", "",
        f"`{r['command']}` — {mach['cpu']}, {mach['cores']} cores, {mach['backend']}, jax {mach['jax']}, "
        f"{mach['date']} ({r['wall_s'] / 60:.0f} min for this invocation: sampling cells already in a run's "
        "`eval_results/report.json` are read back, each with its own sampling time).", "",
        f"Every cell: {r['num']} videos of {f} frames, sampled with FVDM's sampler: "
        f"{SAMPLER_TEXT['reference']} ({OLD_NOTE[bool(r.get('old_sampler'))]}). Given frames come "
        "from the held-out split (glyphs never seen in training); FDs compare against the train split, in the "
        "features of the video probe ([../design/video.md](../design/video.md): real videos score about 5 at 1000 "
        "videos, frame-shuffled 39, static 123). Identity stability: the fraction of videos whose digit set "
        "(read by the probe) is non-empty and the same in every frame. PSNR and SSIM: the frames not given, against "
        "the held-out continuation. Means over seeds 0 and 1 where a ± gives the seed-to-seed std.", "",
        "## The runs (equal compute: the same steps, batch and model; minutes: time in training steps, "
        "which depends on what else ran on the machine)", "",
        "| p | work directory | steps x batch | minutes | final loss | temporal blocks | coin per |",
        "|---|---|---|---|---|---|---|",
        *[f"| {p} | `{r['job'][k]['workdir']}` | {r['job'][k]['steps']} x {r['job'][k]['batch_size']} | "
          f"{r['job'][k]['step_seconds'] / 60:.1f} | {r['job'][k]['final_loss']:.4f} | "
          f"{_temporal_text(r['job'][k])} | {_coin_text(r['job'][k])} |" for k, p in MODELS], "",
        "## Unconditional generation (plan sync)", "",
        "| | FVD proxy | per-frame FD | identity stability |", "|---|---|---|---|",
        f"| real held-out videos (the floor at {r['num']}) | {_fmt(real['real'], 'fvd_proxy')} | "
        f"{_fmt(real['real'], 'frame_fd')} | {_fmt(real['real'], 'identity_stability')} |",
        *[f"| {names[k]} | {_fmt(m[k]['sync'], 'fvd_proxy', 1)} ± {_fmt(m[k]['sync'], 'fvd_proxy_std', 1)} | "
          f"{_fmt(m[k]['sync'], 'frame_fd', 1)} | {_fmt(m[k]['sync'], 'identity_stability')} |" for k, _ in MODELS],
        "", "Four samples of each model (rows: p = 0, p = 0.2, p = 1); GIFs: "
        + ", ".join(f"[{names[k]}](video_sync_{k}.gif)" for k, _ in MODELS) + ".", "",
        "![unconditional samples](video_sync.png)", "",
        "## Zero-shot image-to-video and interpolation", "",
        "FVDM's per-frame conditioning (the given frames at t = 1/T, the reference's first noise level, "
        "re-estimated by DDIM at every step as the reference does) against the replacement trick (every frame at "
        "the grid time, the given frames noised to it before each call). The scores read the whole video, the "
        "re-estimated given frames included (the reference keeps them too); PSNR and SSIM only the new frames.",
        "",
        "| task | model, way | PSNR (dB) | SSIM | FVD proxy | identity stability |", "|---|---|---|---|---|---|"]
    for task, base in (("i2v", "copy_i2v"), ("interp", "blend_interp")):
        b = real[base]
        what = "the given frame repeated" if task == "i2v" else "the two given frames blended linearly"
        lines.append(f"| {task} | baseline: {what} | {_fmt(b, 'psnr')} | {_fmt(b, 'ssim', 3)} | "
                     f"{_fmt(b, 'fvd_proxy', 1)} | {_fmt(b, 'identity_stability')} |")
        for k, _ in MODELS:
            for way, name in (("per-frame t", task), ("replacement", f"replace_{task}")):
                s = m[k][name]
                lines.append(f"| {task} | {names[k]}, {way} | {_fmt(s, 'psnr')} ± {_fmt(s, 'psnr_std')} | "
                             f"{_fmt(s, 'ssim', 3)} | {_fmt(s, 'fvd_proxy', 1)} | {_fmt(s, 'identity_stability')} |")
    lines += ["", "Image-to-video: the first 4 rows are the held-out truth, then per model (p = 0, 0.2, 1) 4 rows "
              "per-frame t and 4 rows replacement:", "", "![i2v](video_i2v.png)", "",
              "Interpolation, in the same order:", "", "![interpolation](video_interp.png)", "",
              f"## Long video ({r['long']} frames, {windows}x the training length)", "",
              f"Windows of {f}: each new window is given the previous window's last {f // 2} frames at t = 1/T and "
              f"keeps {f - f // 2} new ones. Per-frame FD of each {f}-frame stretch against real frames (drift):", "",
              "| | " + " | ".join(f"frames {f * i}-{f * i + f - 1}" for i in range(windows)) + " |",
              "|---|" + "---|" * windows,
              "| real held-out videos | " + " | ".join(f"{v:.1f}" for v in real["real_long"]) + " |",
              *[f"| {names[k]} | " + " | ".join(f"{v:.1f}" for v in m[k]["long"]["window_frame_fd"]) + " |"
                for k, _ in MODELS], "",
              "The held-out truth's first 4 videos, then 4 per model (p = 0, 0.2, 1):", "",
              "![long video](video_long.png)", "",
              f"## The pyramid plan (frame i trails frame i - 1 by {PYRAMID_LAG} grid steps)", "",
              "| model | FVD proxy | per-frame FD | identity stability | FVD proxy under sync |",
              "|---|---|---|---|---|",
              *[f"| {names[k]} | {_fmt(m[k]['pyramid'], 'fvd_proxy', 1)} | {_fmt(m[k]['pyramid'], 'frame_fd', 1)} | "
                f"{_fmt(m[k]['pyramid'], 'identity_stability')} | {_fmt(m[k]['sync'], 'fvd_proxy', 1)} |"
                for k, _ in MODELS], "",
              "![pyramid](video_pyramid.png)", "",
              *old_sampler_section(r),
              "## METHODS.md's criteria", "",
              "| criterion | holds | numbers |", "|---|---|---|",
              *[f"| {c['criterion']} | {'yes' if c['holds'] else '**no**'} | {c['numbers']} |" for c in r["criteria"]],
              "", "## Verdict", "", "VERDICT", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--p0", default="runs/moving_digits_p0")
    ap.add_argument("--p02", default="runs/moving_digits")
    ap.add_argument("--p1", default="runs/moving_digits_p1")
    ap.add_argument("--num", type=int, default=100)
    ap.add_argument("--long", type=int, default=32)
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--only", choices=[k for k, _ in MODELS], help="evaluate one model's cells and stop")
    ap.add_argument("--samplers", default="reference,old",
                    help=f"comma-separated, from {', '.join(SAMPLERS)}: reference (FVDM's; the page's tables) and "
                         "old (before issue 26; a comparison section)")
    args = ap.parse_args()
    if args.num < 2:
        ap.error(f"--num must be >= 2 (an FD needs two samples), got {args.num}")
    samplers = [x.strip() for x in args.samplers.split(",") if x.strip()]
    if "reference" not in samplers or set(samplers) - set(SAMPLERS):
        ap.error(f"--samplers must include reference and name only {', '.join(SAMPLERS)}; got {args.samplers!r}")
    workdirs = {"p0": args.p0, "p02": args.p02, "p1": args.p1}
    keys = [args.only] if args.only else [k for k, _ in MODELS]
    try:
        runs = {k: load_run(workdirs[k]) for k in keys}
    except (FileNotFoundError, ValueError) as e:
        ap.error(str(e))
    for k, p in MODELS:
        if k in runs and abs(float(runs[k].config.diffusion.per_frame_prob) - p) > 1e-9:
            ap.error(f"--{k} {workdirs[k]} was trained at per_frame_prob "
                     f"{runs[k].config.diffusion.per_frame_prob}, not {p}")
    frames = next(iter(runs.values())).caps.frames
    if args.long < 4 * frames or args.long % frames:
        ap.error(f"--long must be a multiple of the {frames} training frames and at least 4x them, got {args.long}")
    t0 = time.time()
    models = {k: model_section(run, args.num, args.long) for k, run in runs.items()}
    old = {k: model_section(run, args.num, args.long, "old") for k, run in runs.items()} if "old" in samplers else {}
    if args.only:
        print(f"evaluated {args.only} in {time.time() - t0:.0f}s")
        return
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    r = {"command": f"python -m scripts.video_results --p0 {args.p0} --p02 {args.p02} --p1 {args.p1} "
                    f"--num {args.num} --long {args.long} --samplers {','.join(samplers)}",
         "num": args.num, "long": args.long, "frames": frames, "machine": machine(), "models": models,
         "old_sampler": old, "samplers": {k: SAMPLER_TEXT[k] for k in samplers},
         "job": {k: {"workdir": workdirs[k], **training(workdirs[k]), **trained_with(runs[k].config)}
                 for k in workdirs},
         "real": real_section(runs["p0"].config, args.num, frames, args.long)}
    figures(runs, out, args.long)
    r["criteria"] = criteria(r)
    r["wall_s"] = time.time() - t0
    files.write_text(out / "video_fvdm.json", json.dumps(r, indent=1, default=float) + "\n")
    write_keeping_verdict(out / "video_fvdm.md", markdown(r))
    print(f"wrote {out / 'video_fvdm.md'} in {r['wall_s']:.0f}s")


if __name__ == "__main__":
    main()
