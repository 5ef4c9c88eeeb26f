"""Meta-tests: entry points, package list, hooks documented and tested, README and CI in step."""

from __future__ import annotations

import ast
import inspect
import re
import tomllib
from pathlib import Path

from guardkit import hookspecs
from guardkit.hookspecs import KINDS

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_entry_points_cover_every_plugin_module():
    targets = set(PYPROJECT["project"]["entry-points"]["guardkit"].values())
    modules = {
        "guardkit.plugins." + ".".join(p.relative_to(REPO / "plugins").with_suffix("").parts)
        for p in (REPO / "plugins").rglob("*.py") if p.name != "__init__.py"
    }
    assert modules == targets


def test_package_list_covers_every_folder():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    folders = {"guardkit" + "".join("." + part for part in d.relative_to(REPO / "core").parts)
               for d in [REPO / "core", *(REPO / "core").rglob("*")] if d.is_dir() and (d / "__init__.py").exists()}
    folders |= {"guardkit.plugins" + "".join("." + part for part in d.relative_to(REPO / "plugins").parts)
                for d in [REPO / "plugins", *(REPO / "plugins").rglob("*")]
                if d.is_dir() and (d / "__init__.py").exists()}
    assert listed == folders


def hook_names() -> list[str]:
    return [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("guardkit_")]


def test_every_hook_is_a_kind():
    assert sorted(hook_names()) == sorted(KINDS.values())


def test_every_hook_is_documented_with_its_signature():
    doc = (REPO / "docs" / "plugins.md").read_text()
    for name in hook_names():
        params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"{name}({params})" in doc, f"{name} is not documented in docs/plugins.md"


def test_every_hook_has_a_test():
    names = set()
    for path in (REPO / "tests").glob("test_*.py"):
        names |= {node.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.FunctionDef)}
    for name in hook_names():
        assert f"test_hook_{name}" in names, f"no test_hook_{name}"


def readme_commands() -> list[str]:
    block = re.search(r"```(?:bash|sh)\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert block, "README must open with a bash block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_readme_opens_with_install_and_test_commands_that_ci_runs():
    commands = readme_commands()
    assert len(commands) == 2
    assert "guardkit run" in commands[0] and "pytest" in commands[1]
    ci = (REPO / ".ci" / "run").read_text()
    for command in commands:
        assert command in ci, f"CI does not run the README's command: {command}"


def test_core_never_imports_plugins():
    """Built-ins are found through entry points like third-party parts; core does not know them."""
    offenders = []
    for path in (REPO / "core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.startswith("guardkit.plugins")]
    assert offenders == []


def test_plugins_import_only_core():
    """A plugin reaches another plugin's parts through the registry or the part it was given, never by import."""
    offenders = []
    for path in (REPO / "plugins").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("guardkit.plugins"):
                offenders.append(f"{path.relative_to(REPO)}: {node.module}")
    assert offenders == []


def test_part_options_from_the_command_line_take_their_field_types():
    """``-O key=value`` arrives as text or a number; every part's config reads it by the field's type."""
    import pytest

    from guardkit.config import build_config
    from guardkit.errors import ConfigError
    from guardkit.latent_attack import LatentAttackConfig

    config = build_config(LatentAttackConfig, {"channels_last": "false", "compile": "1", "resolution": "64"})
    assert (config.channels_last, config.compile, config.resolution) == (False, True, 64)
    with pytest.raises(ConfigError, match="channels_last must be true or false"):
        build_config(LatentAttackConfig, {"channels_last": "maybe"})
    with pytest.raises(ConfigError, match="encoder 'x': unknown option.*colour"):
        build_config(LatentAttackConfig, {"colour": 1}, "encoder 'x'")
