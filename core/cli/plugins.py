"""``guardkit plugins``: every part by kind, name, origin and capabilities."""

from __future__ import annotations

import json

from rich.table import Table

from guardkit.cli._options import DisableOpt, JsonOpt, one_line_errors, out_console, warn


def _plain(value):
    return value if isinstance(value, (str, int, float, bool)) or value is None else list(value)


@one_line_errors
def plugins_command(as_json: JsonOpt = False, disable_plugin: DisableOpt = None) -> None:
    """List every registered part: kind, name, origin plugin, capabilities."""
    from guardkit.engine import Engine

    engine = Engine(disabled=disable_plugin or ())
    specs = engine.registry.specs()
    if as_json:
        out_console.print_json(json.dumps({
            "parts": [{"kind": s.kind, "name": s.name, "origin": s.origin, "summary": s.summary,
                       "capabilities": {k: _plain(v) for k, v in s.capabilities.items()}} for s in specs],
            "errors": [str(e) for e in engine.errors],
        }))
        return
    table = Table(title="guardkit parts")
    for column in ("kind", "name", "origin", "capabilities", "summary"):
        table.add_column(column, overflow="fold")
    for s in specs:
        caps = ", ".join(f"{k}={_plain(v)}" for k, v in s.capabilities.items())
        table.add_row(s.kind.replace("_", " "), s.name, s.origin, caps, s.summary)
    out_console.print(table)
    for error in engine.errors:
        warn(str(error))
