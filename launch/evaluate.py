r"""Evaluates checkpoints of a work directory over a sweep of samplers.

    python -m launch.evaluate --workdir runs/digits [--ckpts latest|all|N,M] \
        [--sweep "solver=ddim,dpmpp2m;steps=5,10,20,50;time_shift=off,80:300"] [--num 1000]

For each checkpoint and each sweep cell (``launch/sweep.py``) it draws ``--num`` samples
and scores them with FD-digits (and class accuracy for class-conditional models).
Writes ``<workdir>/eval/report.json`` (one record per cell: settings, seed, wall time),
``report.md`` (tables) and ``fd_vs_steps_*.png``. Cells already in ``report.json`` are
skipped, so an interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import datetime
import pathlib
import time

from absl import flags

from launch import cli
from launch.workdir import lock

flags.DEFINE_string("workdir", None, "A trained work directory.")
flags.DEFINE_string("ckpts", "latest", "'latest', 'all', or comma-separated checkpoint steps.")
flags.DEFINE_string("sweep", None, "Inline sweep spec or a .json file (see launch/sweep.py).")
flags.DEFINE_integer("num", 1000, "Samples per cell.")
flags.DEFINE_integer("batch_size", 500, "Samples per compiled batch.")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def run_cells(run, ckpts: list[int], cells: list, out_dir: pathlib.Path, num: int, batch_size: int = 500,
              command: str = "", progress: bool = True) -> list[dict]:
    """Evaluates every (checkpoint, cell) not yet in ``out_dir/report.json``; returns all records.
    Everything is checked first; ``out_dir`` is locked while it runs (one writer)."""
    from launch.records import load_records

    if run.config.data.name != "digits":
        raise ValueError(f"launch.evaluate scores with FD-digits, which needs a digits model; this work directory "
                         f"trained on {run.config.data.name!r}")
    if num < 1 or batch_size < 1:
        raise ValueError(f"--num and --batch_size must be >= 1, got {num} and {batch_size}")
    check_cells(run, cells)
    path = out_dir / "report.json"
    load_records(path, log=lambda _: None)  # a damaged report fails now, before the lock
    with lock(out_dir, "evaluation directory"):  # one evaluation at a time writes report.json
        return _run_cells(run, ckpts, cells, path, num, batch_size, command, progress)


def _run_cells(run, ckpts, cells, path: pathlib.Path, num, batch_size, command, progress) -> list[dict]:
    from diffusion.metrics.fd_digits import fd_digits
    from launch.generate import class_labels, generate
    from launch.phast_files import external_for
    from launch.records import load_records, record_fields, save_records

    records = load_records(path)
    done = {r["id"] for r in records}
    meta = {"workdir": str(run.workdir), "command": command}
    todo = [(c, cell) for c in ckpts for cell in cells if cell.key(c, num) not in done]
    if progress:
        print(f"{len(todo)} cells to run, {len(ckpts) * len(cells) - len(todo)} already in {path}", flush=True)
    labels = class_labels(num, run.num_classes)
    params, params_step = None, None
    for i, (ckpt, cell) in enumerate(todo):
        if params_step != ckpt:
            params, params_step = run.params(ckpt), ckpt
        t0 = time.perf_counter()
        images = generate(run.denoiser, params, run.info.image_shape, num, cell.spec, run.caps, batch_size=batch_size,
                          seed=cell.seed, labels=labels, external=external_for(run.workdir, cell.spec))
        seconds = time.perf_counter() - t0
        scores = fd_digits(images, labels)
        record = {"id": cell.key(ckpt, num), "ckpt": ckpt, "seed": cell.seed, "num": num, **record_fields(cell.spec),
                  "network_calls": cell.spec.network_calls(run.denoiser.schedule),
                  "fd_digits": scores["fd_digits"], "class_accuracy": scores.get("class_accuracy"),
                  "sample_seconds_incl_compile": seconds, "date": datetime.date.today().isoformat()}
        records.append(record)
        save_records(path, records, meta)
        if progress:
            acc = f", acc {record['class_accuracy']:.3f}" if record["class_accuracy"] is not None else ""
            print(f"[{i + 1}/{len(todo)}] {record['id']}: FD {record['fd_digits']:.3f}{acc} ({seconds:.1f}s)", flush=True)
    return records


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

    (out_dir / "report.md").write_text(markdown(records, title))
    plots(records, out_dir)


def main(argv):
    import sys

    from launch.run_loader import load_run
    from launch.sweep import parse_sweep

    run = load_run(FLAGS.workdir)
    run.refuse_text("launch.evaluate")
    cells = parse_sweep(FLAGS.sweep if FLAGS.sweep is not None else default_sweep(run.config))
    ckpts = run.select(FLAGS.ckpts)
    out_dir = pathlib.Path(FLAGS.workdir) / "eval"
    records = run_cells(run, ckpts, cells, out_dir, FLAGS.num, FLAGS.batch_size, command=" ".join(sys.argv))
    write_report(records, out_dir, f"Evaluation of {FLAGS.workdir}")
    print(f"wrote {out_dir / 'report.json'}, {out_dir / 'report.md'} and plots")


MAIN = cli.with_clean_errors(main)

if __name__ == "__main__":
    cli.run(MAIN)
