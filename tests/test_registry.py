"""The plugin manager and registry: discovery, duplicates, unknown names, broken and disabled plugins."""

from __future__ import annotations

import sys
import textwrap

import pytest

from guardkit import hookimpl
from guardkit.errors import DuplicatePartError, UnknownPartError
from guardkit.hookspecs import KINDS
from guardkit.registry import Registry, make_plugin_manager
from guardkit.testing import TinyFaceModel


class LossA:
    maximize = True
    needs = frozenset()

    def __call__(self, view):
        return (view.adv - view.clean).flatten(1).mean(1)


def make_plugin(kind: str, name: str, factory=LossA):
    hook = KINDS[kind]

    class Plugin:
        pass

    def impl(self, register):
        register(name, factory, summary=f"{kind} {name}")

    impl.__name__ = hook
    setattr(Plugin, hook, hookimpl(impl))
    return Plugin()


def registry_of(pm):
    errors = []
    return Registry.from_plugin_manager(pm, errors), errors


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_registers_through_its_hook(guardkit_pm, kind):
    guardkit_pm.register(make_plugin(kind, "thing"), name="p1")
    registry, errors = registry_of(guardkit_pm)
    spec = registry.get(kind, "thing")
    assert (spec.kind, spec.origin, spec.summary) == (kind, "p1", f"{kind} thing")
    assert errors == []


def test_duplicate_name_is_an_error_naming_both_origins(guardkit_pm):
    guardkit_pm.register(make_plugin("loss", "same"), name="first-plugin")
    guardkit_pm.register(make_plugin("loss", "same"), name="second-plugin")
    with pytest.raises(DuplicatePartError) as info:
        registry_of(guardkit_pm)
    assert "first-plugin" in str(info.value) and "second-plugin" in str(info.value)


def test_same_name_in_two_kinds_is_fine(guardkit_pm):
    guardkit_pm.register(make_plugin("face_model", "dlib", TinyFaceModel), name="a")
    guardkit_pm.register(make_plugin("face_finder", "dlib"), name="b")
    registry, _ = registry_of(guardkit_pm)
    assert registry.names("face_model") == registry.names("face_finder") == ["dlib"]


def test_unknown_name_lists_available(guardkit_pm):
    guardkit_pm.register(make_plugin("method", "alpha"), name="p")
    registry, _ = registry_of(guardkit_pm)
    with pytest.raises(UnknownPartError, match=r"unknown method 'alhpa'\. Available methods: alpha"):
        registry.get("method", "alhpa")


def test_capabilities_are_read_from_the_factory_before_loading(guardkit_pm):
    guardkit_pm.register(make_plugin("face_model", "tiny", TinyFaceModel), name="p")
    registry, _ = registry_of(guardkit_pm)
    caps = registry.get("face_model", "tiny").capabilities
    assert caps["differentiable"] is True and caps["metric"] == "cosine" and caps["input_size"] == 32


def test_a_raising_register_hook_is_reported_and_others_work(guardkit_pm):
    class Broken:
        @hookimpl
        def guardkit_register_losses(self, register):
            raise RuntimeError("boom")

    guardkit_pm.register(Broken(), name="brokendist:broken")
    guardkit_pm.register(make_plugin("loss", "fine"), name="ok")
    registry, errors = registry_of(guardkit_pm)
    assert registry.names("loss") == ["fine"]
    assert len(errors) == 1 and "boom" in str(errors[0]) and "brokendist" in str(errors[0])


@pytest.fixture
def fake_distributions(tmp_path, monkeypatch):
    """Two real installed distributions on sys.path: one good plugin, one that fails to import."""
    (tmp_path / "gk_good_plugin.py").write_text(textwrap.dedent("""
        from guardkit import hookimpl
        class L:
            maximize = False
            needs = frozenset()
            def __call__(self, view):
                return view.adv.flatten(1).mean(1)
        @hookimpl
        def guardkit_register_losses(register):
            register("good-loss", L, summary="from a fake dist")
    """))
    (tmp_path / "gk_bad_plugin.py").write_text("raise ImportError('needs a missing package')\n")
    for dist, module in (("guardkit-good", "gk_good_plugin"), ("guardkit-bad", "gk_bad_plugin")):
        info = tmp_path / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[guardkit]\n{module.replace('gk_', '')} = {module}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for module in ("gk_good_plugin", "gk_bad_plugin"):
        sys.modules.pop(module, None)


def test_entry_point_discovery_reports_broken_plugin_in_one_line(fake_distributions):
    pm, errors = make_plugin_manager()
    registry, more = registry_of(pm)
    assert registry.get("loss", "good-loss").origin == "guardkit-good:good_plugin"
    messages = [str(e) for e in errors + more]
    bad = [m for m in messages if "guardkit-bad" in m]
    assert len(bad) == 1 and "\n" not in bad[0] and "bad_plugin" in bad[0] and "ImportError" in bad[0]
    assert "fr-cloak" in registry.names("method")  # built-ins keep working


def test_disable_plugin_by_argument_and_environment(fake_distributions, monkeypatch):
    pm, errors = make_plugin_manager(blocked=["good_plugin", "bad_plugin"])
    registry, _ = registry_of(pm)
    assert "good-loss" not in registry.names("loss") and errors == []
    monkeypatch.setenv("GUARDKIT_DISABLE_PLUGINS", "good_plugin, bad_plugin")
    pm, errors = make_plugin_manager()
    registry, _ = registry_of(pm)
    assert "good-loss" not in registry.names("loss") and errors == []
    assert "fr-cloak" in registry.names("method")


def test_each_plugin_manager_is_fresh():
    pm1, _ = make_plugin_manager(entry_points=False, plugins=[make_plugin("loss", "only-here")])
    pm2, _ = make_plugin_manager(entry_points=False)
    assert registry_of(pm1)[0].names("loss") == ["only-here"]
    assert registry_of(pm2)[0].names("loss") == []
