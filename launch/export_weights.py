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
    import pathlib

    from orchestration.build.run_loader import load_run
    from orchestration.generation.export import export_diffusers
    from orchestration.generation.export_lora import check_lora_out, export_lora, lora_rank

    if not (FLAGS.diffusers or FLAGS.lora_file):
        raise ValueError("nothing to write: give --diffusers OUT (a pipeline folder), --lora_file OUT.safetensors "
                         "(a LoRA-trained run's adapters), or both")
    if FLAGS.lora_file:  # checked before the folder is written
        check_lora_out(pathlib.Path(FLAGS.lora_file), FLAGS.overwrite)
        run = load_run(FLAGS.workdir)
        lora_rank(run)
        step = run.select(FLAGS.ckpt)[0]
    if FLAGS.diffusers:
        record = export_diffusers(FLAGS.workdir, FLAGS.diffusers, ckpt=FLAGS.ckpt, overwrite=FLAGS.overwrite)
        for note in record["notes"]:
            print(f"note: {note}")
        print(f"exported {FLAGS.workdir} (checkpoint {record['step']}) to {FLAGS.diffusers} "
              f"(scheduler: {record['scheduler']})")
    if FLAGS.lora_file:
        record = export_lora(run, FLAGS.lora_file, step, overwrite=FLAGS.overwrite)
        for note in record["notes"]:
            print(f"note: {note}")
        print(f"wrote the rank-{record['rank']} LoRA (alpha {record['alpha']:g}) of {record['modules']} modules of "
              f"{FLAGS.workdir} (checkpoint {step}) to {FLAGS.lora_file}")


MAIN = cli.with_clean_errors(main)

if __name__ == "__main__":
    cli.run(MAIN)
