"""Differentiable face alignment: a similarity warp from 5 landmarks to a model's chip template.

Face models that align by a plain 5-point similarity (ArcFace's 112x112 template, test models) call
``similarity_align``; gradients flow from the chip back to every photo pixel it samples.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from guardkit.types import Face


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; Umeyama 1991) mapping
    ``src`` [K,2] onto ``dst`` [K,2]. Returns the 2x3 matrix ``M`` with ``dst ~ M @ [src; 1]``."""
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rotation = u @ np.diag(d) @ vt
    var = (src_c**2).sum() / len(src)
    scale = float((s * d).sum() / var) if var > 0 else 1.0
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


#: insightface's ArcFace template for 112x112 chips (arcface5 order: left eye, right eye, nose tip,
#: left mouth corner, right mouth corner; "left" = smaller x in the image).
ARCFACE_TEMPLATE_112 = np.array([
    [38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]])

#: dlib's 5th point sits below the nose (subnasale), about this fraction of the eye distance below the tip.
_SUBNASALE_DROP = 0.11


def correspondences(face: Face, template: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Matching (photo points, chip points) of ``face`` for an arcface5-order ``template`` [5,2].

    ``arcface5`` faces use all five points. ``dlib5`` faces (eye corners + below the nose) give three:
    the two eye centres and the subnasale, matched to the template's eyes and a point just below its
    nose tip; a similarity fit from three points aligns as well as from five for these templates.
    """
    points = np.asarray(face.landmarks, dtype=np.float64)
    if face.scheme == "arcface5":
        return points, template
    if face.scheme != "dlib5":
        raise ValueError(f"unknown landmark scheme {face.scheme!r}")
    eyes = sorted([points[0:2].mean(axis=0), points[2:4].mean(axis=0)], key=lambda p: p[0])
    src = np.stack([eyes[0], eyes[1], points[4]])
    eye_distance = float(np.linalg.norm(template[1] - template[0]))
    dst = np.stack([template[0], template[1], template[2] + [0.0, _SUBNASALE_DROP * eye_distance]])
    return src, dst


def similarity_align(images: torch.Tensor, faces: Sequence[Face], template: np.ndarray, size: int) -> torch.Tensor:
    """Warp each face of ``images`` [B,3,H,W] to a ``size`` x ``size`` chip whose landmarks land on
    ``template`` [5,2] (chip pixel coordinates, arcface5 order; see ``correspondences``).
    Bilinear, differentiable: [N,3,size,size]."""
    if not faces:
        return images.new_zeros((0, images.shape[1], size, size))
    _, _, height, width = images.shape
    theta = face_thetas(faces, template, size, height, width, images.device, images.dtype)
    source = images[[f.image_index for f in faces]]
    grid = F.affine_grid(theta, [len(faces), images.shape[1], size, size], align_corners=True)
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def template_aligner(size: int) -> Callable[[torch.Tensor, Sequence[Face]], torch.Tensor]:
    """Faces cut as ArcFace pipelines cut them (a similarity fit of the five points to insightface's 112 px
    template), scaled to a ``size`` px chip."""
    template = ARCFACE_TEMPLATE_112 * (size / 112.0)

    def align(images: torch.Tensor, faces: Sequence[Face]) -> torch.Tensor:
        return similarity_align(images, faces, template, size)

    return align


@torch.compiler.disable  # host work: outside any compiled graph, and its cache honoured
def face_thetas(faces: Sequence[Face], template: np.ndarray, size: int, height: int, width: int,
                device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """grid_sample thetas [N,2,3] mapping the ``size`` chip of each face to the photo, cached per face set."""
    key = tuple((f.scheme, tuple(map(tuple, np.asarray(f.landmarks, dtype=np.float64)))) for f in faces)
    return _thetas(key, tuple(map(tuple, np.asarray(template, dtype=np.float64))), size, height, width, device, dtype)


@functools.lru_cache(maxsize=256)
def _thetas(faces: tuple[tuple[str, tuple[tuple[float, ...], ...]], ...], template: tuple[tuple[float, ...], ...],
            size: int, height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The chip -> photo affine maps of ``faces`` as grid_sample thetas [N,2,3], computed once per face set
    (no host work and no host-to-device copy inside an optimisation loop)."""
    chip_norm = np.array([[(size - 1) / 2, 0, (size - 1) / 2], [0, (size - 1) / 2, (size - 1) / 2], [0, 0, 1]])
    photo_norm = np.array([[2 / (width - 1), 0, -1], [0, 2 / (height - 1), -1], [0, 0, 1]])
    thetas = []
    for scheme, landmarks in faces:
        face = Face(0, (0.0, 0.0, 0.0, 0.0), landmarks, scheme)  # type: ignore[arg-type]
        to_chip = np.vstack([similarity_transform(*correspondences(face, np.asarray(template))), [0, 0, 1]])
        thetas.append((photo_norm @ np.linalg.inv(to_chip) @ chip_norm)[:2])
    return torch.tensor(np.stack(thetas), dtype=dtype, device=device)
