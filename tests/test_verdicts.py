"""``benchmarks/verdicts.py``: how the two judges' rows become one verdict per face (the figure the notes report)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from verdicts import seed_table, verdict_table, verdicts  # noqa: E402


def dlib_row(probe, reference, saved, jpeg, jitter):
    return {"probe": probe, "reference": reference, "clean": 0.3, "saved": saved, "jpeg75": jpeg, "jitter10": jitter}


def facenet_row(probe, reference, cosine, jpeg):
    return {"probe": f"/out/{probe[:-4]}.protected.png", "reference": f"/faces/{reference}", "face": 0,
            "cosine": cosine, "cosine_jpeg75": jpeg}


def test_a_face_is_protected_only_when_both_judges_miss_it_in_every_column():
    dlib = [dlib_row("a.jpg", "b.jpg", 0.70, 0.65, 0.59),  # 10 jitters still match
            dlib_row("b.jpg", "a.jpg", 0.70, 0.65, 0.62),
            dlib_row("two.jpg", "b.jpg", 0.80, None, 0.75),  # the re-save lost the face: not a match
            dlib_row("two.jpg", "c.jpg", 0.70, 0.70, 0.70)]
    facenet = [facenet_row("a.jpg", "b.jpg", 0.10, 0.20),
               facenet_row("b.jpg", "a.jpg", 0.40, 0.46),  # JPEG q75 matches
               facenet_row("two.jpg", "b.jpg", 0.10, 0.12), facenet_row("two.jpg", "b.jpg", 0.30, None),
               facenet_row("two.jpg", "c.jpg", 0.44, 0.30)]
    found = verdicts(dlib, facenet)
    assert [(v.probe, v.reference) for v in found] == [("a.jpg", "b.jpg"), ("b.jpg", "a.jpg"), ("two.jpg", "b.jpg"),
                                                        ("two.jpg", "c.jpg")]
    assert [v.protected for v in found] == [False, False, True, True]
    assert found[0].dlib == 0.59 and found[1].facenet == 0.46 and found[2].dlib == 0.75 and found[2].facenet == 0.30
    assert verdict_table(found).endswith("faces unmatched by both judges in every column: 2 of 4")


def test_without_facenet_rows_dlib_decides_and_seeds_are_counted_per_face():
    one = verdicts([dlib_row("a.jpg", "b.jpg", 0.61, 0.62, 0.63)], [])
    other = verdicts([dlib_row("a.jpg", "b.jpg", 0.58, 0.62, 0.63)], [])
    assert one[0].protected and one[0].facenet is None and not other[0].protected
    table = seed_table({0: one, 1: other})
    assert "1 of 2" in table.splitlines()[1]
    assert table.splitlines()[-1].startswith("seed 1: dlib mean worst 0.580") and table.endswith("unmatched by both 0 of 1")
