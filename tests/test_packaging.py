"""Meta-tests: entry points, package list, hooks documented and tested, README and CI in step, and the
weights every part (built-in or third-party) declares for `guardkit models`."""

from __future__ import annotations

import ast
import inspect
import json
import re
import sys
import tomllib
from pathlib import Path

import pytest

from guardkit import hookspecs
from guardkit.hookspecs import KINDS

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _imported_modules(module: str) -> set[str]:
    """The modules that ``module`` (a ``guardkit.plugins`` module) imports from, read from its source;
    ``from .sibling import x`` counts as ``<its package>.sibling``."""
    path = (REPO / "plugins" / Path(*module.split(".")[2:])).with_suffix(".py")
    package = module.rpartition(".")[0]
    return {node.module if node.level == 0 else f"{package}.{node.module}"
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and node.module and node.level <= 1}


def test_entry_points_cover_every_plugin_module():
    """Every plugin module is an entry point, or a helper file that an entry-point module of the same
    package imports relatively, directly or through another helper (``flux_edit`` registers the editor,
    ``from .flux_flow import ...`` holds its math; ``purifiers`` registers ``jpeg.py``, which uses
    ``common.py``): nothing is orphaned."""
    targets = set(PYPROJECT["project"]["entry-points"]["guardkit"].values())
    modules = {
        "guardkit.plugins." + ".".join(p.relative_to(REPO / "plugins").with_suffix("").parts)
        for p in (REPO / "plugins").rglob("*.py") if p.name != "__init__.py"
    }
    assert targets <= modules
    reached, todo = set(targets), list(targets)
    while todo:
        module = todo.pop()
        package = module.rpartition(".")[0]
        for used in _imported_modules(module) & modules:
            if used.rpartition(".")[0] == package and used not in reached:
                reached.add(used)
                todo.append(used)
    orphans = sorted(modules - reached)
    assert orphans == [], f"neither entry points nor imported by one in their package: {orphans}"


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
    """A plugin reaches another plugin's parts through the registry or the part it was given, never by import;
    it may import its own helper files relatively (``from .arcface_graph import ...``), never ``from ..``."""
    offenders = []
    for path in (REPO / "plugins").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and ((node.module or "").startswith("guardkit.plugins") or node.level > 1):
                offenders.append(f"{path.relative_to(REPO)}: {'.' * node.level}{node.module or ''}")
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


# ----------------------------------------------------------------------------- parts declare their weights
EXAMPLE = REPO / "examples" / "guardkit-example-plugin"

#: What `guardkit models` lists for the built-ins: each part declares these at registration, core lists none.
BUILTIN_WEIGHTS = {
    "dlib_face_recognition_resnet_model_v1.dat": "face model dlib",
    "shape_predictor_5_face_landmarks.dat": "face finder dlib",
    "mmod_human_face_detector.dat": "face finder dlib (fallback)",
    "pnet.onnx": "face finder mtcnn (pnet)",
    "rnet.onnx": "face finder mtcnn (rnet)",
    "onet.onnx": "face finder mtcnn (onet)",
    "graph_final.pb": "face model facenet",
    "w600k_r50.onnx": "face model arcface",
    "det_10g.onnx": "face finder insightface",
    "adaface_ir101_webface12m.ckpt": "face model adaface (ir_101)",
    "adaface_ir50_ms1mv2.ckpt": "face model adaface (ir_50)",
    "79999_iter.pth": "face parser bisenet",
    "alexnet-owt-7be5be79.pth": "loss lpips (alex), loss lpips-pixel (alex), metric lpips (alex), "
                                "edit method flux-guard (alex)",
    "timbrooks/instruct-pix2pix": "encoder sd-vae, editor ip2p",
    "black-forest-labs/FLUX.1-dev": "encoder flux, editor flux-edit",
    "openai/clip-vit-base-patch32": "metric clip-i, metric clip-s",
    "google/ddpm-celebahq-256": "purifier diffpure",
}


def test_every_builtin_weight_source_is_declared_by_its_part():
    from guardkit.cli.models import weight_rows
    from guardkit.engine import Engine

    rows = {r["weights"]: r for r in weight_rows(Engine().registry)}
    assert {name: rows[name]["part"] for name in BUILTIN_WEIGHTS if name in rows} == BUILTIN_WEIGHTS
    assert rows["w600k_r50.onnx"]["origin"] == "guardkit:arcface"
    assert rows["timbrooks/instruct-pix2pix"]["origin"] == "guardkit:sd_vae, guardkit:ip2p"


@pytest.fixture
def example_installed(tmp_path, monkeypatch):
    """The example plugin as `pip install -e examples/guardkit-example-plugin` leaves it, without pip: a
    dist-info with its entry points on sys.path, and its source folder on sys.path."""
    meta = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    info = tmp_path / "guardkit_example-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n")
    points = "".join(f"{name} = {target}\n" for name, target in meta["entry-points"]["guardkit"].items())
    (info / "entry_points.txt").write_text(f"[guardkit]\n{points}")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(EXAMPLE))
    yield
    for module in [m for m in sys.modules if m == "guardkit_example" or m.startswith("guardkit_example.")]:
        del sys.modules[module]


def models_json(*args: str) -> tuple[int, list[dict]]:
    from typer.testing import CliRunner

    from guardkit.cli import app

    result = CliRunner().invoke(app, ["models", "--json", *args])
    return result.exit_code, json.loads(result.stdout)


def test_a_third_party_parts_weights_appear_in_guardkit_models(example_installed, tmp_path):
    code, rows = models_json()
    assert code == 0
    by_name = {r["weights"]: r for r in rows}
    row = by_name["sharpen3x3.json"]
    assert row["part"] == "purifier example-sharpen" and row["origin"] == "guardkit-example:example"
    assert row["status"] == "ok (sha256 verified)"
    assert Path(row["path"]) == EXAMPLE / "guardkit_example" / "sharpen3x3.json"
    assert "dlib_face_recognition_resnet_model_v1.dat" in by_name  # beside the built-ins' weights
    # --disable-plugin hides it; a tampered copy in --weights-dir (looked at first) fails the checksum
    assert "sharpen3x3.json" not in {r["weights"] for r in models_json("--disable-plugin", "example")[1]}
    (tmp_path / "sharpen3x3.json").write_text('{"kernel": [[0, 0, 0], [0, 1, 0], [0, 0, 0]]}')
    code, rows = models_json("--weights-dir", str(tmp_path))
    assert code == 1 and {r["weights"]: r["status"] for r in rows}["sharpen3x3.json"] == "CHECKSUM MISMATCH"


def test_the_example_purifier_loads_its_weights_and_reads_its_shorthand(example_installed, tmp_path):
    import torch

    from guardkit.config import RunConfig
    from guardkit.engine import Engine
    from guardkit.errors import WeightsError

    engine = Engine()
    part = engine.load_purifier("example-sharpen5", RunConfig())
    assert part.config.strength == 0.5 and part.kernel.sum() == 0  # the shipped Laplacian
    flat = torch.full((1, 3, 8, 8), 0.4)
    assert torch.allclose(part.purify(flat), flat)  # no detail, nothing added
    edge = torch.zeros(1, 3, 8, 8)
    edge[..., 4:] = 0.5
    assert not torch.allclose(part.purify(edge), edge)
    (tmp_path / "sharpen3x3.json").write_text("{}")
    with pytest.raises(WeightsError, match="sha256 does not match") as info:
        engine.load_purifier("example-sharpen", RunConfig(weights_dir=tmp_path))
    assert "\n" not in str(info.value)


def test_a_part_that_declares_bad_weights_fails_only_its_plugin():
    from guardkit import hookimpl
    from guardkit.errors import ConfigError
    from guardkit.registry import Registry, make_plugin_manager
    from guardkit.weights import KnownWeight

    class Plugin:
        @hookimpl
        def guardkit_register_losses(self, register):
            register("good", object, weights=(KnownWeight("good.pth", "file", "ask the author"),))
            register("bad", object, weights=("bad.pth",))

    pm, _ = make_plugin_manager(entry_points=False, plugins=[Plugin()])
    errors = []
    registry = Registry.from_plugin_manager(pm, errors)
    assert registry.names("loss") == ["good"] and [w.name for w in registry.get("loss", "good").weights] == ["good.pth"]
    assert len(errors) == 1 and "KnownWeight" in str(errors[0]) and "'bad'" in str(errors[0])
    with pytest.raises(ConfigError, match="where must be one of"):
        KnownWeight("x.pth", "cloud", "somewhere")
    with pytest.raises(ConfigError, match="needs pack="):
        KnownWeight("x.onnx", "insightface", "an insightface pack")
