"""``guardkit models``: every weight source the registered parts declare, where it was found, and checksums."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from guardkit.cli._options import DisableOpt, JsonOpt, WeightsDirOpt, one_line_errors, out_console, warn
from guardkit.weights import declared_weights, weight_status

if TYPE_CHECKING:
    from guardkit.registry import Registry


def weight_rows(registry: "Registry", weights_dir: Path | None = None) -> list[dict[str, Any]]:
    """One row per weight source declared by a part of ``registry`` (built-in or third-party): the parts
    that use it, their plugins, where it was found (or how to get it) and whether its sha256 verifies."""
    rows = []
    for declared in declared_weights(registry.specs()):
        weight = declared.weight
        status, path = weight_status(weight, weights_dir)
        origins = dict.fromkeys(origin for _, origin in declared.users)
        rows.append({"part": ", ".join(label for label, _ in declared.users), "origin": ", ".join(origins),
                     "weights": weight.name, "status": status, "path": str(path) if path else None,
                     "how_to_get": weight.how_to_get})
    return rows


@one_line_errors
def models_command(weights_dir: WeightsDirOpt = None, as_json: JsonOpt = False,
                   disable_plugin: DisableOpt = None) -> None:
    """List the weights every registered part declares, where they were found, and verify known sha256 sums.

    Nothing is downloaded: missing weights show how to get them. Exit code 1 when a file does not verify."""
    import typer

    from guardkit.engine import Engine

    engine = Engine(disabled=disable_plugin or ())
    rows = weight_rows(engine.registry, weights_dir)
    if as_json:
        out_console.print_json(json.dumps(rows))
    else:
        table = Table(title="model weights (never downloaded at run time)")
        for column in ("part", "weights", "status", "path / how to get it"):
            table.add_column(column)
        for r in rows:
            table.add_row(r["part"], r["weights"], r["status"], r["path"] or r["how_to_get"])
        out_console.print(table)
    for error in engine.errors:
        warn(str(error))
    if any(r["status"] == "CHECKSUM MISMATCH" for r in rows):
        raise typer.Exit(1)
