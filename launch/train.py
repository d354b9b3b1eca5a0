r"""Trains a diffusion model from a config file into a work directory.

    python -m launch.train --config configs/digits.py --workdir runs/digits
    python -m launch.train --config configs/digits.py:smoke --workdir /tmp/smoke \
        --config.train.num_steps=40

Re-running with the same ``--workdir`` resumes from the latest checkpoint. On a TPU VM
or several GPU hosts, run the same command on every worker with ``--multihost``.
"""

from __future__ import annotations

from absl import flags

from launch import cli

cli.define_run_flags("Experiment")
flags.adopt_module_key_flags(cli)  # every flag defined through cli shows in --help


def train(config, workdir):
    from orchestration.experiments.training import train as train_experiment

    train_experiment(config, workdir)


MAIN = cli.training_main(train)

if __name__ == "__main__":
    cli.run(MAIN)
