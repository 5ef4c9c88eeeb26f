"""Every encoder method (FaceLock and its baselines) on tiny real SD-VAE / Flux VAE architectures:
attack invariants, the objective beats a random perturbation, regions, masks, EOT, and the CLI."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from guardkit.attack import project
from guardkit.config import Budget, RunConfig
from guardkit.eot import jpeg_bpda, parse_eot, random_purification
from guardkit.errors import ConfigError
from guardkit.plugins.encoders.flux_vae import FluxVAE
from guardkit.plugins.encoders.sd_vae import SDVAE
from guardkit.plugins.losses.face import FaceCosine
from guardkit.plugins.losses.latent import DecoderTarget, LatentL2, LatentNorm, TargetLatent
from guardkit.plugins.losses.lpips import LpipsLoss
from guardkit.plugins.methods.encoder_attacks import CW, EditShield, PhotoGuard, UntargetedEncoder, VAEAttack
from guardkit.plugins.methods.facelock import FaceLock
from guardkit.region import ModelSpace
from guardkit.testing import TinyFaceModel, save_tiny_vae
from guardkit.types import Face, WeightedLoss

EPS = 8 / 255
RES = 32


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vae_folders(tmp_path_factory):
    return {kind: save_tiny_vae(tmp_path_factory.mktemp(kind.replace("-", "_")) / "vae", kind)
            for kind in ("sd-vae", "flux")}


@pytest.fixture(scope="module")
def encoders(vae_folders):
    out = {"sd-vae": SDVAE(RunConfig(), path=str(vae_folders["sd-vae"])),
           "flux": FluxVAE(RunConfig(), path=str(vae_folders["flux"]))}
    for enc in out.values():
        enc.load()
    return out


@pytest.fixture(scope="module")
def face_model():
    model = TinyFaceModel()
    model.load()
    return model


def face(index: int, cx: float, cy: float, s: float) -> Face:
    pts = ((cx - 0.35 * s, cy - 0.2 * s), (cx + 0.35 * s, cy - 0.2 * s), (cx, cy + 0.1 * s),
           (cx - 0.25 * s, cy + 0.35 * s), (cx + 0.25 * s, cy + 0.35 * s))
    return Face(index, (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2), pts, "arcface5")


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(5)
    coarse = torch.rand(2, 3, 6, 8, generator=gen)
    images = torch.nn.functional.interpolate(coarse, size=(48, 64), mode="bilinear", align_corners=False)
    return torch.round(images * 255) / 255, [face(0, 30, 24, 14), face(1, 36, 22, 12)]


def lpips():
    return LpipsLoss(random_backbone=True, random_heads=True)


def build(name: str, encoder, face_model, seed: int = 0, **options):
    run = RunConfig(seed=seed)
    opts = {"resolution": RES, **options}
    if name == "facelock":
        losses = [WeightedLoss(1.0, FaceCosine(), "face-cosine"), WeightedLoss(1.0, lpips(), "lpips"),
                  WeightedLoss(0.2, LatentL2(), "latent-l2")]
        return FaceLock(run, encoder=encoder, face_model=face_model, losses=losses, **opts)
    cls, loss, loss_name = {
        "photoguard": (PhotoGuard, TargetLatent(), "target-latent"),
        "editshield": (EditShield, LatentL2(), "latent-l2"),
        "encoder": (UntargetedEncoder, LatentL2(), "latent-l2"),
        "vae": (VAEAttack, DecoderTarget(), "decoder-target"),
        "cw": (CW, LatentNorm(), "latent-norm"),
    }[name]
    return cls(run, encoder=encoder, losses=[WeightedLoss(1.0, loss, loss_name)], **opts)


def measure(name, encoder, face_model, clean, adv, faces) -> torch.Tensor:
    """The method's own aim, per photo, higher = better protection; each photo in its own square (around its
    own faces), as the methods protect it."""
    if clean.shape[0] > 1:
        return torch.cat([measure(name, encoder, face_model, clean[i:i + 1], adv[i:i + 1],
                                  [f.with_index(0) for f in faces if f.image_index == i])
                          for i in range(clean.shape[0])])
    space = ModelSpace.around(clean.shape[2], clean.shape[3], faces, RES)
    c, a = space.to_model(space.crop(clean)), space.to_model(space.crop(adv))
    with torch.no_grad():
        zc, za = encoder.encode(c * 2 - 1), encoder.encode(a * 2 - 1)
        if name == "photoguard":  # towards the VAE's zero latent (released code)
            return -(za / encoder.scaling_factor + encoder.shift_factor).pow(2).flatten(1).mean(1)
        if name == "vae":
            return -(((encoder.decode(za) + 1) / 2).clamp(0, 1) - 0.5).pow(2).flatten(1).mean(1)
        if name == "facelock":
            decoded = ((encoder.decode(za) + 1) / 2).clamp(0, 1)
            mf = space.faces(faces)
            e1 = face_model.embed(face_model.align(decoded, mf))
            e0 = face_model.embed(face_model.align(c, mf))
            return 1 - torch.nn.functional.cosine_similarity(e1, e0, dim=1)
        return (za - zc).pow(2).flatten(1).mean(1)


METHODS = ["facelock", "photoguard", "editshield", "encoder", "vae", "cw"]


@pytest.mark.parametrize("kind", ["sd-vae", "flux"])
@pytest.mark.parametrize("name", METHODS)
def test_invariants_and_objective(name, kind, encoders, face_model, batch):
    images, faces = batch
    before = images.clone()
    budget = Budget(eps=EPS, steps=6)
    method = build(name, encoders[kind], face_model)
    out = project(method.protect(images, faces, budget), images, budget)  # what the engine does
    assert torch.equal(images, before)
    raw = method.protect(images, faces, budget)
    assert (raw - images).abs().max() <= EPS + 1e-6 and raw.min() >= 0 and raw.max() <= 1
    assert torch.equal(raw, out) or name == "cw"
    gen = torch.Generator().manual_seed(9)
    noise = project(images + (torch.rand(images.shape, generator=gen) * 2 - 1) * EPS, images, budget)
    achieved = measure(name, encoders[kind], face_model, images, out, faces)
    baseline = measure(name, encoders[kind], face_model, images, noise, faces)
    assert (achieved > baseline).all(), (achieved, baseline)


@pytest.mark.parametrize("name", ["facelock", "photoguard"])
def test_seed_deterministic(name, encoders, face_model, batch):
    images, faces = batch
    budget = Budget(eps=EPS, steps=3)
    a = build(name, encoders["sd-vae"], face_model, seed=1).protect(images, faces, budget)
    b = build(name, encoders["sd-vae"], face_model, seed=1).protect(images, faces, budget)
    c = build(name, encoders["sd-vae"], face_model, seed=2).protect(images, faces, budget)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_face_mask_limits_the_change_to_the_faces(encoders, face_model, batch):
    images, faces = batch
    out = build("editshield", encoders["sd-vae"], face_model, mask="face").protect(images, faces, Budget(eps=EPS, steps=3))
    space = ModelSpace.around(images.shape[2], images.shape[3], faces, RES)
    mask = torch.zeros_like(images[:, :1])
    mask[:, :, space.y0:space.y0 + space.side, space.x0:space.x0 + space.side] = space.face_mask(faces, 2)
    changed = (out - images).abs().sum(1, keepdim=True) > 0
    assert changed.any() and not (changed & (mask == 0)).any()


def test_eot_runs_inside_the_loop_and_is_seeded(encoders, face_model, batch):
    images, faces = batch
    budget = Budget(eps=EPS, steps=3)
    a = build("encoder", encoders["sd-vae"], face_model, eot="jpeg,resize,blur", eot_draws=2).protect(images, faces, budget)
    b = build("encoder", encoders["sd-vae"], face_model, eot="jpeg,resize,blur", eot_draws=2).protect(images, faces, budget)
    plain = build("encoder", encoders["sd-vae"], face_model).protect(images, faces, budget)
    assert torch.equal(a, b) and not torch.equal(a, plain)
    assert (a - images).abs().max() <= EPS + 1e-6


def test_bad_options_are_config_errors(encoders, face_model):
    with pytest.raises(ConfigError, match="resolution"):
        build("photoguard", encoders["sd-vae"], face_model, resolution=30)
    with pytest.raises(ConfigError, match="unknown option.*colour"):
        build("photoguard", encoders["sd-vae"], face_model, colour=1)
    with pytest.raises(ConfigError, match="unknown EOT"):
        build("photoguard", encoders["sd-vae"], face_model, eot="jpeg,fog")


@pytest.mark.parametrize("shape", [(480, 640), (1200, 500), (64, 64)])
def test_model_space_square_fits_any_photo(shape):
    h, w = shape
    faces = [face(0, w * 0.8, h * 0.2, min(h, w) * 0.2)]
    space = ModelSpace.around(h, w, faces, 512)
    assert 0 <= space.x0 <= w - space.side and 0 <= space.y0 <= h - space.side and space.side <= min(h, w)
    box = faces[0].box
    assert space.x0 <= box[0] and box[2] <= space.x0 + space.side + 1
    moved = space.faces(faces)[0]
    assert moved.box[0] == pytest.approx((box[0] - space.x0 + 0.5) * 512 / space.side - 0.5)
    images = torch.zeros(1, 3, h, w)
    pasted = space.paste(images, torch.ones(1, 3, space.side, space.side))
    assert pasted.sum() == 3 * space.side**2


def test_eot_purifications():
    assert parse_eot("jpeg, blur") == ("jpeg", "blur") and parse_eot("none") == () and parse_eot(None) == ()
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    y = jpeg_bpda(x, 50)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(grad, torch.ones_like(x)) and not torch.allclose(y, x)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    kinds = ("jpeg", "resize", "blur")
    assert torch.equal(random_purification(x, kinds, g1), random_purification(x, kinds, g2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a CUDA generator needs a CUDA device")
def test_eot_draws_follow_the_generators_device():
    """fr-cloak and the latent methods draw with a generator on the photo's device: on a GPU run the EOT's own
    draws (which purification, the JPEG quality) must come from it too (they were made on the CPU and failed)."""
    x = torch.rand(1, 3, 16, 16, device="cuda", requires_grad=True)
    generator = torch.Generator(device="cuda").manual_seed(0)
    for kinds in (("jpeg",), ("resize",), ("blur",)):
        out = random_purification(x, kinds, generator)
        assert out.device == x.device and out.shape == x.shape


def test_cli_runs_encoder_methods_on_sd_vae_and_flux(vae_folders, tmp_path, faces_dir):
    from typer.testing import CliRunner

    from guardkit.cli import app

    shutil.copy(faces_dir / "obama_small.jpg", tmp_path / "me.jpg")
    for kind in ("sd-vae", "flux"):
        result = CliRunner().invoke(app, [
            "run", str(tmp_path / "me.jpg"), "-o", str(tmp_path / kind), "--method", "photoguard",
            "--encoder", kind, "--encoder-path", str(vae_folders[kind]), "--steps", "2", "-O", "resolution=64",
            "--json"])
        assert result.exit_code == 0, result.output
        photo = json.loads(result.stdout)["photos"][0]
        assert photo["status"] == "protected" and 0 < photo["linf"] <= 4 / 255 + 1e-9


def test_cli_missing_encoder_weights_is_one_line(tmp_path, faces_dir):
    from typer.testing import CliRunner

    from guardkit.cli import app

    result = CliRunner().invoke(app, ["run", str(faces_dir / "obama_small.jpg"), "-o", str(tmp_path / "o"),
                                      "--method", "facelock", "--encoder-path", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "sd-vae" in lines[0], result.stderr


def test_distant_faces_each_get_their_own_square(encoders, face_model):
    """A wide group photo: one shared square could not hold both faces; each is protected in its own."""
    from guardkit.region import group_faces

    left, right, near = face(0, 20, 24, 14), face(0, 150, 24, 14), face(0, 28, 26, 14)
    assert [len(g) for g in group_faces([left, right])] == [1, 1]
    assert [len(g) for g in group_faces([left, near])] == [2]
    gen = torch.Generator().manual_seed(2)
    images = torch.round(torch.nn.functional.interpolate(torch.rand(1, 3, 6, 20, generator=gen), size=(48, 170),
                                                         mode="bilinear", align_corners=False) * 255) / 255
    out = build("editshield", encoders["sd-vae"], face_model, mask="face").protect(images, [left, right],
                                                                                   Budget(eps=EPS, steps=2))
    changed = (out - images).abs().sum(1)[0] > 0
    for f in (left, right):
        x0, y0, x1, y1 = (int(v) for v in f.box)
        assert changed[y0:y1, x0:x1].any(), f.box
    assert (out - images).abs().max() <= EPS + 1e-6


# ----------------------------------------------------------------------------- issue 12: parity with the papers
def raw_mean(encoder, x):
    """The VAE's own ``latent_dist.mean`` of ``x`` in [0, 1]: the units of the released FaceLock code."""
    return encoder.vae.encode(x * 2 - 1).latent_dist.mean


@pytest.mark.parametrize("kind", ["sd-vae", "flux"])
def test_latent_terms_are_measured_in_the_vaes_own_units(kind, encoders):
    """lambda = 0.2 means what the released code means: F.mse_loss on the unscaled ``latent_dist.mean``."""
    from guardkit.view import View

    encoder = encoders[kind]
    gen = torch.Generator().manual_seed(4)
    clean = torch.rand(2, 3, RES, RES, generator=gen)
    adv = (clean + 0.05 * torch.randn(clean.shape, generator=gen)).clamp(0, 1)
    with torch.no_grad():
        view = View(clean, adv, encoder=encoder)
        ours = LatentL2()(view)
        released = torch.stack([torch.nn.functional.mse_loss(raw_mean(encoder, adv[i:i + 1]),
                                                             raw_mean(encoder, clean[i:i + 1])) for i in range(2)])
    assert torch.allclose(ours, released, rtol=1e-4, atol=1e-9), (ours, released)


def test_cw_at_its_defaults_moves_the_latent_more_than_noise(encoders, face_model, batch):
    """Alg. 4 / released code: w starts at 0, the latent norm, c and lr as released. Starting at the photo
    with a squared latent term (zero gradient there) left the photo where it was."""
    images, faces = batch
    budget = Budget(eps=4 / 255, steps=CW.default_steps)
    encoder = encoders["sd-vae"]
    method = CW(RunConfig(), encoder=encoder, resolution=RES,
                losses=[WeightedLoss(w, cls(), n) for n, w in CW.default_losses.items()
                        for cls in [{"latent-norm": LatentNorm, "latent-l2": LatentL2}[n]]])
    out = project(method.protect(images, faces, budget), images, budget)
    gen = torch.Generator().manual_seed(9)
    noise = project(images + (torch.rand(images.shape, generator=gen) * 2 - 1) * budget.eps, images, budget)
    assert (out - images).abs().max() > budget.eps / 2
    achieved = measure("cw", encoder, face_model, images, out, faces)
    baseline = measure("cw", encoder, face_model, images, noise, faces)
    assert (achieved >= baseline).all(), (achieved, baseline)


def test_photoguard_targets_the_zero_latent_as_released(encoders):
    """The released encoder attack minimises ``latent_dist.mean.norm()``: its target is the zero latent."""
    from guardkit.latent_attack import attack_targets

    for kind, encoder in encoders.items():
        clean = torch.rand(1, 3, RES, RES)
        config = PhotoGuard(RunConfig(), encoder=encoder, losses=[]).config
        _, target_latent = attack_targets(encoder, clean, config, [WeightedLoss(1.0, TargetLatent(), "target-latent")])
        raw = target_latent / encoder.scaling_factor + encoder.shift_factor
        assert torch.allclose(raw, torch.zeros_like(raw), atol=1e-6), kind
        grey = build("photoguard", encoder, None, target_latent="image").config
        _, grey_latent = attack_targets(encoder, clean, grey, [WeightedLoss(1.0, TargetLatent(), "target-latent")])
        assert torch.allclose(grey_latent, encoder.encode(torch.zeros_like(clean)), atol=1e-6)


def test_vae_attack_loss_sees_the_unclamped_decode(encoders):
    """The released VAE attack takes ``vae(x).sample`` as it is: no clamp before the loss."""
    from guardkit.view import View

    encoder = encoders["sd-vae"]
    gen = torch.Generator().manual_seed(1)
    clean = torch.rand(1, 3, RES, RES, generator=gen)
    with torch.no_grad():
        raw = (encoder.decode(encoder.encode(clean * 2 - 1)) + 1) / 2
        assert raw.min() < 0 or raw.max() > 1  # the tiny random VAE overshoots: the clamp matters here
        view = View(clean, clean, encoder=encoder, target_image=torch.full_like(clean, 0.5))
        ours = DecoderTarget()(view)
    assert torch.allclose(ours, (raw - 0.5).pow(2).flatten(1).mean(1), rtol=1e-5)


def test_facelock_schedule_is_the_released_one():
    """Released: FR on when i >= 0.35 * iters, LPIPS when i > 0.25 * iters (strictly)."""
    from guardkit.latent_attack import active_terms

    names = ["face-cosine", "lpips", "latent-l2"]
    for steps in (100, 8, 50, 200):
        for i in range(steps):
            on = active_terms(names, i, steps, FaceLock.starts, FaceLock.starts_after)
            released = {"latent-l2"} | ({"face-cosine"} if i >= steps * 0.35 else set()) \
                | ({"lpips"} if i > steps * 0.25 else set())
            assert on == released, (steps, i, on)


class _Recorder:
    """A real loss that records which images it saw (to check what EOT hands each term)."""

    maximize = False
    needs: frozenset = frozenset()
    eot = False

    def __init__(self) -> None:
        self.seen = []

    def __call__(self, view):
        self.seen.append((view.adv.detach().clone(), view.clean))
        return (view.adv - view.clean).pow(2).flatten(1).mean(1)


def test_editshield_adds_perceptual_consistency_and_eot(encoders, face_model, batch):
    """EditShield = latent shift - beta * ||x' - x||^2 with EOT, not the plain encoder attack."""
    from guardkit.plugins.losses.face import PixelL2

    assert EditShield.default_losses == {"latent-l2": 1.0, "pixel-l2": 0.1}
    assert EditShield.config_class().eot != "" and PixelL2.eot is False
    images, faces = batch
    budget = Budget(eps=EPS, steps=3)
    enc = encoders["sd-vae"]
    shield = EditShield(RunConfig(), encoder=enc, resolution=RES,
                        losses=[WeightedLoss(1.0, LatentL2(), "latent-l2"), WeightedLoss(0.1, PixelL2(), "pixel-l2")])
    plain = build("encoder", enc, face_model)
    a, b = shield.protect(images, faces, budget), plain.protect(images, faces, budget)
    assert not torch.equal(a, b) and (a - images).abs().max() <= EPS + 1e-6
    recorder = _Recorder()  # a term that opts out of EOT sees the protected photo itself, once per step
    method = EditShield(RunConfig(), encoder=enc, resolution=RES, eot="blur", eot_draws=2,
                        losses=[WeightedLoss(1.0, LatentL2(), "latent-l2"), WeightedLoss(0.1, recorder, "pixel")])
    method.protect(images[:1], faces[:1], Budget(eps=EPS, steps=2, random_start=False))
    assert len(recorder.seen) == 2
    adv, clean = recorder.seen[0]
    assert torch.equal(adv, clean)  # the first step's photo itself (no random start), not a blurred copy
