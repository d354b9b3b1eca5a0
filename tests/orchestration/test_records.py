"""``eval/report.json`` records of older tag versions load in today's form: version 1's flat
fields, and version 2's cache_branch renumbered into DeepCache's numbering (issue 26), so a
finished cell is recognised by its id, never re-run or dropped."""

import json

from orchestration.workdir.records import load_records
from sampling.spec import TAG_VERSION, SamplerSpec


def write(path, records, version=None):
    data = {"records": records} if version is None else {"tag_version": version, "records": records}
    path.write_text(json.dumps(data))
    return path


def test_version_2_cache_branch_is_renumbered_and_the_id_follows(tmp_path):
    old = {"id": "ckpt20/ddim_4steps_cache-uniform2-b1/seed0/n100/novel", "ckpt": 20, "seed": 0, "num": 100,
           "sampler": "solver=ddim;steps=4;grid=trailing;feature_cache=uniform:2;cache_branch=1",
           "solver": "ddim", "steps": 4, "feature_cache": "uniform:2", "cache_branch": 1, "fd_digits": 3.5}
    plain = {"id": "ckpt20/ddim_4steps/seed0/n100", "ckpt": 20, "seed": 0, "num": 100,
             "sampler": "solver=ddim;steps=4;grid=trailing", "solver": "ddim", "steps": 4, "fd_digits": 2.0}
    said = []
    cached, untouched = load_records(write(tmp_path / "report.json", [old, plain], 2), log=said.append)
    spec = SamplerSpec.parse("solver=ddim;steps=4;feature_cache=uniform:2;cache_branch=0")
    assert cached.get("cache_branch", 0) == 0 and cached["sampler"] == spec.to_string()  # 0: the default, not listed
    assert cached["id"] == f"ckpt20/{spec.tag()}/seed0/n100/novel"
    assert cached["id"] == "ckpt20/ddim_4steps_cache-uniform2-db0/seed0/n100/novel"
    assert cached["fd_digits"] == 3.5 and untouched == plain
    assert said == [f"{tmp_path / 'report.json'}: converted 2 record(s) of tag version 2 to version {TAG_VERSION}"]


def test_version_2_time_shift_cutoff_becomes_the_authors_index(tmp_path):
    """Version 2's cutoff C shifted where version 3's C - 1 does: renamed, never taken for the new C."""
    old = {"id": "ckpt20/ddim_10steps_ts80-300_cache-uniform2-b0/seed1/n50", "ckpt": 20, "seed": 1, "num": 50,
           "sampler": "solver=ddim;steps=10;grid=trailing;feature_cache=uniform:2;time_shift=80:300",
           "solver": "ddim", "steps": 10, "feature_cache": "uniform:2", "time_shift": "80:300", "fd_digits": 1.0}
    (record,) = load_records(write(tmp_path / "report.json", [old], 2), log=lambda _: None)
    spec = SamplerSpec.parse("solver=ddim;steps=10;feature_cache=uniform:2;cache_branch=-1;time_shift=80:299")
    assert record["sampler"] == spec.to_string() and record["id"] == f"ckpt20/{spec.tag()}/seed1/n50"
    assert record["time_shift"] == "80:299" and record["cache_branch"] == -1 and record["fd_digits"] == 1.0


def test_version_1_records_reach_today_through_both_upgrades(tmp_path):
    v1 = {"ckpt": 5, "seed": 1, "num": 50, "solver": "ddim", "steps": 10, "grid": "trailing", "eta": None,
          "guidance": None, "time_shift": None, "attention_reuse": None, "feature_cache": "uniform:3",
          "cache_branch": 0, "fd_digits": 4.0}
    (record,) = load_records(write(tmp_path / "report.json", [v1]), log=lambda _: None)
    assert record["cache_branch"] == -1 and record["id"] == "ckpt5/ddim_10steps_cache-uniform3-db-1/seed1/n50"


def test_todays_records_load_unchanged(tmp_path):
    spec = SamplerSpec.parse("solver=ddim;steps=4;feature_cache=uniform:2;cache_branch=2")
    record = {"id": f"ckpt1/{spec.tag()}/seed0/n10", "ckpt": 1, "seed": 0, "num": 10, "sampler": spec.to_string(),
              **spec.to_values()}
    said = []
    assert load_records(write(tmp_path / "report.json", [record], TAG_VERSION), log=said.append) == [record]
    assert said == []
