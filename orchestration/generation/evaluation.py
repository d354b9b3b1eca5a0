"""Evaluation of a work directory's checkpoints over a sweep of samplers
(``python -m launch.evaluate``): every (checkpoint, cell) not yet in ``eval/report.json``
is sampled and scored (``scoring.py``), the report rewritten after each, then ``report.md``
and the FD-vs-steps plots.
"""

from __future__ import annotations

import datetime
import pathlib
import time

import jax
from jax.experimental import multihost_utils

from orchestration.build.run_loader import load_run
from orchestration.generation.generate import all_devices_mesh, generate
from orchestration.generation.report import markdown, plots
from orchestration.generation.scoring import METRICS, scoring_for
from orchestration.generation.sweep import parse_sweep
from orchestration.generation.video import generate_video
from orchestration.workdir import files
from orchestration.workdir.directory import lock
from orchestration.workdir.phast_files import external_for
from orchestration.workdir.records import load_records, record_fields, save_records


def run_cells(run, ckpts: list[int], cells: list, out_dir: pathlib.Path, num: int, batch_size: int = 500,
              command: str = "", progress: bool = True, captions: str = "heldout") -> list[dict]:
    """Evaluates every (checkpoint, cell) not yet in ``out_dir/report.json``; returns all records.
    Everything is checked first; ``out_dir`` is locked while it runs (one writer).
    ``captions`` is a text model's prompt split (``scoring.py``)."""
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
    if jax.process_count() > 1:
        multihost_utils.assert_equal(count, "the processes read different evaluation reports: give every worker the "
                                            "same --workdir on a shared file system")
    return jax.process_index() == 0


def check_cells(run, cells: list) -> None:
    """Builds every cell's sampler for this run (guidance needs labels, PHAST files must
    exist, a cache branch must exist, ...), so a bad cell fails before any sampling."""
    for cell in cells:
        cell.spec.build(run.denoiser, run.caps, external_for(run.workdir, cell.spec))


def default_sweep(config) -> str | None:
    """A student (``config.distill``) is evaluated where it was distilled for: its
    ``config.eval.sampler``; a trained model gets ``sweep.DEFAULT_SPEC``."""
    return None if config.get("distill") is None else config.eval.sampler


def write_report(records: list[dict], out_dir: pathlib.Path, title: str) -> None:
    files.write_text(out_dir / "report.md", markdown(records, title))
    plots(records, out_dir)


def evaluate_workdir(workdir: str | pathlib.Path, *, sweep: str | None = None, ckpts: str = "latest", num: int = 1000,
                     batch_size: int = 500, captions: str = "heldout", command: str = "") -> pathlib.Path | None:
    """Evaluates ``workdir``'s checkpoints ``ckpts`` (``latest``, ``all`` or ``N,M``) over
    ``sweep`` (``sweep.py``; None: :func:`default_sweep`) into ``<workdir>/eval/``; returns
    that folder on process 0 (which alone writes), None on the others."""
    run = load_run(workdir)
    cells = parse_sweep(sweep if sweep is not None else default_sweep(run.config))
    out_dir = pathlib.Path(workdir) / "eval"
    records = run_cells(run, run.select(ckpts), cells, out_dir, num, batch_size, command=command, captions=captions)
    if jax.process_index() != 0:
        return None
    write_report(records, out_dir, f"Evaluation of {workdir}")
    return out_dir
