"""An exported or LoRA'd student finds the diffusers metadata of the import it descends from
(orchestration/workdir/diffusers_meta.py): its own, its teacher's, or its init run's."""

import json

import ml_collections
import pytest

from configs.common import base_config
from orchestration.workdir.diffusers_meta import LAYOUT, META, find_meta


def write_run(path, **fields):
    c = base_config()
    for key, value in fields.items():
        section, name = key.split(".")
        if section not in c:
            c[section] = ml_collections.ConfigDict()
        c[section][name] = value
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(c.to_dict()))
    return ml_collections.ConfigDict(c.to_dict())


def test_a_student_finds_its_teachers_import(tmp_path):
    write_run(tmp_path / "imported")
    (tmp_path / "imported" / META).mkdir()
    (tmp_path / "imported" / META / LAYOUT).write_text("{}")
    tuned = write_run(tmp_path / "tuned", **{"distill.teacher_workdir": str(tmp_path / "imported")})
    student = write_run(tmp_path / "student", **{"distill.teacher_workdir": str(tmp_path / "tuned")})
    assert find_meta(tmp_path / "student", student) == tmp_path / "imported" / META
    assert find_meta(tmp_path / "tuned", tuned) == tmp_path / "imported" / META


def test_a_run_not_from_an_import_is_refused_with_where_it_looked(tmp_path):
    a = write_run(tmp_path / "a", **{"distill.teacher_workdir": str(tmp_path / "b")})
    write_run(tmp_path / "b", **{"distill.teacher_workdir": str(tmp_path / "a")})  # a cycle ends too
    with pytest.raises(ValueError, match="not an imported Stable Diffusion run nor descended from one"):
        find_meta(tmp_path / "a", a)
