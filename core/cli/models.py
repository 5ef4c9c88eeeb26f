"""``guardkit models``: every weight source the built-in parts use, where it was found, and checksums."""

from __future__ import annotations

import json

from rich.table import Table

from guardkit.cli._options import JsonOpt, WeightsDirOpt, one_line_errors, out_console
from guardkit.weights import KNOWN_WEIGHTS, find_known_weight, sha256_of


@one_line_errors
def models_command(weights_dir: WeightsDirOpt = None, as_json: JsonOpt = False) -> None:
    """List the weights guardkit's parts use, where they were found, and verify known sha256 sums.

    Nothing is downloaded: missing weights show how to get them. Exit code 1 when a file does not verify."""
    import typer

    rows = []
    for weight in KNOWN_WEIGHTS:
        path = find_known_weight(weight, weights_dir)
        if path is None:
            status = "missing"
        elif weight.sha256 and path.is_file():
            status = "ok (sha256 verified)" if sha256_of(path) == weight.sha256 else "CHECKSUM MISMATCH"
        else:
            status = "found"
        rows.append({"part": weight.part, "weights": weight.name, "status": status,
                     "path": str(path) if path else None, "how_to_get": weight.how_to_get})
    if as_json:
        out_console.print_json(json.dumps(rows))
    else:
        table = Table(title="model weights (never downloaded at run time)")
        for column in ("part", "weights", "status", "path / how to get it"):
            table.add_column(column)
        for r in rows:
            table.add_row(r["part"], r["weights"], r["status"], r["path"] or r["how_to_get"])
        out_console.print(table)
    if any(r["status"] == "CHECKSUM MISMATCH" for r in rows):
        raise typer.Exit(1)
