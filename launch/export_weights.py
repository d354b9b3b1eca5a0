r"""Writes a Stable Diffusion-family work directory out as a diffusers pipeline folder.

    python -m launch.export_weights --workdir runs/sd15_student --diffusers out/sd15_student [--ckpt 2000]
    # then, anywhere: StableDiffusionPipeline.from_pretrained("out/sd15_student")
    python -m launch.export_weights --workdir runs/sd15_lora --lora_file out/sd15_lora.safetensors
    # then: pipe.load_lora_weights("out/sd15_lora.safetensors") on the base model

An imported, fine-tuned or distilled SD run: its UNet (the run's checkpoint), text encoder, VAE,
tokenizer, and the scheduler of its sampler (what diffusers has no scheduler for, such as a time
shift or attention reuse, is left out with a note). Runs diffusers has no pipeline for (digits,
the scenes' BERT model) are refused with the reason. An existing folder is kept unless
``--overwrite`` (``orchestration.generation.export``). A run trained with LoRA
(``train.lora_rank > 0``) also writes its adapters as a diffusers LoRA file with ``--lora_file``
(``orchestration.generation.export_lora``); give either output or both.
"""

from __future__ import annotations

from absl import flags

from launch import cli

flags.DEFINE_string("workdir", None, "A Stable Diffusion-family work directory (imported, fine-tuned or distilled).")
flags.DEFINE_string("diffusers", None, "The diffusers pipeline folder to write.")
flags.DEFINE_string("lora_file", None, "A run trained with LoRA: the .safetensors LoRA file of its adapters to write "
                    "(diffusers' load_lora_weights format).")
flags.DEFINE_string("ckpt", "latest", "Checkpoint step, or 'latest'.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --diffusers folder or --lora_file.")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def main(argv):
    from orchestration.generation.export import export_outputs

    for line in export_outputs(FLAGS.workdir, FLAGS.diffusers, FLAGS.lora_file, ckpt=FLAGS.ckpt,
                               overwrite=FLAGS.overwrite):
        print(line)


MAIN = cli.with_clean_errors(main)

if __name__ == "__main__":
    cli.run(MAIN)
