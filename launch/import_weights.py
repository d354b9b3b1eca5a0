r"""Imports a local diffusers Stable Diffusion pipeline folder as a Kairos work directory.

    python -m launch.import_weights --diffusers ~/models/sd-1.5 --workdir runs/sd15
    python -m launch.sample --workdir runs/sd15 --prompt "a photo of a cat" --guidance 7.5 --num 4

The folder is what ``StableDiffusionPipeline.save_pretrained`` writes (``model_index.json``,
``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``); nothing is
downloaded. Every tensor is converted and checked before anything is written; a
missing sub-folder, an unsupported option or a missing, unknown or mis-shaped key is an
error that names it. ``--workdir`` must be new or empty (``orchestration.weights.importer``).
"""

from __future__ import annotations

from absl import flags

from launch import cli

flags.DEFINE_string("diffusers", None, "A local diffusers pipeline folder (SD 1.x / 2.x).")
flags.DEFINE_string("workdir", None, "The new work directory.")
flags.DEFINE_string("variant", None, "Read the fp16 or bf16 weight files (diffusion_pytorch_model.fp16.safetensors, "
                    "...); a folder holding only one variant's files reads those without it.")
flags.DEFINE_string("dtype", "float32", "The run's compute dtype: float32 or bfloat16 (parameters are stored in "
                    "float32 whatever the files hold).")
flags.mark_flags_as_required(["diffusers", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    from orchestration.weights.importer import describe_weights, import_pipeline

    record = import_pipeline(FLAGS.diffusers, FLAGS.workdir, variant=FLAGS.variant, dtype=FLAGS.dtype)
    print(describe_weights(record))
    for note in record["notes"]:
        print(f"note: {note}")
    print(f"imported {FLAGS.diffusers} into {FLAGS.workdir} (default sampler: {record['sampler']})")


MAIN = cli.with_clean_errors(main)

if __name__ == "__main__":
    cli.run(MAIN)
