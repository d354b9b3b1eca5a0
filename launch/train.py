r"""Trains a diffusion model from a config file into a work directory.

    python -m launch.train --config configs/digits.py --workdir runs/digits
    python -m launch.train --config configs/digits.py:smoke --workdir /tmp/smoke \
        --config.train.num_steps=40

Re-running with the same ``--workdir`` resumes from the latest checkpoint. On a TPU VM
or several GPU hosts, run the same command on every worker with ``--multihost``.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from launch import cli

config_flags.DEFINE_config_file("config", None, "Experiment config: path/to/file.py[:variant].", lock_config=True)
flags.DEFINE_string("workdir", None, "Work directory (created, or resumed if it exists).")
flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first (TPU pods, multi-host GPU).")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax

    if FLAGS.multihost:
        jax.distributed.initialize()
    from diffusion.train.loop import NonFiniteError, Preempted
    from launch.experiment import train
    from launch.workdir import WorkdirMismatchError

    try:
        train(FLAGS.config, FLAGS.workdir)
    except Preempted as e:
        print(str(e), file=sys.stderr, flush=True)
        sys.exit(128 + e.signum)
    except (WorkdirMismatchError, NonFiniteError, ValueError, FileNotFoundError) as e:
        if FLAGS["verbosity"].present:  # -v / --verbosity: show the traceback too
            raise
        print(f"error: {e}\n(add --verbosity=1 for the traceback)", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    cli.run(main)
