"""Issue 12 item 14: ``guardkit run`` over a folder and a glob that mix every kind of bad file with odd but
valid portraits. Each bad file is named once (one line, no traceback), each valid portrait is protected
upright with its metadata stripped, and no input byte changes. Kept fast with ``--fr dlib --steps 1``."""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from guardkit.cli import app
from guardkit.imageio import load_rgb

pytestmark = pytest.mark.usefixtures("one_thread")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(width: int, height: int, idat: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def _big_exif(with_orientation: int | None = None) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "GuardkitCam"  # Make
    if with_orientation:
        exif[0x0112] = with_orientation
    gps = {1: "N", 2: (52.0, 22.0, 1.5), 3: "E", 4: (4.0, 53.0, 2.5)}  # GPSLatitude/Longitude
    exif[0x8825] = gps
    exif[0x9286] = b"ASCII\0\0\0" + b"x" * 60_000  # UserComment: 60 KB of EXIF
    return exif.tobytes()


def _bad_files(folder: Path, extra: Path, face: Path) -> list[Path]:
    """Every kind of bad input; the folder ones are named like photos (a walk only looks at those)."""
    jpeg = face.read_bytes()
    bad = {
        folder / "zero.jpg": b"",
        folder / "truncated.jpg": jpeg[: len(jpeg) // 2],
        folder / "random.png": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        folder / "bomb.png": _png(8000, 8000, zlib.compress(b"\0" * (8001 * 8000), 9)),  # 64 Mpx of zeros
        folder / "hugeheader.png": _png(2**31 - 1, 2**31 - 1, zlib.compress(b"\0")),
        extra / "notes.txt": b"just some text, not a photo\n",
        extra / "page.html": b"<!doctype html><html><body><img src='x.jpg'></body></html>\n",
        extra / "drawing.svg": b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>\n",
    }
    for path, data in bad.items():
        path.write_bytes(data)
    Image.new("RGB", (8, 8), (200, 100, 50)).save(folder / "tiny8.png")
    ramp = np.tile(np.linspace(0, 255, 200, dtype=np.uint8), (160, 1))
    Image.fromarray(np.stack([ramp, ramp[::-1], ramp], axis=2)).save(folder / "noface.png")
    (folder / "album.jpg").mkdir()  # a folder named like a photo
    (folder / "dead.jpg").symlink_to(folder / "deleted-long-ago.jpg")  # a broken link
    return [*bad, folder / "tiny8.png", folder / "noface.png", folder / "album.jpg", folder / "dead.jpg"]


def _valid_portraits(folder: Path, extra: Path, face: Path) -> dict[Path, str]:
    """Odd but valid portraits -> how they are stored ("upright" or "rotated": EXIF orientation 6)."""
    rgb = Image.open(face).convert("RGB")
    made: dict[Path, str] = {}

    def save(path: Path, image: Image.Image, how: str = "upright", **kwargs) -> None:
        image.save(path, **kwargs)
        made[path] = how

    save(folder / "cmyk.jpg", rgb.convert("CMYK"), quality=95)
    grey16 = (np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    save(folder / "deep16.png", Image.fromarray(grey16))  # mode I;16
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.new("L", rgb.size, 255))
    save(folder / "alpha.png", rgba)
    save(folder / "palette.png", rgb.quantize(256))
    save(folder / "web.webp", rgb, quality=95)
    save(folder / "scan.tiff", rgb)
    save(folder / "portrait.jpg", rgb, format="PNG")  # a PNG named .jpg
    save(folder / "Ōbama portrait é.jpg", rgb, quality=95)  # unicode and spaces
    # stored turned 90 degrees anticlockwise with EXIF orientation 6 (turn 90 clockwise to view), plus GPS and 60 KB of EXIF
    save(folder / "rotated.jpg", rgb.transpose(Image.Transpose.ROTATE_90), "rotated", quality=95,
         exif=_big_exif(with_orientation=6))
    save(folder / "gps.jpg", rgb, quality=95, exif=_big_exif())
    save(folder / "anim.gif", rgb, save_all=True, append_images=[rgb.rotate(180)], duration=100, loop=0)
    save(extra / "twin.jpg", rgb, quality=95)  # two files sharing a stem
    save(extra / "twin.png", rgb)
    return made


def _hashes(paths) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file() and not p.is_symlink()}


def test_a_batch_of_bad_files_and_odd_portraits(tmp_path, faces_dir):
    face = faces_dir / "obama_small.jpg"
    folder, extra, out = tmp_path / "photos", tmp_path / "extra", tmp_path / "out"
    folder.mkdir()
    extra.mkdir()
    bad = _bad_files(folder, extra, face)
    valid = _valid_portraits(folder, extra, face)
    inputs = [str(folder), *sorted(glob.glob(str(extra / "*")))]  # what a shell makes of `photos/ extra/*`
    before = _hashes([*folder.iterdir(), *extra.iterdir()])

    result = CliRunner().invoke(app, ["run", *inputs, "-o", str(out), "--fr", "dlib", "--steps", "1",
                                      "-O", "eot_draws=1", "--json"])

    assert result.exit_code == 1, result.output  # some photos failed, the others were protected
    assert "Traceback" not in result.output and not isinstance(result.exception, Exception), result.output
    assert _hashes([*folder.iterdir(), *extra.iterdir()]) == before  # no input byte changed
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    for path in bad:
        named = [line for line in lines if path.name in line]
        assert len(named) == 1, (path.name, result.stderr)
        assert named[0].startswith("failed:"), named
    notes = [line for line in lines if line.startswith("note:")]
    assert len(notes) == 1 and "anim.gif" in notes[0] and "first frame" in notes[0]
    assert len(lines) == len(bad) + 1, result.stderr  # nothing else said

    photos = {Path(p["source"]): p for p in json.loads(result.stdout)["photos"]}
    assert {p for p, r in photos.items() if r["status"] == "failed"} == set(bad)
    upright = np.asarray(Image.open(face).convert("RGB"))
    for path, how in valid.items():
        record = photos[path]
        assert record["status"] == "protected", record
        output = Path(record["output"])
        with Image.open(output) as written:
            assert written.format == "PNG" and not written.getexif(), output
            assert not set(written.info) & {"exif", "icc_profile", "xmp", "XML:com.adobe.xmp", "comment", "dpi"}
            pixels = np.asarray(written.convert("RGB"))
        assert pixels.shape == upright.shape, (path.name, pixels.shape)  # upright: 240 high, 320 wide
        if how == "rotated":  # the protected photo is the upright one, not the stored pixels
            assert np.abs(pixels.astype(int) - upright).mean() < 6
        assert np.abs(pixels.astype(int) - load_rgb(path)).max() <= 4 + 1  # eps 4/255, rounding
    twins = {Path(photos[extra / n]["output"]).name for n in ("twin.jpg", "twin.png")}
    assert twins == {"twin.jpg.protected.png", "twin.png.protected.png"}
