"""The distiller registry: each method's file declares its config fields; configs and old
work directories follow it."""

import numpy as np
import pytest

from configs.common import distill_config, shrink_distill_for_smoke, upgrade_config
from distill import registry
from distill.registry import Distiller

OLD_FIELDS = {"method", "teacher_workdir", "weighting", "start_steps", "rounds", "steps_per_round", "w_min", "w_max",
              "p_guided", "num_skip", "target_decay", "teacher_guidance", "loss", "sample_steps"}


@pytest.mark.parametrize("method", ["progressive", "guided", "consistency"])
def test_a_config_holds_exactly_its_methods_fields(method):
    c = distill_config(method)
    assert set(c.distill) == {*registry.GENERIC_FIELDS, *registry.get(method).defaults}
    smoke = shrink_distill_for_smoke(distill_config(method))
    assert set(smoke.distill) == set(c.distill)  # smoke values change fields, never add any


def test_an_old_student_config_keeps_its_methods_fields():
    """Before the registry one distill section held every method's fields; a saved
    config.json of that time resumes against today's config."""
    saved = {"data": {}, "model": {}, "distill": {f: 1 for f in OLD_FIELDS} | {"method": "consistency"}}
    upgraded = upgrade_config(saved)["distill"]
    assert set(upgraded) == {"method", "teacher_workdir", "num_skip", "target_decay", "teacher_guidance", "loss",
                             "sample_steps", "huber_form", "grid", "w_min", "w_max"}
    assert set(distill_config("consistency").distill) == set(upgraded)


def test_registering_a_generic_field_or_a_taken_name_is_an_error():
    with pytest.raises(ValueError, match="belong to every method"):
        registry.register(Distiller("x", "x", {"teacher_workdir": "a"}, build=lambda a: None, student=lambda c: {}))
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Distiller("progressive", "again", {}, build=lambda a: None, student=lambda c: {}))
    with pytest.raises(ValueError, match="unknown distill.method 'lcm'; expected one of consistency, guided"):
        registry.get("lcm")


def test_batch_cond_hands_the_networks_exactly_their_conditions():
    import numpy as np

    from distill.method import batch_cond

    img, lab, ctx, null = np.zeros((2, 4, 4, 1)), np.array([3, 1]), np.ones((2, 5, 8)), np.zeros((2, 5, 8))
    assert batch_cond({"image": img, "label": lab}, None) == {}
    assert batch_cond({"image": img, "label": lab}, 10) == {"label": lab}
    assert batch_cond({"image": img, "context": ctx, "null_context": null, "ids": lab}, None) == {
        "context": ctx, "null_context": null}


# ------------------------------------------------------------------------------------------ issue 26

OLD_ROUNDS = {"weighting": "snr_trunc", "start_steps": 128, "rounds": 7, "steps_per_round": 300}


@pytest.mark.parametrize("method,saved,want", [
    ("progressive", OLD_ROUNDS, {"reset_optimizer": False}),
    ("guided", {**OLD_ROUNDS, "w_min": 1.0, "w_max": 4.0, "p_guided": 0.5},
     {"reset_optimizer": False, "guided_student": "embed", "vanilla_w": "drawn", "ori_weight": 0.0, "w_max": 4.0,
      "p_guided": 0.5}),
    ("consistency", {"num_skip": 50, "target_decay": 0.95, "teacher_guidance": 1.0, "loss": "huber",
                     "sample_steps": 4},
     {"huber_form": "per_image", "grid": "trailing", "w_min": 0.0, "w_max": 0.0, "loss": "huber"}),
])
def test_a_run_from_before_issue_26_loads_with_the_settings_it_trained_with(method, saved, want):
    upgraded = upgrade_config({"data": {}, "model": {}, "distill": {"method": method, "teacher_workdir": "t", **saved}})
    d = upgraded["distill"]
    assert {k: d[k] for k in want} == want
    assert set(d) == set(distill_config(method).distill)


def test_the_new_defaults_are_the_references():
    """Progressive and guided reset Adam at each round; guided is Meng et al.'s (embed, w ~ U[1, 5]
    in our convention, the student told w_target); consistency samples on the lcm grid at a
    constant learning rate with LCM's elementwise pseudo-Huber; the digits distillation
    configs evaluate with x0 clipped to [-1, 1] (the reference's sampler) except consistency."""
    import importlib

    from diffusion.train.optim import learning_rate
    from sampling.spec import SamplerSpec

    p, g, cs = (importlib.import_module(f"configs.digits_{m}").get_config() for m in ("progressive", "guided",
                                                                                       "consistency"))
    assert p.distill.reset_optimizer and g.distill.reset_optimizer
    assert (g.distill.guided_student, g.distill.w_min, g.distill.w_max, g.distill.p_guided, g.distill.vanilla_w,
            g.distill.ori_weight) == ("embed", 1.0, 5.0, 1.0, "target", 0.0)
    for c in (p, g):
        assert dict(SamplerSpec.parse(c.eval.sampler).solver_knobs)["clip_x0"] == 1.0
    assert (cs.distill.grid, cs.distill.huber_form, cs.distill.w_max) == ("lcm", "elementwise", 0.0)
    assert registry.get("consistency").student(cs) == {"solver": "consistency", "steps": 4, "grid": "lcm"}
    lr = learning_rate(cs.train.lr, cs.train.warmup_steps, cs.train.num_steps, cs.train.lr_schedule)
    np.testing.assert_allclose([float(lr(s)) for s in (1, 1000, 1999)], 2e-4, rtol=1e-6)
    old = learning_rate(cs.train.lr, cs.train.warmup_steps, cs.train.num_steps, "cosine")  # before issue 26
    assert float(old(1999)) < 2e-5


def test_variants_and_students():
    import importlib

    guided = importlib.import_module("configs.digits_guided")
    sf = guided.get_config("snapfusion")
    assert (sf.distill.guided_student, sf.distill.p_guided, sf.distill.w_min, sf.distill.w_max,
            sf.distill.ori_weight) == ("cfg", 0.1, 2.0, 14.0, 0.2)
    registry.get("guided").student(sf)
    assert sf.model.guidance_embed is False  # SnapFusion's student has no w input: CFG on its outputs
    meng = guided.get_config()
    registry.get("guided").student(meng)
    assert meng.model.guidance_embed is True
    legacy = guided.get_config("legacy")
    assert (legacy.distill.w_max, legacy.distill.vanilla_w, legacy.distill.reset_optimizer) == (4.0, "drawn", False)
    cons = importlib.import_module("configs.digits_consistency")
    lcd = cons.get_config("lcd")
    registry.get("consistency").student(lcd)
    assert lcd.model.guidance_embed is True
    old = cons.get_config("legacy")
    assert (old.train.lr_schedule, old.distill.grid, old.distill.huber_form) == ("cosine", "trailing", "per_image")
    bad = cons.get_config()
    bad.distill.num_skip = 10
    with pytest.raises(ValueError, match="distill.num_skip=50 or distill.grid=trailing"):
        registry.get("consistency").student(bad)
    assert registry.get("consistency").student(cons.get_config("smoke"))["grid"] == "trailing"
