r"""Distils a trained teacher into a few-step student (docs/design/distillation.md).

    python -m launch.distill --config configs/digits_progressive.py --workdir runs/digits_progressive
    python -m launch.distill --config configs/digits_guided.py:smoke --workdir /tmp/smoke \
        --config.distill.teacher_workdir=runs/digits_v

The teacher is ``distill.teacher_workdir`` (its EMA params at the latest checkpoint and
its saved config). Re-running with the same ``--workdir`` resumes. The student work
directory is an ordinary one for ``launch.sample`` and ``launch.evaluate``.
"""

from __future__ import annotations

from launch import cli

cli.define_run_flags("Distillation")


def distill(config, workdir):
    from launch.distill_experiment import distill as distill_experiment

    if config.get("distill") is None:
        raise ValueError("this config has no distill section: use launch.train for plain training, "
                         "or a distillation config such as configs/digits_progressive.py")
    distill_experiment(config, workdir)


MAIN = cli.training_main(distill)

if __name__ == "__main__":
    cli.run(MAIN)
