r"""Merges LoRA files into a new work directory of a Stable Diffusion-family run.

    python -m launch.merge_lora --workdir runs/sd15 --lora style.safetensors:0.8 [--lora more.safetensors] \
        --out runs/sd15_style
    python -m launch.sample --workdir runs/sd15_style --prompt "..."     # as --lora would, without it

LoRA files in diffusers / PEFT format (``save_lora_weights``) or kohya / A1111 format; each
``FILE[:SCALE]`` (scale 1 by default). A key that matches no tensor of the model is an error
naming it; nothing is written then, and ``--out`` must be new or empty
(``orchestration.generation.merge_lora``).
"""

from __future__ import annotations

from absl import flags

from launch import cli

flags.DEFINE_string("workdir", None, "A Stable Diffusion-family work directory.")
flags.DEFINE_multi_string("lora", [], "A LoRA file, FILE or FILE:SCALE; repeat for several.")
flags.DEFINE_string("out", None, "The new work directory.")
flags.DEFINE_string("ckpt", "latest", "Checkpoint step, or 'latest'.")
flags.mark_flags_as_required(["workdir", "out"])
FLAGS = flags.FLAGS


def main(argv):
    from diffusion.convert.lora import parse_lora_spec
    from orchestration.generation.merge_lora import merge_loras

    record = merge_loras(FLAGS.workdir, [parse_lora_spec(t) for t in FLAGS.lora], FLAGS.out, ckpt=FLAGS.ckpt)
    merged = ", ".join(f"{r['file']} x {r['scale']:g}" for r in record["loras"])
    print(f"merged {merged} into checkpoint {record['step']} of {FLAGS.workdir}: wrote {FLAGS.out}")


MAIN = cli.with_clean_errors(main)

if __name__ == "__main__":
    cli.run(MAIN)
