"""The distiller registry: each method's file declares its config fields; configs and old
work directories follow it."""

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
                             "sample_steps"}
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
