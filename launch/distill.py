r"""Distils a trained teacher into a few-step student (docs/design/distillation.md).

    python -m launch.distill --config configs/digits_progressive.py --workdir runs/digits_progressive
    python -m launch.distill --config configs/digits_guided.py:smoke --workdir /tmp/smoke \
        --config.distill.teacher_workdir=runs/digits_v

The teacher is ``distill.teacher_workdir`` (its EMA params at the latest checkpoint and
its saved config). Re-running with the same ``--workdir`` resumes. The student work
directory is an ordinary one for ``launch.sample`` and ``launch.evaluate``.
"""

from __future__ import annotations

from absl import flags

from launch import cli

cli.define_run_flags("Distillation")
flags.adopt_module_key_flags(cli)  # every flag defined through cli shows in --help


def distill(config, workdir):
    from orchestration.experiments.distillation import distill as distill_experiment

    distill_experiment(config, workdir)


MAIN = cli.training_main(distill)

if __name__ == "__main__":
    cli.run(MAIN)
