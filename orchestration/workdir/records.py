"""``eval/report.json``: evaluation records, their tag version, and the upgrade of older ones.

A record's ``id`` is ``ckpt<step>/<sampler tag>/seed<seed>/n<num>`` (``orchestration.generation.sweep.Cell``);
the file carries ``tag_version`` (``sampling.spec.TAG_VERSION``). A report without one was
written by issue 3/4's ``launch.evaluate`` (tag version 1: flat ``solver, steps, grid,
guidance, time_shift, time_shift_mode, eta, attention_reuse, feature_cache, cache_branch``
fields); its records are converted from those fields. Tag version 3 (issue 26) renumbered
two knobs: a time shift's cutoff counts the authors' 0-based index (a version-2 cutoff ``C``
shifted exactly where version 3's ``C - 1`` does), and ``cache_branch`` is DeepCache's
numbering (version 2's ``b`` is version 3's ``b - 1``, the same blocks); older records are
renamed to the same samples. Tag version 4 (issue 26, FVDM) changed what a video plan does
with given frames (now at ``t = 1/T`` and DDIM-updated, every network time at least ``1/T``):
a version-3 record whose plan gave frames, lagged or shifted times is renamed to
``given_time=zero;given_update=clamp``, the samples it holds. So finished cells are recognised,
never silently re-run, mistaken for new ones or dropped.
"""

from __future__ import annotations

import json
import pathlib

from orchestration.workdir import files
from sampling.registry import fmt
from sampling.spec import TAG_VERSION, SamplerSpec

V1_FIELDS = ("solver", "steps", "grid", "guidance", "time_shift", "time_shift_mode", "eta", "attention_reuse",
             "feature_cache", "cache_branch")


def record_fields(spec: SamplerSpec) -> dict:
    """The sampler part of a record: its canonical string and its flat values."""
    return {"sampler": spec.to_string(), **spec.to_values()}


def spec_of_v1(record: dict) -> SamplerSpec:
    """The sampler of a tag-version-1 record, from its fields."""
    values = {"solver": record["solver"], "steps": record["steps"], "grid": record.get("grid", "trailing")}
    if record.get("eta") is not None:
        values["eta"] = record["eta"]
    if record.get("guidance") is not None:
        values["guidance"] = record["guidance"]
    if record.get("time_shift"):
        values["time_shift"] = "{}:{}".format(*record["time_shift"])
        values["time_shift_mode"] = record.get("time_shift_mode", "query")
    if record.get("attention_reuse"):
        values["attention_reuse"] = record["attention_reuse"]
    if record.get("feature_cache"):
        values["feature_cache"] = record["feature_cache"]
        values["cache_branch"] = record.get("cache_branch", 0)
    return SamplerSpec.from_values(values)


def upgrade_v1(record: dict) -> dict:
    """A tag-version-1 record in the form of version 2 (then :func:`upgrade_v2`)."""
    spec = spec_of_v1(record)
    rest = {k: v for k, v in record.items() if k not in V1_FIELDS}
    rest["id"] = f"ckpt{record['ckpt']}/{spec.tag()}/seed{record['seed']}/n{record['num']}"
    return {**rest, **record_fields(spec)}


def upgrade_v2(record: dict) -> dict:
    """A tag-version-2 record in version 3, naming the same samples: a time shift's cutoff
    ``C`` becomes ``C - 1`` and a feature cache's ``cache_branch b`` becomes ``b - 1``, in its
    sampler, its values and its id; other records are unchanged."""
    old = SamplerSpec.parse(record["sampler"])
    values, changed = old.to_values(), {}
    shift, cache = old.knobs("time_shift"), old.knobs("feature_cache")
    if shift is not None:
        changed["time_shift"] = f"{fmt(shift['window'])}:{fmt(shift['cutoff'] - 1.0)}"
    if cache is not None:
        changed["cache_branch"] = int(cache["branch"]) - 1
    if not changed:
        return record
    spec = SamplerSpec.from_values({**values, **changed})
    head, _, rest = record["id"].split("/", 2)
    fields = {k: v for k, v in record.items() if k not in values and k != "cache_branch"}
    return {**fields, "id": f"{head}/{spec.tag()}/{rest}", **record_fields(spec)}


def _plan_changed_in_v4(spec: SamplerSpec) -> bool:
    """Whether a version-3 sampler's samples depend on what version 4 changed: a plan giving
    frames or lagging them (fed ``t = 0``), or one under a time shift (a shifted time may reach
    ``0``). Plain ``sync`` and the ``replace`` baseline are unchanged."""
    plan = spec.knobs("plan")
    if plan is None or plan["kind"] == "replace":
        return False
    plain_sync = plan["kind"] == "sync" and plan["given_frames"] == "default" and spec.knobs("time_shift") is None
    return not plain_sync


def upgrade_v3(record: dict) -> dict:
    """A tag-version-3 record in version 4, naming the same samples: a plan that
    :func:`_plan_changed_in_v4` gets ``given_time=zero;given_update=clamp`` (Kairos's plan
    before issue 26) in its sampler, its values and its id; other records are unchanged."""
    old = SamplerSpec.parse(record["sampler"])
    if not _plan_changed_in_v4(old):
        return record
    values = old.to_values()
    spec = SamplerSpec.from_values({**values, "given_time": "zero", "given_update": "clamp"})
    head, _, rest = record["id"].split("/", 2)
    fields = {k: v for k, v in record.items() if k not in values}
    return {**fields, "id": f"{head}/{spec.tag()}/{rest}", **record_fields(spec)}


def load_records(path: pathlib.Path, log=print) -> list[dict]:
    """The records of ``path`` in today's tag version (``[]`` if it does not exist).

    Raises:
      ValueError: the file is not a report (names the file) or has a newer tag version.
    """
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
        records, version = data["records"], int(data.get("tag_version", 1))
        if not isinstance(records, list):
            raise TypeError("'records' is not a list")
        if version == 1:
            records = [upgrade_v1(r) for r in records]
        if version <= 2:
            records = [upgrade_v2(r) for r in records]
        if version <= 3:
            records = [upgrade_v3(r) for r in records]
        if records and version < TAG_VERSION:
                log(f"{path}: converted {len(records)} record(s) of tag version {version} to version {TAG_VERSION}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path} is not a readable evaluation report ({type(e).__name__}: {e}); move it away "
                         "to start a new one") from None
    if version > TAG_VERSION:
        raise ValueError(f"{path} has tag version {version}, newer than this Kairos ({TAG_VERSION})")
    return records


def save_records(path: pathlib.Path, records: list[dict], meta: dict) -> None:
    files.write_text(path, json.dumps({**meta, "tag_version": TAG_VERSION, "records": records}, indent=1) + "\n")
