r"""Training steps per second of the digit-scenes job with and without cached encodings
(``data.cache_encodings``), side by side in one run, and what building the cache costs.

    python -m benchmarks.encodings_cache [--steps 100] [--segments 2] [--workdir runs/bench_encodings]
        [--out docs/encodings_cache.json]

The scenes job's UNet, text encoder and VAE (``configs/scenes.py`` on a VAE of
``configs/scenes_vae.py``'s architecture, trained one step here: its speed, not its quality,
matters) are trained by ``launch.train``'s own code in two work directories, one caching its
encodings. Segments of ``--steps`` steps alternate between the two (resumed runs), so the
machine's drifts hit both; steps/s are the loop's own logged windows of 25 steps (sample
grids and checkpoints excluded), the first window of each segment (compiles) dropped, and
the median taken.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys

import jax

from benchmarks.common import emit, machine

WINDOW = 25


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=100, help="steps per segment (a multiple of 25)")
    ap.add_argument("--segments", type=int, default=2, help="segments per configuration, alternating")
    ap.add_argument("--workdir", default="runs/bench_encodings")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.steps < 2 * WINDOW or args.steps % WINDOW:
        ap.error(f"--steps must be a multiple of {WINDOW}, at least {2 * WINDOW}")
    if args.segments < 1:
        ap.error("--segments must be >= 1")
    if args.out and pathlib.Path(args.out).is_dir():
        ap.error(f"--out {args.out} is a folder; name the JSON file to write")

    from configs.scenes import get_config
    from configs.scenes_vae import get_config as vae_config
    from orchestration.experiments.training import train

    root = pathlib.Path(args.workdir)
    vae = root / "vae"
    if not (vae / "checkpoints").exists():
        c = vae_config()
        c.train.num_steps, c.train.ckpt_every = 1, 1
        train(c, vae, progress=False)
    devices = jax.devices()[:1]
    per_step: dict[str, list[float]] = {"uncached": [], "cached": []}
    for segment in range(1, args.segments + 1):
        for name in per_step:
            c = get_config()
            c.latent.vae = str(vae)
            c.data.cache_encodings = name == "cached"
            c.train.num_steps = segment * args.steps
            c.train.log_every, c.train.ckpt_every, c.train.sample_every = WINDOW, args.steps, 0
            train(c, root / name, progress=False, devices=devices)
            rows = [json.loads(line) for line in (root / name / "metrics.jsonl").read_text().splitlines()]
            windows = [r["steps_per_sec"] for r in rows if "steps_per_sec" in r
                       and (segment - 1) * args.steps + WINDOW < r["step"] <= segment * args.steps]
            per_step[name] += windows
    manifest = json.loads((root / "cached" / "encodings" / "manifest.json").read_text())
    medians = {k: statistics.median(v) for k, v in per_step.items()}
    result = {"machine": machine(), "command": " ".join(["python -m benchmarks.encodings_cache", *(sys.argv[1:] if argv is None else argv)]),
              "steps_per_sec": medians, "windows": per_step, "speedup": medians["cached"] / medians["uncached"],
              "cache_build_s": manifest["seconds"], "examples": manifest["rows"],
              "distinct_captions": manifest["captions"], "batch_size": get_config().train.batch_size}
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
