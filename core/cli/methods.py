"""``guardkit methods``: list the protection methods, or show one method's recipe and defaults."""

from __future__ import annotations

import dataclasses
import inspect
import json
from typing import Annotated

import typer
from rich.table import Table

from guardkit.cli._options import DisableOpt, JsonOpt, one_line_errors, out_console

app = typer.Typer(help="Protection methods: list them, or show one's recipe.", no_args_is_help=True)


def recipe(spec) -> dict:
    """What a method is made of: needs, losses and weights, term schedule, steps, options and defaults."""
    factory = spec.factory
    config_class = getattr(factory, "config_class", None)
    options = {f.name: f.default for f in dataclasses.fields(config_class)} if config_class else {}
    return {
        "name": spec.name,
        "origin": spec.origin,
        "summary": spec.summary,
        "needs": sorted(getattr(factory, "needs", ())),
        "needs_gradients": bool(getattr(factory, "needs_gradients", False)),
        "losses": dict(getattr(factory, "default_losses", {})),
        "term_starts": dict(getattr(factory, "starts", {})),
        "default_steps": getattr(factory, "default_steps", None),
        "options": options,
        "strengths": {name: {"eps": st.eps, "steps": st.steps, "options": dict(st.options), "summary": st.summary,
                             "measured": st.measured}
                      for name, st in (getattr(factory, "strengths", {}) or {}).items()},
        "doc": inspect.getdoc(inspect.getmodule(factory)) or inspect.getdoc(factory) or "",
    }


@app.command("list")
@one_line_errors
def list_command(as_json: JsonOpt = False, disable_plugin: DisableOpt = None) -> None:
    """Every registered protection method (and editing-time protection) with its summary."""
    from guardkit.engine import Engine

    engine = Engine(disabled=disable_plugin or ())
    specs = [engine.registry.get(kind, n) for kind in ("method", "edit_method") for n in engine.registry.names(kind)]
    if as_json:
        out_console.print_json(json.dumps([{"name": s.name, "origin": s.origin, "summary": s.summary} for s in specs]))
        return
    table = Table(title="methods")
    for column in ("name", "needs", "origin", "summary"):
        table.add_column(column)
    for s in specs:
        table.add_row(s.name, ", ".join(sorted(s.capabilities.get("needs", ()))), s.origin, s.summary)
    out_console.print(table)


@app.command("show")
@one_line_errors
def show_command(name: Annotated[str, typer.Argument(help="Method name.")], as_json: JsonOpt = False,
                 disable_plugin: DisableOpt = None) -> None:
    """A method's recipe: parts, loss terms and weights, schedule, defaults, and its documentation."""
    from guardkit.engine import Engine

    registry = Engine(disabled=disable_plugin or ()).registry
    kind = "edit_method" if name in registry.names("edit_method") else "method"
    info = recipe(registry.get(kind, name))
    if as_json:
        out_console.print_json(json.dumps(info, default=str))
        return
    out_console.print(f"[bold]{info['name']}[/]  ({info['origin']})  {info['summary']}", highlight=False, soft_wrap=True)
    out_console.print(f"needs: {', '.join(info['needs']) or 'nothing'}; gradients: {info['needs_gradients']}; "
                      f"default steps: {info['default_steps']}", highlight=False, soft_wrap=True)
    terms = " + ".join(f"{w:g} x {n}" + (f" (from {info['term_starts'][n]:.0%} of the steps)"
                                          if n in info["term_starts"] else "") for n, w in info["losses"].items())
    out_console.print(f"objective: {terms or '(method-defined)'}", highlight=False, soft_wrap=True)
    if info["options"]:
        out_console.print("options (-O key=value): " + ", ".join(f"{k}={v!r}" for k, v in info["options"].items()),
                          highlight=False, soft_wrap=True)
    for name, st in info["strengths"].items():
        out_console.print(f"--strength {name}: eps {st['eps'] * 255:.3g}/255, {st['steps']} steps, options "
                          f"{st['options']} - {st['summary']}", markup=False, highlight=False, soft_wrap=True)
        if st["measured"]:
            out_console.print(f"    measured: {st['measured']}", markup=False, highlight=False, soft_wrap=True)
    out_console.print()
    out_console.print(info["doc"], markup=False, highlight=False, soft_wrap=True)
