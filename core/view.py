"""``View``: the forward terms of one optimisation step, computed lazily and shared by the losses.

A loss asks the view for what it needs (``view.embeddings``, ``view.reference_embeddings``, ...);
the first ask computes it and later asks reuse it, so two losses on the same embeddings cost one
forward pass.
"""

from __future__ import annotations

from functools import cached_property
from typing import Callable, Sequence

import torch

from guardkit.types import Encoder, Face, FaceModel

ChipTransform = Callable[[torch.Tensor], torch.Tensor]
Aligner = Callable[[torch.Tensor, Sequence[Face]], torch.Tensor]


class View:
    """What one step sees.

    Args:
        clean: the clean batch [B,3,H,W] in [0, 1].
        adv: the current protected batch (carries the gradient).
        faces: every face of the batch (``face.image_index`` indexes ``clean``).
        face_model: the face model, or None for methods that need none.
        reference_embeddings: [N, D] clean embeddings of ``faces`` (computed once by the method).
        chip_transform: optional EOT transform ``[N,3,S,S] -> [K*N,3,S,S]`` applied to the chips
            (rows ordered K blocks of N).
        target_embeddings: optional [N, D] embeddings of a target identity (impersonation).
        aligner: optional ``(images, faces) -> chips`` that cuts the chips instead of the face model's own
            ``align`` (another pipeline's crop, read by this model; the reference must be cut the same way).
        encoder: the image encoder (VAE), or None.
        clean_latent: ``encoder.encode`` of the clean batch (computed once by the method; lazily if None).
        target_latent / target_image: targets of targeted attacks (PhotoGuard, VAE attack).
        face_source: where face losses read faces: ``"adv"`` (the protected photo) or ``"decoded"``
            (``decoder(encoder(adv))``, what a latent diffusion editor starts from: FaceLock).
    """

    def __init__(
        self,
        clean: torch.Tensor,
        adv: torch.Tensor,
        faces: Sequence[Face] = (),
        *,
        face_model: FaceModel | None = None,
        reference_embeddings: torch.Tensor | None = None,
        chip_transform: ChipTransform | None = None,
        target_embeddings: torch.Tensor | None = None,
        aligner: Aligner | None = None,
        encoder: Encoder | None = None,
        clean_latent: torch.Tensor | None = None,
        target_latent: torch.Tensor | None = None,
        target_image: torch.Tensor | None = None,
        face_source: str = "adv",
    ) -> None:
        if face_source not in ("adv", "decoded"):
            raise ValueError(f"face_source must be 'adv' or 'decoded', got {face_source!r}")
        self.clean = clean
        self.adv = adv
        self.faces = list(faces)
        self.face_model = face_model
        self._reference = reference_embeddings
        self._target = target_embeddings
        self._chip_transform = chip_transform
        self._aligner = aligner
        self.encoder = encoder
        self._clean_latent = clean_latent
        self.target_latent = target_latent
        self.target_image = target_image
        self.face_source = face_source

    @property
    def batch_size(self) -> int:
        return self.clean.shape[0]

    def _require_face_model(self) -> FaceModel:
        if self.face_model is None:
            raise ValueError("this loss needs a face model, and the method gave the view none")
        return self.face_model

    def _require_encoder(self) -> Encoder:
        if self.encoder is None:
            raise ValueError("this loss needs an encoder, and the method gave the view none")
        return self.encoder

    @cached_property
    def latent(self) -> torch.Tensor:
        """``encoder.encode`` of the protected batch (inputs mapped to [-1, 1])."""
        return self._require_encoder().encode(self.adv * 2 - 1)

    @cached_property
    def clean_latent(self) -> torch.Tensor:
        if self._clean_latent is None:
            with torch.no_grad():
                self._clean_latent = self._require_encoder().encode(self.clean * 2 - 1)
        return self._clean_latent

    @cached_property
    def decoded(self) -> torch.Tensor:
        """``decode(encode(adv))`` in [0, 1]: what a latent diffusion editor reconstructs."""
        return ((self._require_encoder().decode(self.latent) + 1) / 2).clamp(0, 1)

    @property
    def face_images(self) -> torch.Tensor:
        """The images face losses read: ``adv`` or ``decoded`` (``face_source``)."""
        return self.decoded if self.face_source == "decoded" else self.adv

    @cached_property
    def chips(self) -> torch.Tensor:
        """The faces of ``face_images`` aligned to the face model's chip (after the EOT transform, if any)."""
        align = self._aligner or self._require_face_model().align
        chips = align(self.face_images, self.faces)
        return self._chip_transform(chips) if self._chip_transform is not None else chips

    @cached_property
    def embeddings(self) -> torch.Tensor:
        """[K*N, D] embeddings of ``chips``."""
        return self._require_face_model().embed(self.chips)

    @property
    def repeats(self) -> int:
        """How many rows of ``embeddings`` each face has (K of the EOT transform)."""
        return self.embeddings.shape[0] // max(len(self.faces), 1)

    def _tile(self, rows: torch.Tensor) -> torch.Tensor:
        return rows.repeat(self.repeats, 1)

    @cached_property
    def reference_embeddings(self) -> torch.Tensor:
        """Clean embeddings, one row per row of ``embeddings``."""
        if self._reference is None:
            with torch.no_grad():
                align = self._aligner or self._require_face_model().align
                self._reference = self._require_face_model().embed(align(self.clean, self.faces))
        return self._tile(self._reference)

    @cached_property
    def target_embeddings(self) -> torch.Tensor | None:
        return None if self._target is None else self._tile(self._target)

    @cached_property
    def row_image_index(self) -> torch.Tensor:
        """[K*N] image index of each row of ``embeddings``."""
        index = torch.tensor([f.image_index for f in self.faces], dtype=torch.long, device=self.clean.device)
        return index.repeat(self.repeats)

    def per_image_mean(self, rows: torch.Tensor) -> torch.Tensor:
        """Average per-row values [K*N] into per-image values [B]; an image with no face gets 0."""
        index = self.row_image_index
        total = torch.zeros(self.batch_size, dtype=rows.dtype, device=rows.device).index_add(0, index, rows)
        count = torch.zeros(self.batch_size, dtype=rows.dtype, device=rows.device).index_add(
            0, index, torch.ones_like(rows))
        return total / count.clamp_min(1)
