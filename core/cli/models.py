"""``guardkit models``: where each weight file comes from, and whether the local copy verifies."""

from __future__ import annotations

import json

from rich.table import Table

from guardkit.cli._options import JsonOpt, WeightsDirOpt, one_line_errors, out_console
from guardkit.errors import WeightsError
from guardkit.weights import DLIB_MMOD, DLIB_RESNET, DLIB_SHAPE5, locate_dlib_file, sha256_of

KNOWN = (DLIB_RESNET, DLIB_SHAPE5, DLIB_MMOD)


@one_line_errors
def models_command(weights_dir: WeightsDirOpt = None, as_json: JsonOpt = False) -> None:
    """List the weight files guardkit's parts use, where they were found, and verify their sha256.

    Exit code 1 when a file is missing or does not verify."""
    import typer

    rows = []
    for weight in KNOWN:
        try:
            path = locate_dlib_file(weight, weights_dir)
        except WeightsError:
            rows.append({"file": weight.filename, "path": None, "status": "missing", "fetch": weight.how_to_get})
            continue
        ok = sha256_of(path) == weight.sha256
        rows.append({"file": weight.filename, "path": str(path), "status": "ok" if ok else "CHECKSUM MISMATCH",
                     "fetch": weight.how_to_get})
    if as_json:
        out_console.print_json(json.dumps(rows))
    else:
        table = Table(title="model weights")
        for column in ("file", "status", "path", "how to get it"):
            table.add_column(column)
        for r in rows:
            table.add_row(r["file"], r["status"], r["path"] or "", r["fetch"])
        out_console.print(table)
    if any(r["status"] != "ok" for r in rows):
        raise typer.Exit(1)
