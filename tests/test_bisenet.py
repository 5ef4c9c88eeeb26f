"""Face parser ``bisenet``: the released layout's key names, safe strict loading, and the region contract,
on a seeded random-weight network saved to a temporary file (no real weights, no network)."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch
from guardkit.config import RunConfig
from guardkit.errors import ConfigError, WeightsError
from guardkit.plugins.face_parsers import bisenet
from guardkit.plugins.face_parsers.bisenet import (
    DISJOINT_REGIONS,
    BiSeNet,
    BiSeNetParser,
    load_bisenet,
)
from guardkit.plugins.face_parsers.landmarks import REGIONS
from guardkit.registry import Registry, make_plugin_manager
from guardkit.types import Face

SIZE = 128  # network input for tests (512 as trained)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    part = BiSeNetParser.random(seed=3)
    net = part.net
    assert net is not None
    # non-trivial BN statistics, so that loading them is visible in the output
    gen = torch.Generator().manual_seed(4)
    for name, buf in net.named_buffers():
        if name.endswith("running_mean"):
            buf.copy_(torch.randn(buf.shape, generator=gen) * 0.1)
        elif name.endswith("running_var"):
            buf.copy_(torch.rand(buf.shape, generator=gen) + 0.5)
    return {k: v.clone() for k, v in net.state_dict().items()}


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory, state) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    torch.save(state, folder / "79999_iter.pth")
    return folder


def _face() -> Face:
    # arcface5 points (left eye, right eye, nose, mouth corners) of a face in a 96x96 photo
    return Face(0, (28.0, 24.0, 68.0, 76.0), ((38.0, 42.0), (58.0, 42.0), (48.0, 52.0), (40.0, 62.0), (56.0, 62.0)),
                "arcface5")


def _photo(h: int = 96, w: int = 96) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))


def test_key_names_follow_the_released_layout():
    keys = set(BiSeNet().state_dict())
    for key in ("cp.resnet.conv1.weight", "cp.resnet.bn1.running_var", "cp.resnet.layer1.0.conv1.weight",
                "cp.resnet.layer2.0.downsample.0.weight", "cp.resnet.layer4.1.bn2.bias",
                "cp.arm16.conv.conv.weight", "cp.arm16.conv_atten.weight", "cp.arm32.bn_atten.running_mean",
                "cp.conv_head32.conv.weight", "cp.conv_head16.bn.weight", "cp.conv_avg.conv.weight",
                "ffm.convblk.conv.weight", "ffm.conv1.weight", "ffm.conv2.weight",
                "conv_out.conv.conv.weight", "conv_out.conv_out.weight", "conv_out16.conv_out.weight",
                "conv_out32.conv.bn.weight"):
        assert key in keys, key
    assert not any(k.startswith(("cp.resnet.fc", "sp.")) for k in keys)  # no classifier, no spatial path
    assert not any("layer1.0.downsample" in k for k in keys)  # 64 -> 64, stride 1: identity shortcut
    # cp: resnet 6 + 8 blocks x 12 + 3 downsamples x 6 = 120, 2 ARMs x 12, 3 ConvBNReLU x 6 (BN: 5 entries)
    assert collections.Counter(k.split(".")[0] for k in keys) == {"cp": 162, "ffm": 8, "conv_out": 7,
                                                                  "conv_out16": 7, "conv_out32": 7}
    # ResNet-18 without fc is 11,176,512 parameters; the whole released BiSeNet, by its architecture:
    resnet = sum(p.numel() for p in BiSeNet().cp.resnet.parameters())
    assert resnet == 11_176_512
    assert bisenet.parameter_count() == 13_300_416
    shapes = {k: tuple(v.shape) for k, v in BiSeNet().state_dict().items()}
    assert shapes["conv_out.conv_out.weight"] == (19, 256, 1, 1)
    assert shapes["conv_out16.conv_out.weight"] == (19, 64, 1, 1)
    assert shapes["ffm.convblk.conv.weight"] == (256, 256, 1, 1)
    assert shapes["ffm.conv1.weight"] == (64, 256, 1, 1)
    assert shapes["cp.arm32.conv.conv.weight"] == (128, 512, 3, 3)
    assert shapes["cp.conv_avg.conv.weight"] == (128, 512, 1, 1)


def test_loads_through_the_real_code_and_matches(weights_dir, state):
    part = BiSeNetParser(RunConfig(weights_dir=weights_dir), size=SIZE)
    part.load()
    assert part.net is not None
    loaded = part.net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert not any(p.requires_grad for p in part.net.parameters()) and not part.net.training
    # same file without BN counters (as saved by old PyTorch) still loads
    stripped = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": {"module." + k: v for k, v in stripped.items()}}, weights_dir / "wrapped.pth")
    net = load_bisenet(weights_dir / "wrapped.pth")
    assert torch.equal(net.state_dict()["conv_out.conv_out.weight"], state["conv_out.conv_out.weight"])


def test_parse_regions_contract(weights_dir):
    part = BiSeNetParser(RunConfig(weights_dir=weights_dir), size=SIZE)
    photo = _photo(96, 80)
    before = photo.clone()
    for faces in ([_face()], []):  # face crops, and the whole photo
        regions = part.parse(photo, faces)
        assert set(regions) == set(REGIONS)
        for name, mask in regions.items():
            assert mask.shape == (1, 1, 96, 80), name
            assert mask.dtype == photo.dtype and torch.isfinite(mask).all()
            assert mask.min() >= 0 and mask.max() <= 1, name
        disjoint = sum(regions[n] for n in DISJOINT_REGIONS)
        assert disjoint.max() <= 1 + 1e-4
        torch.testing.assert_close(regions["head"] + regions["background"], torch.ones_like(disjoint),
                                   atol=1e-4, rtol=0)
        assert (regions["face"] <= regions["head"] + 1e-5).all()
        assert (regions["skin"] <= regions["face"] + 1e-5).all()
        assert (regions["beard"] <= regions["skin"] + 1e-6).all()
        if not faces:
            assert regions["beard"].max() == 0
    assert torch.equal(photo, before)
    # far from the face (outside its crop) is background
    regions = part.parse(_photo(200, 200), [_face()])
    assert regions["background"][0, 0, 190, 190] == pytest.approx(1.0, abs=1e-4)
    # deterministic; hard masks are 0/1
    again = part.parse(photo, [_face()])
    torch.testing.assert_close(again["hair"], part.parse(photo, [_face()])["hair"])
    hard = BiSeNetParser(RunConfig(weights_dir=weights_dir), size=SIZE, hard=True, crop=False).parse(photo, [])
    assert all(set(torch.unique(m).tolist()) <= {0.0, 1.0} for m in hard.values())
    assert torch.equal(hard["background"] + hard["head"], torch.ones_like(hard["head"]))


def _two_class(mask: torch.Tensor) -> torch.Tensor:
    """Class probabilities where hair (17) is ``mask`` [N,1,S,S] and background the rest."""
    probs = torch.zeros(mask.shape[0], 19, *mask.shape[2:])
    probs[:, 17:18], probs[:, 0:1] = mask, 1 - mask
    return probs


@pytest.mark.parametrize("flip", [False, True])
def test_face_crop_round_trips_upright_and_unmirrored(flip):
    """The crop is warped back exactly where it came from, upright (forehead up) and not mirrored,
    whichever order the two eyes are given in."""
    part = BiSeNetParser.random(size=64)
    face = _face()
    if flip:  # eyes swapped: the crop must still be upright and unmirrored
        lm = face.landmarks
        face = Face(0, face.box, (lm[1], lm[0], lm[2], lm[4], lm[3]), "arcface5")
    h = w = 96
    ys, xs = torch.meshgrid(torch.arange(h) / h, torch.arange(w) / w, indexing="ij")
    photo = torch.stack([0.2 + 0.6 * xs, 0.2 + 0.6 * ys, 0.5 * torch.ones_like(xs)])[None]
    part.class_probabilities = lambda square: _two_class(square[:, :1])  # hair = the crop's red channel
    hair = part.parse(photo, [face])["hair"][0, 0]
    (cx, cy), _, _, half = part._crop_frame(face)
    inner = ((xs * w + 0.5 - cx).abs() < 0.8 * half) & ((ys * h + 0.5 - cy).abs() < 0.8 * half)
    assert inner.sum() > 1000
    torch.testing.assert_close(hair[inner], photo[0, 0][inner], atol=0.02, rtol=0)

    def top_left(square):
        s = square.shape[-1]
        mask = torch.zeros(square.shape[0], 1, s, s)
        mask[..., : s // 2, : s // 2] = 1
        return _two_class(mask)

    part.class_probabilities = top_left
    hair = part.parse(photo, [face])["hair"][0, 0]
    assert hair[int(cy) - 10, int(cx) - 10] == pytest.approx(1, abs=1e-3)
    assert hair[int(cy) - 10, int(cx) + 10] == pytest.approx(0, abs=1e-3)
    assert hair[int(cy) + 10, int(cx) - 10] == pytest.approx(0, abs=1e-3)


def test_class_probabilities_sum_to_one():
    part = BiSeNetParser.random(seed=2, size=64)
    probs = part.class_probabilities(_photo(64, 64))
    assert probs.shape == (1, 19, 64, 64)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 64, 64), atol=1e-5, rtol=0)
    # the region table covers every class exactly once between head and background
    covered = sorted(bisenet.REGION_CLASSES["head"] + bisenet.REGION_CLASSES["background"])
    assert covered == list(range(19))


def test_random_is_seeded():
    a = BiSeNetParser.random(seed=1, size=64).parse(_photo(64, 64), [])
    b = BiSeNetParser.random(seed=1, size=64).parse(_photo(64, 64), [])
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_renamed_key_is_named(weights_dir, state, tmp_path):
    bad = dict(state)
    bad["ffm.convblk.conv.weights"] = bad.pop("ffm.convblk.conv.weight")
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightsError) as info:
        BiSeNetParser(path=tmp_path / "bad.pth").load()
    message = str(info.value)
    assert "\n" not in message and "bad.pth" in message
    assert "missing keys ffm.convblk.conv.weight" in message and "unexpected keys ffm.convblk.conv.weights" in message
    bad = dict(state)
    bad["conv_out.conv_out.weight"] = torch.zeros(18, 256, 1, 1)
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(WeightsError, match=r"wrong shapes conv_out\.conv_out\.weight"):
        load_bisenet(tmp_path / "shape.pth")


def test_missing_file_says_what_to_fetch(tmp_path):
    for part in (BiSeNetParser(RunConfig(weights_dir=tmp_path)), BiSeNetParser(RunConfig()),
                 BiSeNetParser(path=tmp_path / "nope.pth")):
        with pytest.raises(WeightsError) as info:
            part.load()
        message = str(info.value)
        assert "\n" not in message
        assert "79999_iter.pth" in message and "face-parsing.PyTorch" in message and "--weights-dir" in message


class Smuggled:
    def __init__(self) -> None:
        self.payload = "not a tensor"


def test_pickled_object_is_refused(tmp_path):
    torch.save({"state_dict": Smuggled()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError) as info:
        BiSeNetParser(path=tmp_path / "evil.pth").load()
    message = str(info.value)
    assert "\n" not in message and "evil.pth" in message and "Smuggled" in message
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="junk.pth"):
        BiSeNetParser(path=tmp_path / "junk.pth").load()


def test_options_are_checked():
    with pytest.raises(ConfigError, match="unknown option"):
        BiSeNetParser(RunConfig(), sise=256)
    with pytest.raises(ConfigError, match="size"):
        BiSeNetParser(RunConfig(), size=8)
    with pytest.raises(ConfigError, match=r"\[1,3,H,W\]"):
        BiSeNetParser.random(size=64).parse(torch.rand(2, 3, 32, 32), [])


def test_registered_through_a_fresh_plugin_manager():
    pm, errors = make_plugin_manager(entry_points=False, plugins=[bisenet])
    assert errors == []
    spec = Registry.from_plugin_manager(pm).get("face_parser", "bisenet")
    assert spec.factory is BiSeNetParser and "BiSeNet" in spec.summary
    part = spec.factory(RunConfig(), size=64)
    assert part.config.size == 64 and part.net is None  # building is cheap: no weights read
