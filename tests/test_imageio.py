"""Tests for guardkit.imageio: odd photos, refusals, safe output plans and atomic writes."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from guardkit import imageio
from guardkit.errors import ConfigError, GuardkitError, ImageError
from guardkit.imageio import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    collect_inputs,
    is_done,
    load_rgb,
    output_path_for,
    plan_outputs,
    save_image,
)

FACES = Path("/work/shared/data/faces")
OBAMA = FACES / "obama.jpg"


def _noise(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _write_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path, format="PNG")
    return path


def _patch_ihdr(png: bytes, width: int, height: int) -> bytes:
    """Rewrite a PNG's IHDR width/height (with a valid CRC) without touching the pixel data."""
    assert png[12:16] == b"IHDR"
    data = struct.pack(">II", width, height) + png[24:29]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + data) & 0xFFFFFFFF)
    return png[:16] + data + crc + png[33:]


def _files(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


# ---------------------------------------------------------------------------------------------
# load_rgb: orientation and modes
# ---------------------------------------------------------------------------------------------


def test_constants() -> None:
    assert MAX_PIXELS == 50_000_000
    assert ".jpg" in IMAGE_SUFFIXES and ".tiff" in IMAGE_SUFFIXES
    assert all(s == s.lower() and s.startswith(".") for s in IMAGE_SUFFIXES)


@pytest.mark.skipif(not OBAMA.exists(), reason="shared face photos not available")
def test_real_photo_loads() -> None:
    arr = load_rgb(OBAMA)
    with Image.open(OBAMA) as im:
        w, h = im.size
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    assert arr.shape[:2] in ((h, w), (w, h))
    assert arr.flags["C_CONTIGUOUS"] and arr.flags["WRITEABLE"]


def test_exif_orientation_6_rotates(tmp_path: Path) -> None:
    # Stored 40 wide x 20 tall: left half red, right half blue.
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(
        path, format="JPEG", exif=exif.tobytes(), quality=95, subsampling=0
    )

    arr = load_rgb(path)
    assert arr.shape == (40, 20, 3)  # portrait after rotation
    top, bottom = arr[:15].reshape(-1, 3).mean(0), arr[25:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def _roundtrip(tmp_path: Path, img: Image.Image, fmt: str, name: str) -> np.ndarray:
    path = tmp_path / name
    img.save(path, format=fmt)
    with Image.open(path) as check:
        expected_mode = check.mode
    arr = load_rgb(path)
    assert arr.dtype == np.uint8 and arr.shape == (img.height, img.width, 3), expected_mode
    return arr


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_bilevel_and_grayscale(tmp_path: Path, fmt: str) -> None:
    gray = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (4, 1))  # 4x16 ramp
    arr = _roundtrip(tmp_path, Image.fromarray(gray), fmt, f"gray.{fmt.lower()}")
    assert np.array_equal(arr[..., 0], gray) and np.array_equal(arr[..., 1], gray)
    assert np.array_equal(arr[..., 2], gray)

    bits = Image.fromarray(gray).convert("1", dither=Image.Dither.NONE)
    arr = _roundtrip(tmp_path, bits, fmt, f"bits.{fmt.lower()}")
    assert set(np.unique(arr)) <= {0, 255}
    assert arr[0, 0].tolist() == [0, 0, 0] and arr[0, -1].tolist() == [255, 255, 255]


def test_rgba_transparent_becomes_white(tmp_path: Path) -> None:
    rgba = np.zeros((10, 20, 4), np.uint8)
    rgba[:, :10] = (0, 0, 0, 0)  # fully transparent black -> white
    rgba[:, 10:] = (200, 30, 40, 255)  # opaque -> unchanged
    rgba[0, 10] = (0, 0, 0, 128)  # half transparent black -> mid gray
    arr = _roundtrip(tmp_path, Image.fromarray(rgba), "PNG", "rgba.png")
    assert (arr[:, :10] == 255).all()
    assert arr[5, 15].tolist() == [200, 30, 40]
    assert 120 <= arr[0, 10, 0] <= 135


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_la_transparent_becomes_white(tmp_path: Path, fmt: str) -> None:
    la = np.zeros((6, 8, 2), np.uint8)
    la[:, 4:] = (60, 255)
    img = Image.fromarray(la)
    assert img.mode == "LA"
    arr = _roundtrip(tmp_path, img, fmt, f"la.{fmt.lower()}")
    assert (arr[:, :4] == 255).all()
    assert (arr[:, 4:] == 60).all()


def test_palette_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (8, 4), 0)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    img.paste(1, (4, 0, 8, 4))
    img.info["transparency"] = 0  # palette index 0 is transparent
    path = tmp_path / "pal.png"
    img.save(path, transparency=0)
    arr = load_rgb(path)
    assert arr.shape == (4, 8, 3)
    assert (arr[:, :4] == 255).all()
    assert (arr[:, 4:] == (10, 200, 30)).all()


def test_palette_without_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (4, 4), 1)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    arr = _roundtrip(tmp_path, img, "PNG", "pal_opaque.png")
    assert (arr == (10, 200, 30)).all()


def test_pa_mode(tmp_path: Path) -> None:
    img = Image.new("PA", (4, 2))
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    img.putpixel((0, 0), (1, 255))
    img.putpixel((1, 0), (1, 0))
    arr = _roundtrip(tmp_path, img, "TIFF", "pa.tiff")
    assert arr[0, 0].tolist() == [10, 200, 30]
    assert arr[0, 1].tolist() == [255, 255, 255]


@pytest.mark.parametrize(("mode", "fmt"), [("I;16", "PNG"), ("I;16", "TIFF"), ("I;16B", "TIFF")])
def test_16bit_is_scaled_not_clipped(tmp_path: Path, mode: str, fmt: str) -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    # (Pillow's convert("I;16B") clips to 8 bits, so build the big-endian image from bytes.)
    dtype = ">u2" if mode == "I;16B" else "<u2"
    img = Image.frombytes(mode, (4, 1), values.astype(dtype).tobytes())
    arr = _roundtrip(tmp_path, img, fmt, f"deep_{mode.replace(';', '')}.{fmt.lower()}")
    gray = arr[0, :, 0].astype(int)
    assert gray[0] == 0 and gray[1] == 1 and gray[3] == 255
    assert abs(gray[2] - 128) <= 1  # midtone kept, not clipped to 255
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


def test_32bit_int_mode(tmp_path: Path) -> None:
    values = np.array([[0, 32768, 65535]], dtype=np.int32)
    img = Image.fromarray(values)
    assert img.mode == "I"
    arr = _roundtrip(tmp_path, img, "TIFF", "i32.tiff")
    gray = arr[0, :, 0].astype(int)
    assert gray[0] == 0 and abs(gray[1] - 128) <= 1 and gray[2] == 255


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.0, 0.5, 1.0], [0, 128, 255]),  # 0..1 floats
        ([0.0, 100.0, 255.0], [0, 100, 255]),  # 0..255 floats
        ([-1.0, 0.0, 1.0], [0, 128, 255]),  # anything else: stretched
    ],
)
def test_float_mode(tmp_path: Path, values: list[float], expected: list[int]) -> None:
    img = Image.fromarray(np.array([values], dtype=np.float32))
    assert img.mode == "F"
    arr = _roundtrip(tmp_path, img, "TIFF", "float.tiff")
    assert np.abs(arr[0, :, 0].astype(int) - np.array(expected)).max() <= 1


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG"])
def test_cmyk(tmp_path: Path, fmt: str) -> None:
    img = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    arr = _roundtrip(tmp_path, img, fmt, f"cmyk.{fmt.lower()}")
    r, g, b = arr.reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60


def test_ycbcr(tmp_path: Path) -> None:
    img = Image.new("RGB", (8, 8), (30, 160, 220)).convert("YCbCr")
    arr = _roundtrip(tmp_path, img, "TIFF", "ycc.tiff")
    assert np.abs(arr.reshape(-1, 3).mean(0) - (30, 160, 220)).max() < 6


@pytest.mark.parametrize("ext", ["gif", "png", "webp"])
def test_animated_uses_first_frame(tmp_path: Path, ext: str) -> None:
    frames = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / f"anim.{ext}"
    extra = {"lossless": True} if ext == "webp" else {}
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0, **extra)
    with Image.open(path) as im:
        assert getattr(im, "n_frames", 1) == 3
    arr = load_rgb(path)
    assert arr.shape == (6, 6, 3)
    assert arr[..., 0].min() > 200 and arr[..., 1].max() < 50


def test_suffix_does_not_matter(tmp_path: Path) -> None:
    path = tmp_path / "really_a_jpeg.png"
    Image.fromarray(_noise()).save(path, format="JPEG")
    assert load_rgb(path).shape == (48, 64, 3)


# ---------------------------------------------------------------------------------------------
# load_rgb: refusals
# ---------------------------------------------------------------------------------------------


def _assert_names(err: pytest.ExceptionInfo[ImageError], path: Path) -> str:
    message = str(err.value)
    assert str(path) in message
    assert "\n" not in message
    assert isinstance(err.value, GuardkitError)
    return message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageError) as err:
        load_rgb(path)
    assert "not found" in _assert_names(err, path)


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    with pytest.raises(ImageError) as err:
        load_rgb(folder)
    assert "folder" in _assert_names(err, folder)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError) as err:
        load_rgb(path)
    assert "empty" in _assert_names(err, path)


def test_text_file_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a photo\n" * 20)
    with pytest.raises(ImageError) as err:
        load_rgb(path)
    assert "not a readable image" in _assert_names(err, path)


def test_disallowed_format_is_refused(tmp_path: Path) -> None:
    # A format Pillow could read but that has no business here (e.g. an ICO renamed .png).
    path = tmp_path / "icon.png"
    Image.new("RGB", (16, 16)).save(path, format="ICO")
    with pytest.raises(ImageError):
        load_rgb(path)


@pytest.mark.parametrize("strict_off", [False, True])
@pytest.mark.skipif(not OBAMA.exists(), reason="shared face photos not available")
def test_truncated_jpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strict_off: bool) -> None:
    if strict_off:  # another library switched Pillow to lenient mode: we must still refuse
        monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = OBAMA.read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as err:
        load_rgb(path)
    assert "truncated" in _assert_names(err, path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is strict_off  # restored afterwards


def test_truncated_jpeg_synthetic(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(_noise(128, 128)).save(buf, format="JPEG", quality=95)
    path = tmp_path / "cut2.jpeg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    with pytest.raises(ImageError) as err:
        load_rgb(path)
    _assert_names(err, path)


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_png(tmp_path: Path, keep: float) -> None:
    buf = io.BytesIO()
    Image.fromarray(_noise(128, 128)).save(buf, format="PNG")
    data = buf.getvalue()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ImageError) as err:
        load_rgb(path)
    _assert_names(err, path)


@pytest.mark.parametrize("missing", [6, 12, 16, 20, 40])
def test_png_cut_after_last_row_is_refused(tmp_path: Path, missing: int) -> None:
    # Pillow alone decodes these (all rows present); the chunk CRCs / IEND are checked too.
    buf = io.BytesIO()
    Image.fromarray(_noise(64, 64)).save(buf, format="PNG")
    data = buf.getvalue()
    path = tmp_path / "nearly.png"
    path.write_bytes(data[: len(data) - missing])
    with pytest.raises(ImageError) as err:
        load_rgb(path)
    assert "truncated" in _assert_names(err, path)
    assert not is_done(path)


def test_png_with_bad_crc_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(_noise(32, 32)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    idat = data.index(b"IDAT")
    length = struct.unpack(">I", data[idat - 4 : idat])[0]
    data[idat + 4 + length] ^= 0xFF  # corrupt IDAT's CRC
    path = tmp_path / "crc.png"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError):
        load_rgb(path)


def test_header_only_png(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(_noise(16, 16)).save(buf, format="PNG")
    path = tmp_path / "head.png"
    path.write_bytes(buf.getvalue()[:40])
    with pytest.raises(ImageError):
        load_rgb(path)


def test_huge_header_is_refused_without_decoding(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(_noise(4, 4)).save(buf, format="PNG")
    path = tmp_path / "bomb.png"
    path.write_bytes(_patch_ihdr(buf.getvalue(), 100_000, 100_000))  # 10^10 pixels, ~100 bytes
    with pytest.raises(ImageError) as err:
        load_rgb(path)  # would need 30 GB if it tried to decode
    message = _assert_names(err, path)
    assert "pixels" in message and ("10000000000" in message or "10,000,000,000" in message)


def test_over_default_limit_names_the_size(tmp_path: Path) -> None:
    # 8000x8000 = 64 Mpx: under Pillow's own bomb limit, over guardkit's default 50 Mpx.
    buf = io.BytesIO()
    Image.fromarray(_noise(4, 4)).save(buf, format="PNG")
    path = tmp_path / "big.png"
    path.write_bytes(_patch_ihdr(buf.getvalue(), 8000, 8000))
    with pytest.raises(ImageError) as err:
        load_rgb(path)
    message = _assert_names(err, path)
    assert "8000x8000" in message and "50,000,000" in message


def test_max_pixels_per_call(tmp_path: Path) -> None:
    path = _write_png(tmp_path / "small.png", _noise(20, 30))
    with pytest.raises(ImageError) as err:
        load_rgb(path, max_pixels=599)
    assert "30x20" in _assert_names(err, path)
    assert load_rgb(path, max_pixels=600).shape == (20, 30, 3)


def test_zero_size_header(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(_noise(4, 4)).save(buf, format="PNG")
    path = tmp_path / "zero.png"
    path.write_bytes(_patch_ihdr(buf.getvalue(), 0, 4))
    with pytest.raises(ImageError) as err:
        load_rgb(path)
    _assert_names(err, path)


# ---------------------------------------------------------------------------------------------
# collect_inputs
# ---------------------------------------------------------------------------------------------


def test_collect_inputs_folder_with_mixed_files(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in (
        "b.JPG",
        "a.png",
        "e.TIFF",
        "c.webp",
        "notes.txt",
        "README",
        ".hidden.jpg",
        "._b.JPG",
        "old.protected.png",
        "f.jpeg",
        "g.bmp",
        "h.tif",
        "archive.zip",
    ):
        (folder / name).write_bytes(b"x")
    (folder / "sub").mkdir()
    (folder / "sub" / "inner.jpg").write_bytes(b"x")
    (folder / "dir.jpg").mkdir()  # a folder that looks like an image

    failures: list = []
    found = collect_inputs([folder], failures)
    assert [p.name for p in found] == [
        "a.png",
        "b.JPG",
        "c.webp",
        "e.TIFF",
        "f.jpeg",
        "g.bmp",
        "h.tif",
    ]
    assert all(p.parent == folder for p in found)
    # issue 12 item 13: a sub-folder named like a photo is named, not skipped in silence
    assert [(p.name, "is a folder" in why) for p, why in failures] == [("dir.jpg", True)]


def test_collect_inputs_files_folders_and_duplicates(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    a = tmp_path / "x" / "a.jpg"
    b = tmp_path / "x" / "b.png"
    odd = tmp_path / "explicit.dat"  # an explicitly named file is taken whatever its suffix
    for p in (a, b, odd):
        p.write_bytes(b"x")
    found = collect_inputs([b, tmp_path / "x", odd, a, tmp_path / "x" / ".." / "x" / "b.png"])
    assert found == [b, a, odd]


def test_collect_inputs_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    with pytest.raises(ImageError) as err:
        collect_inputs([missing])
    assert str(missing) in str(err.value)


def test_collect_inputs_reports_bad_paths_and_keeps_the_others(tmp_path: Path) -> None:
    """Issue 12 item 13: a typo, a broken link or a folder named like a photo never stops a batch."""
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    for p in (a, b):
        p.write_bytes(b"x")
    folder = tmp_path / "walk"
    folder.mkdir()
    (folder / "ok.png").write_bytes(b"x")
    (folder / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (folder / "album.jpg").mkdir()
    (folder / "anim.gif").write_bytes(b"x")  # GIFs are collected (their first frame is protected)
    top_link = tmp_path / "link.jpg"
    top_link.symlink_to(tmp_path / "also-nowhere.jpg")
    failures: list = []
    found = collect_inputs([a, tmp_path / "missing.jpg", b, folder, top_link], failures)
    assert found == [a, b, folder / "anim.gif", folder / "ok.png"]
    said = {p.name: why for p, why in failures}
    assert set(said) == {"missing.jpg", "dangling.jpg", "album.jpg", "link.jpg"}
    assert all(str(p) in why and "\n" not in why for p, why in failures)
    assert "no such file" in said["missing.jpg"] and "broken link" in said["dangling.jpg"]
    assert "broken link" in said["link.jpg"] and "is a folder" in said["album.jpg"]


def test_animated_frames_counts_gif_frames(tmp_path: Path) -> None:
    frames = [Image.fromarray(_noise(seed=i)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    frames[0].save(tmp_path / "still.gif")
    assert imageio.animated_frames(tmp_path / "anim.gif") == 3
    assert imageio.animated_frames(tmp_path / "still.gif") == 1
    assert imageio.animated_frames(_write_png(tmp_path / "x.png", _noise())) == 1


def test_collect_inputs_empty_folder(tmp_path: Path) -> None:
    assert collect_inputs([tmp_path]) == []


# ---------------------------------------------------------------------------------------------
# output_path_for / plan_outputs
# ---------------------------------------------------------------------------------------------


def test_output_path_for(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert output_path_for(Path("x/a.jpg"), out) == out / "a.protected.png"
    assert output_path_for(Path("x/a.jpg"), out, fmt="png") == out / "a.protected.png"
    assert output_path_for(Path("x/a.png"), out, fmt="jpeg") == out / "a.protected.jpg"
    assert output_path_for(Path("x/a.b.png"), out, fmt="JPEG") == out / "a.b.protected.jpg"
    with pytest.raises(ConfigError):
        output_path_for(Path("a.jpg"), out, fmt="gif")


def test_plan_outputs_disambiguates(tmp_path: Path) -> None:
    out = tmp_path / "out"
    srcs = [Path("x/a.jpg"), Path("y/a.jpg"), Path("z/a.png"), Path("x/b.jpg"), Path("x/B.png")]
    plan = plan_outputs(srcs, out, "png")
    assert list(plan) == srcs
    assert plan[Path("x/a.jpg")] == out / "a.jpg.protected.png"
    assert plan[Path("y/a.jpg")] == out / "a-2.jpg.protected.png"
    assert plan[Path("z/a.png")] == out / "a.png.protected.png"
    # b / B clash on case-insensitive file systems, so they are kept apart too
    assert plan[Path("x/b.jpg")] == out / "b.jpg.protected.png"
    assert plan[Path("x/B.png")] == out / "B.png.protected.png"
    assert len({p.name.casefold() for p in plan.values()}) == len(srcs)
    assert plan_outputs(srcs, out, "png") == plan  # deterministic


def test_plan_outputs_no_clash_keeps_default_names(tmp_path: Path) -> None:
    srcs = [Path("a.jpg"), Path("b.jpg")]
    plan = plan_outputs(srcs, tmp_path, fmt="jpeg")
    assert plan == {
        Path("a.jpg"): tmp_path / "a.protected.jpg",
        Path("b.jpg"): tmp_path / "b.protected.jpg",
    }


def test_plan_outputs_disambiguated_name_never_steals_a_default(tmp_path: Path) -> None:
    # "a.jpg.png" legitimately owns "a.jpg.protected.png"; the clashing a.jpg must not take it.
    srcs = [Path("x/a.jpg"), Path("x/a.png"), Path("y/a.jpg.png")]
    plan = plan_outputs(srcs, tmp_path)
    assert plan[Path("y/a.jpg.png")] == tmp_path / "a.jpg.protected.png"
    assert len(set(plan.values())) == 3


def test_output_never_equals_input(tmp_path: Path) -> None:
    src = _write_png(tmp_path / "a.png", _noise())
    earlier = _write_png(tmp_path / "a.protected.png", _noise(seed=1))
    before = {p: p.read_bytes() for p in (src, earlier)}
    with pytest.raises(ImageError) as err:
        plan_outputs([src, earlier], tmp_path)  # a.png -> a.protected.png is an input
    assert "overwrite" in str(err.value)
    assert {p: p.read_bytes() for p in (src, earlier)} == before


def test_output_never_equals_input_via_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    src = _write_png(real / "a.protected.png", _noise())
    other = _write_png(real / "a.png", _noise(seed=2))
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    with pytest.raises(ImageError):
        plan_outputs([other, src], link)


def test_out_dir_same_as_input_folder_is_safe(tmp_path: Path) -> None:
    src = _write_png(tmp_path / "a.png", _noise())
    before = src.read_bytes()
    plan = plan_outputs(collect_inputs([tmp_path]), tmp_path)
    assert plan == {src: tmp_path / "a.protected.png"}
    save_image(load_rgb(src), plan[src], source_path=src)
    assert src.read_bytes() == before
    # a re-run does not pick up its own output as a new input
    assert collect_inputs([tmp_path]) == [src]


def test_save_refuses_to_overwrite_source(tmp_path: Path) -> None:
    src = _write_png(tmp_path / "a.png", _noise())
    before = src.read_bytes()
    with pytest.raises(ImageError):
        save_image(_noise(seed=3), src, source_path=src)
    assert src.read_bytes() == before
    assert _files(tmp_path) == ["a.png"]


# ---------------------------------------------------------------------------------------------
# save_image
# ---------------------------------------------------------------------------------------------


def test_save_png_roundtrip_exact(tmp_path: Path) -> None:
    arr = _noise()
    out = tmp_path / "new" / "deeper" / "x.protected.png"  # folders are created
    save_image(arr, out)
    assert np.array_equal(load_rgb(out), arr)
    assert _files(out.parent) == ["x.protected.png"]  # no temp file left behind


def test_save_jpeg_quality_and_444(tmp_path: Path) -> None:
    arr = _noise(64, 64)
    out = tmp_path / "x.protected.jpg"
    save_image(arr, out, fmt="jpeg", jpeg_quality=90)
    with Image.open(out) as im:
        assert im.format == "JPEG"
        from PIL import JpegImagePlugin

        assert JpegImagePlugin.get_sampling(im) == 0  # 4:4:4
    low = tmp_path / "low.jpg"
    save_image(arr, low, fmt="jpeg", jpeg_quality=20)
    assert low.stat().st_size < out.stat().st_size


def test_save_permissions_are_normal(tmp_path: Path) -> None:
    out = tmp_path / "perm.png"
    save_image(_noise(), out)
    umask = os.umask(0o022)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_save_overwrites_existing_output(tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    save_image(_noise(seed=1), out)
    save_image(_noise(seed=2), out)
    assert np.array_equal(load_rgb(out), _noise(seed=2))


def test_save_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        save_image(_noise(), tmp_path / "x.gif", fmt="gif")
    with pytest.raises(ConfigError):
        save_image(_noise(), tmp_path / "x.jpg", fmt="jpeg", jpeg_quality=0)
    assert _files(tmp_path) == []


def _gps_source(tmp_path: Path) -> Path:
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make
    exif[0x0110] = "Model GPS 9000"  # Model
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = (48.0, 51.0, 29.0)
    gps[3] = "E"
    gps[4] = (2.0, 17.0, 40.0)
    src = tmp_path / "gps.jpg"
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">secret-xmp</x:xmpmeta>'
    icc = b"\x00" * 128  # stand-in profile bytes; only presence is checked
    Image.fromarray(_noise()).save(
        src, format="JPEG", exif=exif.tobytes(), xmp=xmp, comment=b"secret comment", icc_profile=icc
    )
    raw = src.read_bytes()
    assert b"Exif" in raw and b"GPS" in raw and b"secret" in raw
    with Image.open(src) as im:
        assert im.getexif().get_ifd(0x8825)  # the source really has GPS
    return src


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
@pytest.mark.parametrize("keep", [False, True])
def test_metadata_is_stripped(tmp_path: Path, fmt: str, keep: bool) -> None:
    src = _gps_source(tmp_path)
    out = tmp_path / f"out.{fmt}"
    save_image(load_rgb(src), out, fmt=fmt, keep_metadata=keep, source_path=src)
    raw = out.read_bytes()
    for marker in (b"Exif", b"GPS", b"secret", b"SecretCam", b"xmpmeta", b"tEXt", b"iTXt", b"zTXt"):
        assert marker not in raw, marker
    with Image.open(out) as im:
        assert len(im.getexif()) == 0
        assert not im.getexif().get_ifd(0x8825)
        assert "comment" not in im.info and "xmp" not in im.info
        assert ("icc_profile" in im.info) is keep  # ICC only, and only when asked


def test_png_text_chunks_are_stripped(tmp_path: Path) -> None:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Author", "secret author")
    info.add_itxt("Location", "secret place")
    src = tmp_path / "text.png"
    Image.fromarray(_noise()).save(src, pnginfo=info)
    out = tmp_path / "text.protected.png"
    save_image(load_rgb(src), out, keep_metadata=True, source_path=src)
    assert b"secret" not in out.read_bytes()


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((8, 8, 3), np.float32),
        np.zeros((8, 8), np.uint8),
        np.zeros((8, 8, 4), np.uint8),
        np.zeros((3, 8, 8), np.int64),
        np.zeros((0, 8, 3), np.uint8),
        [[0, 0, 0]],
    ],
)
def test_save_bad_array_leaves_nothing(tmp_path: Path, bad: object) -> None:
    out = tmp_path / "x.protected.png"
    with pytest.raises(ImageError) as err:
        save_image(bad, out)  # type: ignore[arg-type]
    assert str(out) in str(err.value)
    assert _files(tmp_path) == []


def test_failure_mid_write_leaves_no_partial_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "x.protected.png"
    save_image(_noise(seed=1), out)
    before = out.read_bytes()

    def broken_save(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        fp.write(b"\x89PNG partial garbage")  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(ImageError) as err:
        save_image(_noise(seed=2), out)
    assert "No space left" in str(err.value) and str(out) in str(err.value)
    monkeypatch.undo()
    assert _files(tmp_path) == ["x.protected.png"]  # no temp file left
    assert out.read_bytes() == before  # old output untouched


def test_failure_at_rename_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_replace(a: object, b: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(imageio.os, "replace", broken_replace)
    with pytest.raises(ImageError):
        save_image(_noise(), tmp_path / "x.png")
    monkeypatch.undo()
    assert _files(tmp_path) == []


def test_non_oserror_failure_also_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_save(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        fp.write(b"partial")  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_image(_noise(), tmp_path / "x.png")
    monkeypatch.undo()
    assert _files(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# is_done
# ---------------------------------------------------------------------------------------------


def test_is_done(tmp_path: Path) -> None:
    good = tmp_path / "good.protected.png"
    save_image(_noise(), good)
    assert is_done(good)

    assert not is_done(tmp_path / "missing.protected.png")

    empty = tmp_path / "empty.protected.png"
    empty.write_bytes(b"")
    assert not is_done(empty)

    corrupt = tmp_path / "corrupt.protected.png"
    corrupt.write_bytes(b"not an image at all")
    assert not is_done(corrupt)

    half = tmp_path / "half.protected.png"
    half.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert not is_done(half)

    folder = tmp_path / "folder.protected.png"
    folder.mkdir()
    assert not is_done(folder)

    jpg = tmp_path / "good.protected.jpg"
    save_image(_noise(), jpg, fmt="jpeg")
    assert is_done(jpg)
    half_jpg = tmp_path / "half.protected.jpg"
    half_jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])
    assert not is_done(half_jpg)
