"""The installed command line stands alone: no command module imports pytest or the test helpers."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import importlib, pkgutil, sys
import guardkit.cli
modules = [m.name for m in pkgutil.iter_modules(guardkit.cli.__path__, "guardkit.cli.")]
for name in modules:
    importlib.import_module(name)
for args in (["--help"], ["bench", "--help"], ["bench", "protect", "--help"]):
    try:
        guardkit.cli.app(args, prog_name="guardkit", standalone_mode=False)
    except SystemExit as exc:
        assert exc.code in (0, None), (args, exc.code)
loaded = sorted(m for m in sys.modules if m == "pytest" or m.startswith(("_pytest", "guardkit.testing")))
print("MODULES", len(modules), "LOADED", loaded)
"""


def test_cli_modules_do_not_import_pytest():
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("MODULES") and int(last.split()[1]) >= 5, done.stdout
    assert last.endswith("LOADED []"), last
