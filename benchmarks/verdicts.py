"""One verdict per judged pair from the two judges' rows: is the face unmatched by both, in every column?

``judge_dlib.py --json`` gives, per (probe, reference) pair, the smallest distance over the probe's faces as saved,
after a JPEG q75 re-save and under 10 jitters; ``judge_facenet.py --json`` gives every probe face's cosine with the
reference, saved and JPEG q75. A pair's worst case is dlib's smallest distance over its columns and FaceNet's
largest cosine over the probe's faces and its columns (for a photo of two people, the face of the reference's
person). A face is protected when dlib's worst is above 0.6 and FaceNet's below 0.45 (a face a judge no longer
finds counts as protected there). With several seeds, ``seed_table`` shows how far one run's verdicts can be
trusted: faces near a threshold land on either side of it from seed to seed.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

DLIB_THRESHOLD = 0.6  # Euclidean distance; below it dlib matches
FACENET_THRESHOLD = 0.45  # cosine; above it FaceNet matches


@dataclass(frozen=True)
class Verdict:
    probe: str  # the original photo's file name
    reference: str
    dlib: float | None  # worst (smallest) distance; None: no face found in any column
    facenet: float | None  # worst (largest) cosine; None: no FaceNet rows for this pair, or no face found

    @property
    def protected(self) -> bool:
        return (self.dlib is None or self.dlib > DLIB_THRESHOLD) and \
            (self.facenet is None or self.facenet < FACENET_THRESHOLD)


def _photo_name(path: str) -> str:
    name = Path(path).name
    return name[: -len(".protected.png")] + ".jpg" if name.endswith(".protected.png") else name


def verdicts(dlib_rows: Sequence[dict], facenet_rows: Sequence[dict]) -> list[Verdict]:
    """One verdict per dlib pair (the pairs of ``judge_dlib.PAIRS`` that were judged), in dlib's order."""
    cosines: dict[tuple[str, str], list[float]] = {}
    for row in facenet_rows:
        key = (_photo_name(row["probe"]), Path(row["reference"]).name)
        values = [row[c] for c in ("cosine", "cosine_jpeg75") if row.get(c) is not None]
        cosines.setdefault(key, []).extend(values)
    out = []
    for row in dlib_rows:
        distances = [row[c] for c in ("saved", "jpeg75", "jitter10") if row.get(c) is not None]
        found = cosines.get((row["probe"], row["reference"]), [])
        out.append(Verdict(row["probe"], row["reference"], min(distances) if distances else None,
                           max(found) if found else None))
    return out


def _fmt(value: float | None) -> str:
    return "  -  " if value is None else f"{value:.3f}"


def verdict_table(rows: Sequence[Verdict]) -> str:
    lines = [f"{'probe':16} {'reference':15} {'dlib worst':>10} {'FaceNet worst':>13}  verdict"]
    for v in rows:
        lines.append(f"{v.probe:16} {v.reference:15} {_fmt(v.dlib):>10} {_fmt(v.facenet):>13}  "
                     f"{'unmatched by both' if v.protected else 'MATCHED'}")
    lines.append(f"faces unmatched by both judges in every column: {sum(v.protected for v in rows)} of {len(rows)}")
    return "\n".join(lines)


def seed_table(by_seed: dict[int, Sequence[Verdict]]) -> str:
    """Per pair: each seed's worst dlib / FaceNet values and how many seeds left it unmatched; then per seed the
    means and the count."""
    seeds = sorted(by_seed)
    pairs = [(v.probe, v.reference) for v in by_seed[seeds[0]]]
    lines = [f"{'probe':16} {'reference':15} " + " ".join(f"{'seed ' + str(s):>13}" for s in seeds) + "  unmatched"]
    for probe, reference in pairs:
        cells, wins = [], 0
        for s in seeds:
            v = next((x for x in by_seed[s] if (x.probe, x.reference) == (probe, reference)), None)
            cells.append(f"{_fmt(v.dlib if v else None)}/{_fmt(v.facenet if v else None)}")
            wins += bool(v and v.protected)
        lines.append(f"{probe:16} {reference:15} " + " ".join(f"{c:>13}" for c in cells) + f"  {wins} of {len(seeds)}")
    for s in seeds:
        rows = by_seed[s]
        dl = [v.dlib for v in rows if v.dlib is not None]
        fn = [v.facenet for v in rows if v.facenet is not None]
        lines.append(f"seed {s}: dlib mean worst {statistics.fmean(dl) if dl else float('nan'):.3f}, FaceNet mean worst "
                     f"{statistics.fmean(fn) if fn else float('nan'):.3f}, unmatched by both "
                     f"{sum(v.protected for v in rows)} of {len(rows)}")
    return "\n".join(lines)
