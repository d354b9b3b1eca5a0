r"""Samples a trained work directory with any solver and sampling transform.

    python -m launch.sample --workdir runs/digits --solver ddim --steps 20 --num 1000 \
        [--ckpt 2500] [--guidance 2.0] [--time_shift=80,300] [--seed 0] \
        [--attention_reuse hurry:5] [--feature_cache uniform:3 --cache_branch 0]

Writes ``<workdir>/samples/<tag>_ckpt<step>_seed<seed>.npz`` (uint8 ``images [N, H, W, C]``,
``labels [N]``, and the settings) and a PNG grid of the first 100 beside it.
"""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np
from absl import flags

from launch import cli

flags.DEFINE_string("workdir", None, "A trained work directory.")
flags.DEFINE_string("solver", None, "Solver: ddpm, ddim, spndm, fpndm, dpmpp2m, dpmpp3m, consistency "
                    "(default: the run's config.sample.solver; ddim for trained models).")
flags.DEFINE_integer("steps", None, "Sampling steps (default: the run's config.sample.steps: 50 for trained "
                     "models, the distilled step count for students).")
flags.DEFINE_string("grid", None, "Time grid: uniform, trailing, quadratic, logsnr (default: the run's).")
flags.DEFINE_integer("num", 1000, "Number of samples.")
flags.DEFINE_string("ckpt", "latest", "Checkpoint step, or 'latest'.")
flags.DEFINE_float("guidance", None, "Classifier-free guidance scale (class-conditional models); the w of a "
                   "guided-distillation student (default: the run's config.sample.guidance).")
flags.DEFINE_string("time_shift", None, "Time-shift sampler WINDOW,CUTOFF in training steps, e.g. 80,300.")
flags.DEFINE_enum("time_shift_mode", "query", ["query", "destination"], "Paper form or released-code form.")
flags.DEFINE_float("eta", None, "DDIM eta.")
flags.DEFINE_string("attention_reuse", None, "Attention-map reuse: hurry:K, phast:K (from launch.phast), "
                    "steps:I,J,... or block:K,START.")
flags.DEFINE_string("feature_cache", None, "Feature caching: uniform:N or nonuniform:N,CENTER.")
flags.DEFINE_integer("cache_branch", 0, "Skip branch of the feature cache (0 = shallowest, fastest).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("batch_size", 500, "Samples per compiled batch.")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def parse_time_shift(text: str | None) -> tuple[float, float] | None:
    """``"WINDOW,CUTOFF"`` -> ``(window, cutoff)``; ``None`` / ``"off"`` -> None."""
    if text is None or text.lower() == "off":
        return None
    parts = text.replace(":", ",").split(",")
    try:
        window, cutoff = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"time shift must be WINDOW,CUTOFF in training steps (e.g. 80,300), got {text!r}") from None
    if window < 0 or cutoff < 0:
        raise ValueError(f"time-shift window and cutoff must be >= 0, got {text!r}")
    return window, cutoff


def main(argv):
    from diffusion.metrics.grid import save_grid, to_uint8
    from launch.generate import SamplerSpec, class_labels, generate
    from launch.run_loader import load_run
    from sampling.solvers import SOLVERS

    run = load_run(FLAGS.workdir)
    defaults = run.config.sample
    solver = FLAGS.solver or defaults.solver
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; available: {', '.join(sorted(SOLVERS))}")
    guidance = FLAGS.guidance if FLAGS.guidance is not None else defaults.get("guidance")
    spec = SamplerSpec(solver, FLAGS.steps or defaults.steps, FLAGS.grid or defaults.grid, guidance,
                       parse_time_shift(FLAGS.time_shift), FLAGS.time_shift_mode, FLAGS.eta, FLAGS.attention_reuse,
                       FLAGS.feature_cache, FLAGS.cache_branch)
    step = run.select(FLAGS.ckpt)[0]
    params = run.params(step)
    labels = class_labels(FLAGS.num, run.num_classes)
    t0 = time.perf_counter()
    images = generate(run.denoiser, params, run.info.image_shape, FLAGS.num, spec, batch_size=FLAGS.batch_size,
                      seed=FLAGS.seed, labels=labels, null_label=run.num_classes, progress=True,
                      workdir=FLAGS.workdir)
    seconds = time.perf_counter() - t0
    out = pathlib.Path(FLAGS.workdir) / "samples" / f"{spec.tag()}_ckpt{step}_seed{FLAGS.seed}"
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {"ckpt": step, "seed": FLAGS.seed, "num": FLAGS.num, "seconds": seconds, **spec.__dict__}
    np.savez_compressed(out.with_suffix(".npz"), images=to_uint8(images),
                        labels=labels if labels is not None else np.zeros(0, np.int32),
                        settings=json.dumps(settings))
    save_grid(images[:100], out.with_suffix(".png"), nrow=run.num_classes or None,
              scale=max(1, 32 // run.info.image_shape[0]))
    print(f"wrote {out.with_suffix('.npz')} and {out.with_suffix('.png')} ({FLAGS.num} samples, {seconds:.1f}s)")


if __name__ == "__main__":
    cli.run(cli.with_clean_errors(main))
