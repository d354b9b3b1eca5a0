r"""Samples a trained work directory with any solver and sampling transform.

    python -m launch.sample --workdir runs/digits --solver ddim --steps 20 --num 1000 \
        [--ckpt 2500] [--guidance 2.0] [--time_shift=80,300] [--seed 0] \
        [--attention_reuse hurry:5] [--feature_cache uniform:3 --cache_branch 0]

Unset sampler flags keep the run's ``config.sample.sampler``; one flag exists per
registered sampling part and knob (``--helpfull`` lists them). Writes
``<workdir>/samples/<tag>_ckpt<step>_seed<seed>_n<num>.npz`` (uint8 ``images [N, H, W, C]``,
``labels [N]``, and the settings) and a PNG grid of the first 100 beside it; an existing
file is kept unless ``--overwrite``.
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
flags.DEFINE_bool("overwrite", False, "Replace an existing output file of the same sampler, checkpoint, seed and num.")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def check_writable(directory: pathlib.Path) -> None:
    """Fails now, not after sampling, when ``directory`` cannot take the output."""
    import tempfile

    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.NamedTemporaryFile(dir=directory).close()
    except OSError as e:
        raise OSError(f"cannot write the samples to {directory}: {e.strerror or e}") from None


def main(argv):
    from diffusion.metrics.grid import save_grid, to_uint8
    from launch.generate import class_labels, generate
    from launch.phast_files import external_for
    from launch.records import record_fields
    from launch.run_loader import load_run
    from sampling.spec import SamplerSpec

    if FLAGS.num < 1 or FLAGS.batch_size < 1:
        raise ValueError(f"--num and --batch_size must be >= 1, got {FLAGS.num} and {FLAGS.batch_size}")
    run = load_run(FLAGS.workdir)
    spec = SamplerSpec.parse(run.config.sample.sampler).merged(cli.sampler_overrides())
    spec.build(run.denoiser, run.caps, external_for(run.workdir, spec))  # a bad sampler fails now
    step = run.select(FLAGS.ckpt)[0]
    name = f"{spec.tag()}_ckpt{step}_seed{FLAGS.seed}_n{FLAGS.num}"  # tags may hold dots (eta0.5)
    npz, png = (pathlib.Path(FLAGS.workdir) / "samples" / f"{name}.{ext}" for ext in ("npz", "png"))
    if npz.exists() and not FLAGS.overwrite:
        raise FileExistsError(f"{npz} exists; pass --overwrite to sample it again and replace it")
    check_writable(npz.parent)
    params = run.params(step)
    labels = class_labels(FLAGS.num, run.num_classes)
    t0 = time.perf_counter()
    images = generate(run.denoiser, params, run.info.image_shape, FLAGS.num, spec, run.caps,
                      batch_size=FLAGS.batch_size, seed=FLAGS.seed, labels=labels, progress=True,
                      external=external_for(run.workdir, spec))
    seconds = time.perf_counter() - t0
    settings = {"ckpt": step, "seed": FLAGS.seed, "num": FLAGS.num, "seconds": seconds, **record_fields(spec)}
    np.savez_compressed(npz, images=to_uint8(images),
                        labels=labels if labels is not None else np.zeros(0, np.int32),
                        settings=json.dumps(settings))
    save_grid(images[:100], png, nrow=run.num_classes or None,
              scale=max(1, 32 // run.info.image_shape[0]))
    print(f"wrote {npz} and {png} ({FLAGS.num} samples, {seconds:.1f}s)")


MAIN = cli.with_clean_errors(main)

if __name__ == "__main__":
    cli.run(MAIN)
