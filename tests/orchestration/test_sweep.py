"""Sweep specs and report tables (no sampling)."""

import json

import pytest

from diffusion.analytic import make_mixture
from diffusion.schedules import make_schedule
from orchestration.generation.report import markdown
from orchestration.generation.sweep import parse_sweep
from sampling.registry import ModelCaps
from sampling.spec import SamplerSpec, make_spec


def test_inline_spec_is_a_product():
    cells = parse_sweep("solver=ddim,fpndm;steps=5,10;time_shift=off,80:300;guidance=none,2;seed=0,1")
    assert len(cells) == 2 * 2 * 2 * 2 * 2
    c = [c for c in cells if c.spec.solver == "fpndm" and c.spec.knobs("time_shift") and c.spec.knobs("guidance")][0]
    assert c.spec.knobs("time_shift") == {"window": 80.0, "cutoff": 300.0, "mode": "query", "data_var": 0.0,
                                          "min_snr": 0.0}
    assert c.spec.grid == "trailing" and c.spec.knobs("guidance") == {"w": 2.0}
    assert c.key(2500, 1000).startswith("ckpt2500/fpndm_") and c.key(2500, 1000).endswith("/n1000")


def test_reuse_and_cache_keys_vary_in_a_sweep():
    cells = parse_sweep("steps=20;attention_reuse=off,hurry:5,steps:3/5;feature_cache=off,nonuniform:4/10;cache_branch=1")
    assert len(cells) == 6
    specs = {(c.spec.to_values().get("attention_reuse"), c.spec.to_values().get("feature_cache")) for c in cells}
    assert (None, None) in specs and ("steps:3,5", "nonuniform:4,10") in specs
    tags = {c.spec.tag() for c in cells}
    assert "ddim_20steps_reuse-steps3-5_cache-nonuniform4-10-db1" in tags and len(tags) == 6


def test_a_knob_applies_to_the_cells_of_its_part():
    cells = parse_sweep("solver=ddim,dpmpp2m;steps=5;eta=none,0.5")
    assert [c.spec.tag() for c in cells] == ["ddim_5steps", "ddim_5steps_eta0.5", "dpmpp2m_5steps"]


def test_json_file_with_grid_and_explicit_cells(tmp_path):
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"grid": {"solver": ["ddim"], "steps": [10, 20]},
                                "cells": [{"solver": "fpndm", "steps": 10, "time_shift": "5:550", "grid": "uniform"},
                                          {"solver": "ddim", "steps": 10}]}))
    cells = parse_sweep(str(path))
    assert [c.spec.tag() for c in cells] == ["ddim_10steps", "ddim_20steps", "fpndm_10steps_uniform_ts5-550"]


@pytest.mark.parametrize("spec,message", [
    ("solver=heun;steps=5", "unknown solver 'heun'"),
    ("solver=ddim;steps=5;grid=cosine", "unknown time grid 'cosine'"),
    ("solver=ddim;temperature=2", "unknown sweep key(s) ['temperature']"),
    ("solver=ddim;time_shift=80", "bad time_shift '80'"),
    ("solver=ddim;time_shift=80:nan", "expected a finite number"),
    ("solver=ddim;steps=0", "bad steps"),
    ("solver=ddim;guidance=nan", "bad guidance 'nan'"),
    ("solver=dpmpp2m;eta=0.5", "sweep key eta is a knob of ddim, which no cell applies: add solver=ddim"),
    ("solver=ddim;time_shift_mode=destination", "time_shift_mode is a knob of time_shift, which no cell applies"),
    ("solver=ddim;seed=-1", "bad seed"),
    ("solver ddim", "not key=v1,v2"),
    ("missing.json", "does not exist"),
    ("steps=10;attention_reuse=soon:3", "bad attention_reuse 'soon:3'"),
    ("steps=10;feature_cache=uniform:x", "bad feature_cache 'uniform:x'"),
    ("", "holds no key=v1,v2 entry"),  # an empty sweep is refused, not run as the default
    (";;", "holds no key=v1,v2 entry"),
    ("  ", "holds no key=v1,v2 entry"),
])
def test_bad_specs_are_clear_errors(spec, message):
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        parse_sweep(spec)
    assert message in str(e.value)


@pytest.mark.parametrize("content", ["[1, 2]", "{\"grid\": [1]}", "{\"cells\": {\"a\": 1}}", "{\"rows\": []}", "{not json"])
def test_bad_sweep_files_are_clear_errors(tmp_path, content):
    path = tmp_path / "sweep.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=f"sweep file {path}"):
        parse_sweep(str(path))


def test_build_time_checks_need_the_model():
    mix = make_mixture(make_schedule("linear"), [[0.0]], [1.0])
    with pytest.raises(ValueError, match="guidance needs a class-conditional or text model"):
        make_spec("ddim", 10, guidance=2.0).build(mix, ModelCaps())
    with pytest.raises(ValueError, match="hurry:K needs 0 <= K < 10"):
        make_spec("ddim", 10, attention_reuse="hurry:10").build(mix, ModelCaps(self_attention=True))
    with pytest.raises(ValueError, match="needs a network with self-attention"):
        make_spec("ddim", 10, attention_reuse="hurry:2").build(mix, ModelCaps())
    with pytest.raises(ValueError, match="cache_branch 2 does not exist: this model has cache branches -1..1"):
        make_spec("ddim", 10, feature_cache="uniform:2", cache_branch=2).build(mix, ModelCaps(feature_branches=3))
    with pytest.raises(ValueError, match=r"must lie in \[0, T = 1000\]"):
        make_spec("ddim", 10, time_shift="5000,900").build(mix, ModelCaps())


def test_spec_text_form_round_trips_and_is_canonical():
    spec = make_spec("ddim", 20, eta=0.5, guidance=2, time_shift="80,300", attention_reuse="steps:3,1,3",
                     feature_cache="uniform:3", cache_branch=1, time_shift_mode="destination")
    text = spec.to_string()
    assert text == ("solver=ddim;steps=20;grid=trailing;eta=0.5;attention_reuse=steps:1/3;feature_cache=uniform:3;"
                    "cache_branch=1;guidance=2;time_shift=80:300;time_shift_mode=destination")
    assert SamplerSpec.parse(text) == spec and hash(SamplerSpec.parse(text)) == hash(spec)
    assert spec.tag() == "ddim_20steps_eta0.5_reuse-steps1-3_cache-uniform3-db1_w2_ts80-300dest"
    # defaults are filled, so spelling them out changes nothing
    assert make_spec("ddim", 10, time_shift="80:300", time_shift_mode="query", eta=0) == \
        make_spec("ddim", 10, time_shift="80:300")
    # flags over a run's default: a new solver drops the old one's knobs, "off" drops a transform's
    merged = spec.merged({"solver": "dpmpp2m", "time_shift": "off", "steps": "5"})
    assert merged.to_string() == ("solver=dpmpp2m;steps=5;grid=trailing;attention_reuse=steps:1/3;"
                                  "feature_cache=uniform:3;cache_branch=1;guidance=2")


def test_markdown_table_has_mean_and_std_over_seeds():
    recs = []
    for n in (5, 10):
        for ts in ("off", "80:300"):
            spec = make_spec("ddim", n, time_shift=ts)
            recs += [{"ckpt": 5, "sampler": spec.to_string(), **spec.to_values(), "fd_digits": fd,
                      "class_accuracy": 0.9, "seed": seed} for seed, fd in ((0, 3.0), (1, 5.0))]
    md = markdown(recs, "t")
    assert "| ddim | off | 4.00 ± 1.41 (90%) | 4.00 ± 1.41 (90%) |" in md
    assert md.index("| ddim | off |") < md.index("| ddim | time_shift 80:300 |")
