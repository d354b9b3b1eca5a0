"""Evaluation reports: ``report.md`` tables and FD-vs-steps plots from ``report.json`` records."""

from __future__ import annotations

import collections
import pathlib

import numpy as np


def _group(records: list[dict], keys: tuple[str, ...]) -> dict:
    groups = collections.defaultdict(list)
    for r in records:
        groups[tuple(str(r.get(k)) for k in keys)].append(r)
    return groups


def _mean_std(values: list[float]) -> str:
    v = np.asarray(values, np.float64)
    return f"{v.mean():.2f}" if len(v) == 1 else f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"


def _ts_label(r: dict) -> str:
    """A record's solver knobs and transforms but guidance (tables are per guidance):
    ``off`` or e.g. ``time_shift 80:300, attention_reuse hurry:5``. A record of a part this
    process has not loaded (``$KAIROS_PARTS``) is labelled from its text."""
    from sampling.spec import SamplerSpec

    try:
        return SamplerSpec.parse(r["sampler"]).label(exclude=("guidance",))
    except ValueError:
        entries = [e.split("=", 1) for e in r["sampler"].split(";") if "=" in e]
        shown = [f"{k} {v.replace('/', ',')}" for k, v in entries if k not in ("solver", "steps", "grid", "guidance")]
        return ", ".join(shown) or "off"


GROUPS = ("ckpt", "guidance", "grid", "captions")  # a table (and a plot) each
_NAMES = {"fd_digits": "FD-digits", "scenes_fd": "scenes FD", "class_accuracy": "class accuracy",
          "caption_accuracy": "caption accuracy", "fvd_proxy": "FVD proxy", "identity_stability": "identity stability"}


def metric_names(records: list[dict]) -> tuple[str, str]:
    """``(FD field, accuracy field)`` of the records (``orchestration.generation.scoring.METRICS``)."""
    from orchestration.generation.scoring import METRICS

    return next((m for m in METRICS.values() if records and m[0] in records[0]), METRICS["digits"])


def _heading(ckpt, guidance, grid, captions) -> str:
    return f"checkpoint {ckpt}, guidance {guidance}, grid {grid}" + ("" if captions == "None" else f", {captions} captions")


def markdown(records: list[dict], title: str) -> str:
    """Tables: one per (checkpoint, guidance, grid, captions); rows solver x transforms,
    columns steps; cells mean ± std of the FD over seeds (and the accuracy)."""
    fd, acc = metric_names(records)
    lines = [f"# {title}", "", f"{_NAMES[fd]} (lower is better; mean ± std over seeds), then {_NAMES[acc]}.", ""]
    for group, recs in sorted(_group(records, GROUPS).items()):
        steps = sorted({r["steps"] for r in recs})
        lines += [f"## {_heading(*group)}", "",
                  "| solver | transforms | " + " | ".join(f"{s} steps" for s in steps) + " |",
                  "|---|---|" + "---|" * len(steps)]
        rows = _group(recs, ("solver",))
        for (solver,), srecs in sorted(rows.items()):
            for ts, trecs in sorted(_group_by_ts(srecs).items(), key=lambda kv: (kv[0] != "off", kv[0])):
                by_steps = _group(trecs, ("steps",))
                cells = []
                for s in steps:
                    rs = by_steps.get((str(s),), [])
                    if not rs:
                        cells.append("—")
                        continue
                    text = _mean_std([r[fd] for r in rs])
                    if rs[0].get(acc) is not None:
                        text += f" ({100 * np.mean([r[acc] for r in rs]):.0f}%)"
                    cells.append(text)
                lines.append(f"| {solver} | {ts} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _group_by_ts(records: list[dict]) -> dict:
    groups = collections.defaultdict(list)
    for r in records:
        groups[_ts_label(r)].append(r)
    return groups


def plots(records: list[dict], out_dir: pathlib.Path) -> list[pathlib.Path]:
    """``fd_vs_steps_ckpt<N>[_w<g>][_<grid>][_<captions>].png``: the FD vs steps, a colour per solver,
    solid without and dashed with sampling transforms (time shift, reuse, caching;
    error bars: std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fd_name = metric_names(records)[0]
    paths = []
    for (ckpt, guidance, grid, captions), recs in sorted(_group(records, GROUPS).items()):
        fig, ax = plt.subplots(figsize=(6, 4))
        colors = {}
        for (solver,), srecs in sorted(_group(recs, ("solver",)).items()):
            for ts, trecs in sorted(_group_by_ts(srecs).items()):
                steps = sorted({r["steps"] for r in trecs})
                fd = [[r[fd_name] for r in trecs if r["steps"] == s] for s in steps]
                mean = [np.mean(f) for f in fd]
                err = [np.std(f, ddof=1) if len(f) > 1 else 0.0 for f in fd]
                color = colors.setdefault(solver, f"C{len(colors)}")
                ax.errorbar(steps, mean, yerr=err, color=color, linestyle="-" if ts == "off" else "--",
                            marker="o", capsize=2, label=f"{solver}" + ("" if ts == "off" else f" + {ts}"))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sampling steps")
        ax.set_ylabel(_NAMES[fd_name])
        ax.set_title(_heading(ckpt, guidance, grid, captions), fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        name = f"fd_vs_steps_ckpt{ckpt}" + ("" if guidance == "None" else f"_w{guidance}") + \
            ("" if grid == "trailing" else f"_{grid}") + ("" if captions == "None" else f"_{captions}") + ".png"
        fig.savefig(out_dir / name, dpi=120)
        plt.close(fig)
        paths.append(out_dir / name)
    return paths
