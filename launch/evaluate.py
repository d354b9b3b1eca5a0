r"""Evaluates checkpoints of a work directory over a sweep of samplers.

    python -m launch.evaluate --workdir runs/digits [--ckpts latest|all|N,M] \
        [--sweep "solver=ddim,dpmpp2m;steps=5,10,20,50;time_shift=off,80:300"] [--num 1000]

For each checkpoint and each sweep cell (``launch/sweep.py``) it draws ``--num`` samples
and scores them (``launch/scoring.py``): a digits model with FD-digits (and class accuracy
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

import datetime
import pathlib
import time

from absl import flags

from launch import cli, files
from launch.workdir import lock

flags.DEFINE_string("workdir", None, "A trained work directory.")
flags.DEFINE_string("ckpts", "latest", "'latest', 'all', or comma-separated checkpoint steps.")
flags.DEFINE_string("sweep", None, "Inline sweep spec or a .json file (see launch/sweep.py).")
flags.DEFINE_integer("num", 1000, "Samples per cell.")
flags.DEFINE_integer("batch_size", 500, "Samples per compiled batch.")
flags.DEFINE_enum("captions", "heldout", ["heldout", "novel"],
                  "A text-to-image scenes model's prompts: the captions of this split (novel: caption combinations "
                  "never trained on).")
cli.define_distributed_flags()
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def run_cells(run, ckpts: list[int], cells: list, out_dir: pathlib.Path, num: int, batch_size: int = 500,
              command: str = "", progress: bool = True, captions: str = "heldout") -> list[dict]:
    """Evaluates every (checkpoint, cell) not yet in ``out_dir/report.json``; returns all records.
    Everything is checked first; ``out_dir`` is locked while it runs (one writer).
    ``captions`` is a text model's prompt split (``launch/scoring.py``)."""
    from launch.records import load_records
    from launch.scoring import scoring_for

    if num < 1 or batch_size < 1:
        raise ValueError(f"--num and --batch_size must be >= 1, got {num} and {batch_size}")
    if num < 2:
        raise ValueError("--num must be >= 2: an FD needs at least two samples (use >= 1000 for a stable one)")
    check_cells(run, cells)
    path = out_dir / "report.json"
    load_records(path, log=lambda _: None)  # a damaged report fails now, before the lock
    scoring = scoring_for(run, num, captions)
    with lock(out_dir, "evaluation directory"):  # one evaluation at a time writes report.json
        return _run_cells(run, ckpts, cells, path, num, batch_size, command, progress, scoring)


def _run_cells(run, ckpts, cells, path: pathlib.Path, num, batch_size, command, progress, scoring) -> list[dict]:
    from launch.generate import all_devices_mesh, generate
    from launch.phast_files import external_for
    from launch.video import generate_video
    from launch.records import load_records, record_fields, save_records
    from launch.scoring import METRICS

    records = load_records(path)
    done = {r["id"] for r in records}
    meta = {"workdir": str(run.workdir), "command": command}
    key = lambda ckpt, cell: cell.key(ckpt, num) + scoring.tag  # noqa: E731
    todo = [(c, cell) for c in ckpts for cell in cells if key(c, cell) not in done]
    writer = _same_todo_everywhere(len(todo))
    progress = progress and writer
    if progress:
        print(f"{len(todo)} cells to run, {len(ckpts) * len(cells) - len(todo)} already in {path}", flush=True)
    fd_name, acc_name = METRICS[scoring.kind]
    params, params_step, mesh = None, None, all_devices_mesh()
    for i, (ckpt, cell) in enumerate(todo):
        if params_step != ckpt:
            params, params_step = run.params(ckpt), ckpt
        t0 = time.perf_counter()
        if run.caps.frames is not None:
            images = generate_video(run.denoiser, params, run.sample_shape, num, cell.spec, run.caps,
                                    truth=scoring.truth(cell.spec), seed=cell.seed, batch_size=batch_size,
                                    labels=scoring.labels, external=external_for(run.workdir, cell.spec), mesh=mesh)
        else:
            images = generate(run.denoiser, params, run.sample_shape, num, cell.spec, run.caps,
                              batch_size=batch_size, seed=cell.seed, labels=scoring.labels, conds=scoring.conds,
                              external=external_for(run.workdir, cell.spec), mesh=mesh)
        if scoring.decode is not None:
            images = scoring.decode(images)
        seconds = time.perf_counter() - t0
        scores = scoring.score(images, cell.spec)
        record = {"id": key(ckpt, cell), "ckpt": ckpt, "seed": cell.seed, "num": num, **record_fields(cell.spec),
                  "network_calls": cell.spec.network_calls(run.denoiser.schedule), **scoring.fields,
                  fd_name: scores[fd_name], acc_name: scores.get(acc_name),
                  **{k: v for k, v in scores.items() if k not in (fd_name, acc_name, "class_accuracy")},
                  "sample_seconds_incl_compile": seconds, "date": datetime.date.today().isoformat()}
        records.append(record)
        if writer:
            save_records(path, records, meta)
        if progress:
            acc = f", {acc_name} {record[acc_name]:.3f}" if record[acc_name] is not None else ""
            print(f"[{i + 1}/{len(todo)}] {record['id']}: {fd_name} {record[fd_name]:.3f}{acc} ({seconds:.1f}s)",
                  flush=True)
    return records


def _same_todo_everywhere(count: int) -> bool:
    """With several processes: every one read ``report.json`` before any writes it (a
    barrier) and has ``count`` cells to run (each cell's sampling is a collective).
    Returns whether this process writes (process 0)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.assert_equal(count, "the processes read different evaluation reports: give every worker the "
                                            "same --workdir on a shared file system")
    return jax.process_index() == 0


def check_cells(run, cells: list) -> None:
    """Builds every cell's sampler for this run (guidance needs labels, PHAST files must
    exist, a cache branch must exist, ...), so a bad cell fails before any sampling."""
    from launch.phast_files import external_for

    for cell in cells:
        cell.spec.build(run.denoiser, run.caps, external_for(run.workdir, cell.spec))


def default_sweep(config) -> str | None:
    """A student (``config.distill``) is evaluated where it was distilled for: its
    ``config.eval.sampler``; a trained model gets ``launch.sweep.DEFAULT_SPEC``."""
    return None if config.get("distill") is None else config.eval.sampler


def write_report(records: list[dict], out_dir: pathlib.Path, title: str) -> None:
    from launch.report import markdown, plots

    files.write_text(out_dir / "report.md", markdown(records, title))
    plots(records, out_dir)


def main(argv):
    import sys

    import jax

    cli.join_distributed()
    from launch.run_loader import load_run
    from launch.sweep import parse_sweep

    run = load_run(FLAGS.workdir)
    cells = parse_sweep(FLAGS.sweep if FLAGS.sweep is not None else default_sweep(run.config))
    ckpts = run.select(FLAGS.ckpts)
    out_dir = pathlib.Path(FLAGS.workdir) / "eval"
    records = run_cells(run, ckpts, cells, out_dir, FLAGS.num, FLAGS.batch_size, command=" ".join(sys.argv),
                        captions=FLAGS.captions)
    if jax.process_index() != 0:
        return
    write_report(records, out_dir, f"Evaluation of {FLAGS.workdir}")
    print(f"wrote {out_dir / 'report.json'}, {out_dir / 'report.md'} and plots")


MAIN = cli.with_clean_errors(main)

if __name__ == "__main__":
    cli.run(MAIN)
