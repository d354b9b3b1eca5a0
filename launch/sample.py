r"""Samples a trained work directory with any solver and sampling transform.

    python -m launch.sample --workdir runs/digits --solver ddim --steps 20 --num 1000 \
        [--ckpt 2500] [--guidance 2.0] [--time_shift=80,300] [--seed 0] \
        [--attention_reuse hurry:5] [--feature_cache uniform:3 --cache_branch 0]
    python -m launch.sample --workdir runs/sd15 --prompt "a photo of a cat" [--prompt ...] \
        [--prompts_file prompts.txt] [--negative_prompt "blurry"] --guidance 7.5 --num 4 \
        [--initial_noise latents.npy]   # diffusers' latents, [N, H, W, C]: diffusers' image
        [--lora style.safetensors:0.8 --lora detail.safetensors]
        [--prompt_2 "..." --negative_prompt_2 "..." --original_size 1024,1024 --crop 0,0 --target_size 1024,1024]  # SDXL
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

from absl import flags

from launch import cli

flags.DEFINE_string("workdir", None, "A trained work directory.")
cli.define_sampler_flags()
flags.DEFINE_integer("num", None, "Number of samples (default: the run's config.sample.num).")
flags.DEFINE_string("ckpt", "latest", "Checkpoint step, or 'latest'.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("batch_size", 500, "Samples per compiled batch.")
cli.define_prompt_flags()
flags.DEFINE_string("source", None, "A video plan's given frames come from this split of the run's dataset "
                    "(default: heldout).")
flags.DEFINE_string("initial_noise", None, "A .npy of standard-normal noise [N, H, W, C] to start from: diffusers' "
                    "latents= (before init_noise_sigma), transposed to channels last; N is --num.")
flags.DEFINE_multi_string("lora", [], "A LoRA file (diffusers / PEFT or kohya format) added to an SD-family run's "
                          "UNet and text encoder, as FILE or FILE:SCALE; repeat for several.")
flags.DEFINE_multi_string("prompt_2", [], "SDXL: the second text encoder's prompt (default: --prompt); repeat "
                          "as --prompt.")
flags.DEFINE_string("negative_prompt_2", "", "SDXL: the second text encoder's negative prompt (default: "
                    "--negative_prompt).")
flags.DEFINE_string("original_size", None, "SDXL's size conditioning H,W (default: the image size).")
flags.DEFINE_string("crop", None, "SDXL's crop-corner conditioning TOP,LEFT (default: 0,0).")
flags.DEFINE_string("target_size", None, "SDXL's target-size conditioning H,W (default: the image size).")
flags.DEFINE_bool("overwrite", False, "Replace an existing output file of the same sampler, checkpoint, seed and num.")
cli.define_distributed_flags()
flags.adopt_module_key_flags(cli)  # every flag defined through cli shows in --help
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def _pair(name: str, lo: int):
    text = getattr(FLAGS, name)
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 2 or min(values) < lo:
        raise ValueError(f"--{name} takes two integers >= {lo} as A,B, got {text!r}")
    return values


def sdxl_options() -> dict:
    """The SDXL flags that are set, as ``draw``'s ``sdxl`` options."""
    out = {}
    if FLAGS.prompt_2:
        out["prompts_2"] = list(FLAGS.prompt_2)
    if FLAGS.negative_prompt_2:
        out["negative_prompt_2"] = FLAGS.negative_prompt_2
    for name, key, lo in (("original_size", "original_size", 1), ("crop", "crop", 0), ("target_size", "target_size", 1)):
        if getattr(FLAGS, name) is not None:
            out[key] = _pair(name, lo)
    return out


def main(argv):
    cli.join_distributed()
    from diffusion.convert.lora import parse_lora_spec
    from orchestration.generation.write_samples import write_samples

    written = write_samples(FLAGS.workdir, overrides=cli.sampler_overrides(), num=FLAGS.num, ckpt=FLAGS.ckpt,
                            seed=FLAGS.seed, batch_size=FLAGS.batch_size, prompts=cli.read_prompts(),
                            negative_prompt=FLAGS.negative_prompt, source=FLAGS.source, overwrite=FLAGS.overwrite,
                            initial_noise=FLAGS.initial_noise, loras=[parse_lora_spec(t) for t in FLAGS.lora],
                            sdxl=sdxl_options())
    if written.paths:
        print(written.summary())


MAIN = cli.with_clean_errors(main)

if __name__ == "__main__":
    cli.run(MAIN)
