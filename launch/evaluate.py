r"""Evaluates checkpoints of a work directory over a sweep of samplers.

    python -m launch.evaluate --workdir runs/digits [--ckpts latest|all|N,M] \
        [--sweep "solver=ddim,dpmpp2m;steps=5,10,20,50;time_shift=off,80:300"] [--num 1000]

For each checkpoint and each sweep cell (``orchestration/generation/sweep.py``) it draws ``--num`` samples
and scores them (``orchestration/generation/scoring.py``): a digits model with FD-digits (and class accuracy
when class-conditional); a text-to-image digit-scenes model with caption accuracy and the
scenes FD, prompted with the captions of ``--captions heldout|novel``.
Writes ``<workdir>/eval/report.json`` (one record per cell: settings, seed, wall time),
``report.md`` (tables) and ``fd_vs_steps_*.png``. Cells already in ``report.json`` are
skipped, so an interrupted evaluation resumes where it stopped.

On a TPU pod or several GPU hosts run the same command on every worker with
``--multihost`` (or ``--coordinator``, ``--num_processes``, ``--process_id``): image
batches are split over every process's devices, every process scores the whole
(gathered) set, and process 0 alone writes. A video model's cells are sampled whole by
every process.
"""

from __future__ import annotations

import sys

from absl import flags

from launch import cli

flags.DEFINE_string("workdir", None, "A trained work directory.")
flags.DEFINE_string("ckpts", "latest", "'latest', 'all', or comma-separated checkpoint steps.")
flags.DEFINE_string("sweep", None, "Inline sweep spec or a .json file (see orchestration/generation/sweep.py).")
flags.DEFINE_integer("num", 1000, "Samples per cell.")
flags.DEFINE_integer("batch_size", 500, "Samples per compiled batch.")
flags.DEFINE_enum("captions", "heldout", ["heldout", "novel"],
                  "A text-to-image scenes model's prompts: the captions of this split (novel: caption combinations "
                  "never trained on).")
cli.define_distributed_flags()
flags.adopt_module_key_flags(cli)  # every flag defined through cli shows in --help
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def main(argv):
    cli.join_distributed()
    from orchestration.generation.evaluation import evaluate_workdir

    out_dir = evaluate_workdir(FLAGS.workdir, sweep=FLAGS.sweep, ckpts=FLAGS.ckpts, num=FLAGS.num,
                               batch_size=FLAGS.batch_size, captions=FLAGS.captions, command=" ".join(sys.argv))
    if out_dir is not None:
        print(f"wrote {out_dir / 'report.json'}, {out_dir / 'report.md'} and plots")


MAIN = cli.with_clean_errors(main)

if __name__ == "__main__":
    cli.run(MAIN)
