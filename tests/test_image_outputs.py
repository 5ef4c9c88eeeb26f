"""Tests for guardkit.image_paths and guardkit.image_save (through guardkit.imageio): inputs collected,
safe output plans, atomic metadata-free writes and the resume check."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from guardkit import imageio
from guardkit.errors import ConfigError, ImageError
from guardkit.imageio import collect_inputs, is_done, load_rgb, output_path_for, plan_outputs, save_image


def _noise(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _write_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path, format="PNG")
    return path


def _files(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))



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


def test_save_never_changes_the_process_umask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Setting the umask to read it would race with other threads creating files: it is read once, at import."""
    set_to: list[int] = []
    real = os.umask
    monkeypatch.setattr(os, "umask", lambda mask: set_to.append(mask) or real(mask))
    save_image(_noise(), tmp_path / "a.png")
    assert set_to == []


@pytest.mark.parametrize("length", [200, 242, 255])
def test_save_writes_any_valid_file_name(tmp_path: Path, length: int) -> None:
    out = tmp_path / ("n" * (length - len(".protected.png")) + ".protected.png")
    save_image(_noise(), out)
    assert load_rgb(out).shape == (48, 64, 3) and _files(tmp_path) == [out.name]


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

    monkeypatch.setattr(os, "replace", broken_replace)
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


def test_is_done_with_a_size_wants_that_size(tmp_path: Path) -> None:
    out = tmp_path / "a.protected.png"
    save_image(_noise(48, 64), out)
    assert is_done(out, size=(64, 48))
    assert not is_done(out, size=(48, 64))  # another resolution, or another photo under this name: redo

