r"""Writes a Stable Diffusion-family work directory out as a diffusers pipeline folder.

    python -m launch.export_weights --workdir runs/sd15_student --diffusers out/sd15_student [--ckpt 2000]
    # then, anywhere: StableDiffusionPipeline.from_pretrained("out/sd15_student")

An imported, fine-tuned or distilled SD run: its UNet (the run's checkpoint), text encoder, VAE,
tokenizer, and the scheduler of its sampler (what diffusers has no scheduler for, such as a time
shift or attention reuse, is left out with a note). Runs diffusers has no pipeline for (digits,
the scenes' BERT model) are refused with the reason. An existing folder is kept unless
``--overwrite`` (``orchestration.generation.export``).
"""

from __future__ import annotations

from absl import flags

from launch import cli

flags.DEFINE_string("workdir", None, "A Stable Diffusion-family work directory (imported, fine-tuned or distilled).")
flags.DEFINE_string("diffusers", None, "The diffusers folder to write.")
flags.DEFINE_string("ckpt", "latest", "Checkpoint step, or 'latest'.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --diffusers folder.")
flags.mark_flags_as_required(["workdir", "diffusers"])
FLAGS = flags.FLAGS


def main(argv):
    from orchestration.generation.export import export_diffusers

    record = export_diffusers(FLAGS.workdir, FLAGS.diffusers, ckpt=FLAGS.ckpt, overwrite=FLAGS.overwrite)
    for note in record["notes"]:
        print(f"note: {note}")
    print(f"exported {FLAGS.workdir} (checkpoint {record['step']}) to {FLAGS.diffusers} "
          f"(scheduler: {record['scheduler']})")


MAIN = cli.with_clean_errors(main)

if __name__ == "__main__":
    cli.run(MAIN)
