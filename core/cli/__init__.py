"""The ``guardkit`` command line: thin typer commands over the library.

Exit codes: 0 success; 1 some photos failed (the others were done); 2 bad usage or options
(unknown part, missing input, missing weights), reported in one line without a traceback.
"""

from __future__ import annotations

import typer

from guardkit.cli import bench as _bench
from guardkit.cli import edit as _edit
from guardkit.cli import enroll as _enroll
from guardkit.cli import evaluate as _evaluate
from guardkit.cli import methods as _methods
from guardkit.cli import models as _models
from guardkit.cli import plugins as _plugins
from guardkit.cli import run as _run
from guardkit.cli import serve as _serve  # issue 15

app = typer.Typer(
    name="guardkit",
    help="Protect faces in photos from face recognition and diffusion editing.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("run")(_run.run_command)
app.command("enroll")(_enroll.enroll_command)  # issue 14: a personal cloak
app.command("plugins")(_plugins.plugins_command)
app.command("models")(_models.models_command)
app.add_typer(_methods.app, name="methods")
app.command("eval")(_evaluate.eval_command)
app.command("verify")(_evaluate.verify_command)
app.command("edit")(_edit.edit_command)
app.add_typer(_bench.app, name="bench")
app.command("serve")(_serve.serve_command)  # issue 15


def main() -> None:
    """Console-script entry point."""
    app()
