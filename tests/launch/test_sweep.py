"""Sweep specs and report tables (no sampling)."""

import json

import pytest

from launch.generate import SamplerSpec
from launch.report import markdown
from launch.sweep import parse_sweep


def test_inline_spec_is_a_product():
    cells = parse_sweep("solver=ddim,fpndm;steps=5,10;time_shift=off,80:300;guidance=none,2;seed=0,1")
    assert len(cells) == 2 * 2 * 2 * 2 * 2
    c = [c for c in cells if c.spec.solver == "fpndm" and c.spec.time_shift and c.spec.guidance == 2.0][0]
    assert c.spec.time_shift == (80.0, 300.0) and c.spec.grid == "trailing"
    assert c.key(2500, 1000).startswith("ckpt2500/fpndm_") and c.key(2500, 1000).endswith("/n1000")


def test_reuse_and_cache_keys_vary_in_a_sweep():
    cells = parse_sweep("steps=20;attention_reuse=off,hurry:5,steps:3/5;feature_cache=off,nonuniform:4/10;cache_branch=1")
    assert len(cells) == 6
    specs = {(c.spec.attention_reuse, c.spec.feature_cache) for c in cells}
    assert (None, None) in specs and ("steps:3,5", "nonuniform:4,10") in specs
    tags = {c.spec.tag() for c in cells}
    assert "ddim_20steps_reuse-hurry5_cache-nonuniform4-10-b1" in tags and len(tags) == 6


def test_json_file_with_grid_and_explicit_cells(tmp_path):
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"grid": {"solver": ["ddim"], "steps": [10, 20]},
                                "cells": [{"solver": "fpndm", "steps": 10, "time_shift": "5:550", "grid": "uniform"},
                                          {"solver": "ddim", "steps": 10}]}))
    cells = parse_sweep(str(path))
    assert [c.spec.tag() for c in cells] == ["ddim_10steps", "ddim_20steps", "fpndm_10steps_uniform_ts5-550"]


@pytest.mark.parametrize("spec,message", [
    ("solver=heun;steps=5", "unknown solver 'heun'"),
    ("solver=ddim;steps=5;grid=cosine", "unknown grid 'cosine'"),
    ("solver=ddim;temperature=2", "unknown sweep key(s) ['temperature']"),
    ("solver=ddim;time_shift=80", "WINDOW:CUTOFF"),
    ("solver ddim", "not key=v1,v2"),
    ("missing.json", "does not exist"),
    ("steps=10;attention_reuse=hurry:10", "hurry:K needs 0 <= K < 10"),
    ("steps=10;attention_reuse=soon:3", "bad --attention_reuse 'soon:3'"),
    ("steps=10;feature_cache=uniform:x", "bad --feature_cache 'uniform:x'"),
])
def test_bad_specs_are_clear_errors(spec, message):
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        parse_sweep(spec)
    assert message in str(e.value)


def test_spec_tags_and_eta_only_for_ddim():
    from diffusion.analytic import make_mixture
    from diffusion.schedules import make_schedule

    assert SamplerSpec("ddim", 20, eta=0.5, guidance=2.0, time_shift=(80, 300)).tag() == "ddim_20steps_eta0.5_w2_ts80-300"
    mix = make_mixture(make_schedule("linear"), [[0.0]], [1.0])
    with pytest.raises(ValueError, match="eta applies to the ddim solver only"):
        SamplerSpec("dpmpp2m", 10, eta=0.5).build(mix, None)
    with pytest.raises(ValueError, match="needs a class-conditional model"):
        SamplerSpec("ddim", 10, guidance=2.0).build(mix, None)


def test_markdown_table_has_mean_and_std_over_seeds():
    recs = [{"ckpt": 5, "guidance": None, "grid": "trailing", "solver": "ddim", "steps": n, "time_shift": ts,
             "fd_digits": fd, "class_accuracy": 0.9, "seed": seed}
            for n in (5, 10) for ts in (None, [80.0, 300.0]) for seed, fd in ((0, 3.0), (1, 5.0))]
    md = markdown(recs, "t")
    assert "| ddim | off | 4.00 ± 1.41 (90%) | 4.00 ± 1.41 (90%) |" in md
    assert md.index("| ddim | off |") < md.index("| ddim | TS 80:300 |")
