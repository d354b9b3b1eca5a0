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
import json
import pathlib
import time

from absl import flags

from launch import cli

flags.DEFINE_string("workdir", None, "A trained work directory.")
flags.DEFINE_string("ckpts", "latest", "'latest', 'all', or comma-separated checkpoint steps.")
flags.DEFINE_string("sweep", None, "Inline sweep spec or a .json file (see launch/sweep.py).")
flags.DEFINE_integer("num", 1000, "Samples per cell.")
flags.DEFINE_integer("batch_size", 500, "Samples per compiled batch.")
flags.mark_flags_as_required(["workdir"])
FLAGS = flags.FLAGS


def load_records(path: pathlib.Path) -> list[dict]:
    return json.loads(path.read_text())["records"] if path.exists() else []


def save_records(path: pathlib.Path, records: list[dict], meta: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**meta, "records": records}, indent=1) + "\n")
    tmp.replace(path)  # atomic: a kill never leaves half a report


def run_cells(run, ckpts: list[int], cells: list, out_dir: pathlib.Path, num: int, batch_size: int = 500,
              command: str = "", progress: bool = True) -> list[dict]:
    """Evaluates every (checkpoint, cell) not yet in ``out_dir/report.json``; returns all records."""
    from diffusion.metrics.fd_digits import fd_digits
    from launch.generate import class_labels, generate
    from sampling.solvers import network_calls

    if run.config.data.name != "digits":
        raise ValueError(f"launch.evaluate scores with FD-digits, which needs a digits model; this work directory "
                         f"trained on {run.config.data.name!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.json"
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
        images = generate(run.denoiser, params, run.info.image_shape, num, cell.spec, batch_size=batch_size,
                          seed=cell.seed, labels=labels, null_label=run.num_classes, workdir=run.workdir)
        seconds = time.perf_counter() - t0
        scores = fd_digits(images, labels)
        record = {"id": cell.key(ckpt, num), "ckpt": ckpt, "seed": cell.seed, "num": num,
                  **{k: v for k, v in cell.spec.__dict__.items()},
                  "network_calls": network_calls(cell.spec.solver, cell.spec.steps),
                  "fd_digits": scores["fd_digits"], "class_accuracy": scores.get("class_accuracy"),
                  "sample_seconds_incl_compile": seconds, "date": datetime.date.today().isoformat()}
        records.append(record)
        save_records(path, records, meta)
        if progress:
            acc = f", acc {record['class_accuracy']:.3f}" if record["class_accuracy"] is not None else ""
            print(f"[{i + 1}/{len(todo)}] {record['id']}: FD {record['fd_digits']:.3f}{acc} ({seconds:.1f}s)", flush=True)
    return records


def default_sweep(config) -> str | None:
    """A student (``config.distill``) is evaluated where it was distilled for: its eval
    solver, steps and guidance; a trained model gets ``launch.sweep.DEFAULT_SPEC``."""
    if config.get("distill") is None:
        return None
    spec = f"solver={config.eval.solver};steps={config.eval.steps};grid={config.eval.grid}"
    return spec + (f";guidance={config.eval.guidance}" if config.eval.get("guidance") is not None else "")


def write_report(records: list[dict], out_dir: pathlib.Path, title: str) -> None:
    from launch.report import markdown, plots

    (out_dir / "report.md").write_text(markdown(records, title))
    plots(records, out_dir)


def main(argv):
    import sys

    from launch.run_loader import load_run
    from launch.sweep import parse_sweep

    run = load_run(FLAGS.workdir)
    cells = parse_sweep(FLAGS.sweep if FLAGS.sweep is not None else default_sweep(run.config))
    ckpts = run.select(FLAGS.ckpts)
    out_dir = pathlib.Path(FLAGS.workdir) / "eval"
    records = run_cells(run, ckpts, cells, out_dir, FLAGS.num, FLAGS.batch_size, command=" ".join(sys.argv))
    write_report(records, out_dir, f"Evaluation of {FLAGS.workdir}")
    print(f"wrote {out_dir / 'report.json'}, {out_dir / 'report.md'} and plots")


if __name__ == "__main__":
    cli.run(cli.with_clean_errors(main))
