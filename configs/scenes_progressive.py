"""Progressive distillation of the digit-scenes text-to-image model (``configs/scenes.py``)
into a 4-step student: 32 -> 16 -> 8 -> 4 DDIM steps, without guidance (the student
learns the conditional teacher; docs/results/scenes.md).

    python -m launch.distill --config configs/scenes_progressive.py --workdir runs/scenes_progressive
    python -m launch.evaluate --workdir runs/scenes_progressive

The teacher's text encoder, tokenizer and VAE are copied into the student's work directory.
"""

from configs.common import distill_config, shrink_distill_for_smoke


def get_config(arg: str | None = None):
    c = distill_config("progressive", teacher_workdir="runs/scenes")
    c.distill.update(start_steps=32, rounds=3, steps_per_round=200)
    c.train.batch_size = 32
    if arg == "smoke":
        shrink_distill_for_smoke(c)
    elif arg:
        raise ValueError(f"unknown variant {arg!r} of configs/scenes_progressive.py; use '' or 'smoke'")
    return c
