r"""Samples a trained work directory with any solver and sampling transform.

    python -m launch.sample --workdir runs/digits --solver ddim --steps 20 --num 1000 \
        [--ckpt 2500] [--guidance 2.0] [--time_shift=80,300] [--seed 0] \
        [--attention_reuse hurry:5] [--feature_cache uniform:3 --cache_branch 0]

Unset sampler flags keep the run's ``config.sample.sampler``; one flag exists per
registered sampling part and knob (``--helpfull`` lists them). Writes
``<workdir>/samples/<tag>_ckpt<step>_seed<seed>.npz`` (uint8 ``images [N, H, W, C]``,
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
cli.define_sampler_flags()
flags.adopt_module_key_flags(cli)  # the generated sampler flags show in --help
flags.DEFINE_integer("num", 1000, "Number of samples.")
flags.DEFINE_string("ckpt", "latest", "Checkpoint step, or 'latest'.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("batch_size", 500, "Samples per compiled batch.")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def main(argv):
    from diffusion.metrics.grid import save_grid, to_uint8
    from launch.generate import class_labels, generate
    from launch.phast_files import external_for
    from launch.records import record_fields
    from launch.run_loader import load_run
    from sampling.spec import SamplerSpec

    run = load_run(FLAGS.workdir)
    spec = SamplerSpec.parse(run.config.sample.sampler).merged(cli.sampler_overrides())
    step = run.select(FLAGS.ckpt)[0]
    params = run.params(step)
    labels = class_labels(FLAGS.num, run.num_classes)
    t0 = time.perf_counter()
    images = generate(run.denoiser, params, run.info.image_shape, FLAGS.num, spec, run.caps,
                      batch_size=FLAGS.batch_size, seed=FLAGS.seed, labels=labels, progress=True,
                      external=external_for(run.workdir, spec))
    seconds = time.perf_counter() - t0
    out = pathlib.Path(FLAGS.workdir) / "samples" / f"{spec.tag()}_ckpt{step}_seed{FLAGS.seed}"
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {"ckpt": step, "seed": FLAGS.seed, "num": FLAGS.num, "seconds": seconds, **record_fields(spec)}
    np.savez_compressed(out.with_suffix(".npz"), images=to_uint8(images),
                        labels=labels if labels is not None else np.zeros(0, np.int32),
                        settings=json.dumps(settings))
    save_grid(images[:100], out.with_suffix(".png"), nrow=run.num_classes or None,
              scale=max(1, 32 // run.info.image_shape[0]))
    print(f"wrote {out.with_suffix('.npz')} and {out.with_suffix('.png')} ({FLAGS.num} samples, {seconds:.1f}s)")


if __name__ == "__main__":
    cli.run(cli.with_clean_errors(main))
