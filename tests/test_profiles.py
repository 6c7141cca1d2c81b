"""Typed settings: every field documented, a mistyped name fails at once, profiles differ only in size."""

from __future__ import annotations

import dataclasses

import pytest

from softsae_lib.cli_fields import field_docs
from softsae_lib.profiles import EXPERIMENTS, PROFILES, get_profile
from softsae_lib.reproduce import NOTEBOOKS
from softsae_lib.settings import Architectures


def test_every_notebook_has_every_profile_as_a_frozen_dataclass():
    assert set(EXPERIMENTS) == set(NOTEBOOKS)
    for name in NOTEBOOKS:
        kinds = {type(get_profile(name, profile)) for profile in PROFILES}
        assert len(kinds) == 1, f"{name}: profiles of different types {kinds}"
        settings = get_profile(name, "smoke")
        with pytest.raises(dataclasses.FrozenInstanceError):
            settings.seed = 1  # type: ignore[misc]


def test_every_field_has_a_one_line_doc():
    for name in NOTEBOOKS:
        cls = type(get_profile(name, "local"))
        docs = field_docs(cls)
        undocumented = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not undocumented, f"{cls.__name__}: fields without a docstring: {undocumented}"


def test_a_mistyped_setting_fails_at_once_and_lists_the_fields():
    p = get_profile("02_synthetic_manifolds", "smoke")
    with pytest.raises(AttributeError):
        p.dict_sise  # noqa: B018
    with pytest.raises(TypeError, match=r"no field\(s\) \['dict_sise'\].*dict_size"):
        p.replace(dict_sise=3)
    assert p.replace(k=3).k == 3 and p.k == 8  # replace returns a copy


def test_the_lm_arm_overrides_the_synthetic_settings_it_names():
    p = get_profile("05_architectures", "local")
    assert isinstance(p, Architectures) and p.real_arm is not None
    r = p.lm_settings()
    assert (r.dict_size, r.k, r.steps, r.batch_size) == (p.real_arm.dict_size, p.real_arm.k, p.real_arm.steps,
                                                       p.real_arm.batch_size)
    assert (r.archs, r.threads, r.n_boot, r.seed) == (p.archs, p.threads, p.n_boot, p.seed)  # inherited
    assert r.model == "smollm2-135m" and r.real_arm is None
    with pytest.raises(ValueError, match="no real_arm"):
        p.replace(real_arm=None).lm_settings()
