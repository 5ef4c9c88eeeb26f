"""Tests for guardkit.image_read (through guardkit.imageio): odd photos, refusals, the upright size.
Output plans, atomic writes and the resume check: test_image_outputs.py."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from guardkit.errors import GuardkitError, ImageError
from guardkit.imageio import IMAGE_SUFFIXES, MAX_PIXELS, is_done, load_rgb, upright_size

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
    assert upright_size(path) == (20, 40)  # (width, height) as loaded, from the header alone


def test_upright_size_refuses_a_non_image_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("not a photo")
    with pytest.raises(ImageError, match="notes.jpg"):
        upright_size(path)
    plain = tmp_path / "plain.png"
    Image.new("RGB", (30, 10)).save(plain)
    assert upright_size(plain) == (30, 10)


def test_upright_size_refuses_an_oversized_image_from_its_header(tmp_path: Path) -> None:
    """The pixel count is checked before anything is decoded (a PNG's EXIF can sit after its pixels)."""
    small = io.BytesIO()
    Image.new("L", (8, 8)).save(small, format="PNG")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_patch_ihdr(small.getvalue(), 10_000, 10_000))
    with pytest.raises(ImageError, match=r"bomb.png: .*more than the limit of 50,000,000"):
        upright_size(bomb)
    path = _write_png(tmp_path / "fine.png", _noise(30, 20))
    assert upright_size(path) == (20, 30)
    with pytest.raises(ImageError, match="fine.png: .*more than the limit of 500"):
        upright_size(path, max_pixels=500)


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
