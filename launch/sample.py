r"""Samples a trained work directory with any solver and sampling transform.

    python -m launch.sample --workdir runs/digits --solver ddim --steps 20 --num 1000 \
        [--ckpt 2500] [--guidance 2.0] [--time_shift=80,300] [--seed 0] \
        [--attention_reuse hurry:5] [--feature_cache uniform:3 --cache_branch 0]
    python -m launch.sample --workdir runs/sd15 --prompt "a photo of a cat" [--prompt ...] \
        [--prompts_file prompts.txt] [--negative_prompt "blurry"] --guidance 7.5 --num 4
    python -m launch.sample --workdir runs/moving_digits --plan i2v [--given_frames 0] \
        [--source heldout]    # also --plan sync, interp, long:64, pyramid:2

Unset sampler flags keep the run's ``config.sample.sampler``; one flag exists per
registered sampling part and knob (``--helpfull`` lists them). Writes
``<workdir>/samples/<tag>_ckpt<step>_seed<seed>_n<num>.npz`` (uint8 ``images [N, H, W, C]``,
``labels [N]``, ``prompts [N]`` of a text model, and the settings) and a PNG grid of the
first 100 beside it; an existing file is kept unless ``--overwrite``. A text model's
samples cycle through the prompts; guidance's null condition is the negative prompt
(empty by default); a latent model's samples are decoded through its VAE. A video model
writes ``images [N, L, H, W, C]``, a filmstrip PNG (one video per row) and an animated GIF;
a plan that gives frames takes them from the ``--source`` split's first ``N`` videos and
stores them as ``truth`` (the ground truth, as long as the samples).

On a TPU pod or several GPU hosts run the same command on every worker with
``--multihost`` (or ``--coordinator``, ``--num_processes``, ``--process_id``): every
process samples its devices' rows of each batch and process 0 alone writes.
"""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np
from absl import flags

from launch import cli, files

flags.DEFINE_string("workdir", None, "A trained work directory.")
cli.define_sampler_flags()
flags.adopt_module_key_flags(cli)  # the generated sampler flags show in --help
flags.DEFINE_integer("num", 1000, "Number of samples.")
flags.DEFINE_string("ckpt", "latest", "Checkpoint step, or 'latest'.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("batch_size", 500, "Samples per compiled batch.")
cli.define_prompt_flags()
flags.DEFINE_string("source", "heldout", "A video plan's given frames come from this split of the run's dataset.")
flags.DEFINE_bool("overwrite", False, "Replace an existing output file of the same sampler, checkpoint, seed and num.")
cli.define_distributed_flags()
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


def sample_name(spec_tag: str, step: int, prompts: list[str], negative_prompt: str) -> str:
    """The output name; prompts add a short hash of themselves (several prompt sets
    of one sampler never overwrite each other)."""
    name = f"{spec_tag}_ckpt{step}_seed{FLAGS.seed}_n{FLAGS.num}"
    if prompts:
        import hashlib

        digest = hashlib.sha256(json.dumps([prompts, negative_prompt]).encode()).hexdigest()[:8]
        name += f"_prompts{digest}"
    return name


def main(argv):
    cli.join_distributed()
    import jax

    from diffusion.metrics.grid import save_grid, to_uint8
    from launch.generate import all_devices_mesh, check_prompts, cycled_prompts, draw
    from launch.phast_files import external_for
    from launch.records import record_fields
    from launch.run_loader import load_run
    from launch.video import needs_truth, save_gif, truth_videos, video_length
    from sampling.spec import SamplerSpec

    if FLAGS.num < 1 or FLAGS.batch_size < 1:
        raise ValueError(f"--num and --batch_size must be >= 1, got {FLAGS.num} and {FLAGS.batch_size}")
    prompts = cli.read_prompts()
    run = load_run(FLAGS.workdir)
    check_prompts(run, prompts)  # before the parameters are read
    spec = SamplerSpec.parse(run.config.sample.sampler).merged(cli.sampler_overrides())
    spec.build(run.denoiser, run.caps, external_for(run.workdir, spec))  # a bad sampler fails now
    truth = None
    if run.caps.frames is not None and needs_truth(spec, run.caps.frames):
        truth = truth_videos(run.config, FLAGS.source, FLAGS.num, video_length(spec, run.caps.frames))
    elif FLAGS["source"].present:
        raise ValueError("--source names the split a video plan's given frames come from; this sampler gives none "
                         "(use --plan i2v or interp, or --given_frames with a plan)")
    step = run.select(FLAGS.ckpt)[0]
    name = sample_name(spec.tag(), step, prompts, FLAGS.negative_prompt)  # tags may hold dots (eta0.5)
    if truth is not None:
        name += f"_{FLAGS.source}"
    npz, png = (pathlib.Path(FLAGS.workdir) / "samples" / f"{name}.{ext}" for ext in ("npz", "png"))
    if npz.exists() and not FLAGS.overwrite:
        raise FileExistsError(f"{npz} exists; pass --overwrite to sample it again and replace it")
    writer = jax.process_index() == 0
    if writer:
        check_writable(npz.parent)
    params = run.params(step)
    t0 = time.perf_counter()
    images, conds = draw(run, params, spec, FLAGS.num, seed=FLAGS.seed, batch_size=FLAGS.batch_size,
                         prompts=prompts, negative_prompt=FLAGS.negative_prompt, progress=True,
                         external=external_for(run.workdir, spec), truth=truth, mesh=all_devices_mesh())
    seconds = time.perf_counter() - t0
    if not writer:
        return
    settings = {"ckpt": step, "seed": FLAGS.seed, "num": FLAGS.num, "seconds": seconds, **record_fields(spec)}
    if prompts:
        settings["negative_prompt"] = FLAGS.negative_prompt
    if truth is not None:
        settings["source"] = FLAGS.source
    extra = {} if truth is None else {"truth": to_uint8(truth)}
    with files.replacing(npz) as f:  # a killed run leaves no half file that a rerun would refuse to replace
        np.savez_compressed(f, images=to_uint8(images), **extra,
                            labels=conds.get("label", np.zeros(0, np.int32)),
                            prompts=np.asarray(cycled_prompts(FLAGS.num, prompts) if prompts else [], dtype=str),
                            settings=json.dumps(settings))
    if images.ndim == 5:  # videos [N, F, H, W, C]: a filmstrip, one video per row, and a GIF
        save_grid(images[:16].reshape(-1, *images.shape[2:]), png, nrow=images.shape[1],
                  scale=max(1, 32 // images.shape[2]))
        gif = png.with_suffix(".gif")
        save_gif(to_uint8(images), gif)
        print(f"wrote {npz}, {png} and {gif} ({FLAGS.num} videos, {seconds:.1f}s)")
        return
    save_grid(images[:100], png, nrow=run.num_classes or None, scale=max(1, 32 // images.shape[1]))
    print(f"wrote {npz} and {png} ({FLAGS.num} samples, {seconds:.1f}s)")


MAIN = cli.with_clean_errors(main)

if __name__ == "__main__":
    cli.run(MAIN)
