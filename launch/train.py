r"""Trains a diffusion model from a config file into a work directory.

    python -m launch.train --config configs/digits.py --workdir runs/digits
    python -m launch.train --config configs/digits.py:smoke --workdir /tmp/smoke \
        --config.train.num_steps=40

Re-running with the same ``--workdir`` resumes from the latest checkpoint. On a TPU VM
or several GPU hosts, run the same command on every worker with ``--multihost``.
"""

from __future__ import annotations

import sys

from absl import flags
from ml_collections import config_flags

from launch import cli

config_flags.DEFINE_config_file("config", None, "Experiment config: path/to/file.py[:variant].", lock_config=True)
flags.DEFINE_string("workdir", None, "Work directory (created, or resumed if it exists).")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first (TPU pods, multi-host GPU).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    import jax

    if FLAGS.multihost:
        jax.distributed.initialize()
    from diffusion.train.loop import NonFiniteError, Preempted
    from launch.experiment import train

    try:
        train(FLAGS.config, FLAGS.workdir)
    except Preempted as e:
        print(str(e), file=sys.stderr, flush=True)
        sys.exit(128 + e.signum)
    except NonFiniteError as e:
        raise ValueError(str(e)) from e


if __name__ == "__main__":
    cli.run(cli.with_clean_errors(main))
