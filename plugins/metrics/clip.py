"""CLIP metrics of an edit (FaceLock, Tab. 1), with transformers' ``CLIPModel`` and ``CLIPTokenizer``.

- ``clip-s`` (directional CLIP similarity, prompt fidelity):
  ``cos(E_img(edited) - E_img(source), E_txt(prompt))``; 0 where the edit changed nothing.
  Lower is better for the protection: the edit of a protected photo should follow the prompt less.
- ``clip-i`` (image integrity): ``cos(E_img(edited), E_img(source))``. Lower is better for the
  protection: the edit of a protected photo should look less like the person's photo.

Both use the projected (not normalised) ``get_image_features`` / ``get_text_features`` embeddings,
as FaceLock's ``evaluation/eval_clip_{s,i}.py`` do. **Model:** FaceLock's evaluation code loads
``openai/clip-vit-base-patch32`` (``CLIPModel.from_pretrained("openai/clip-vit-base-patch32")``), so
that is the default here, to reproduce its numbers; ``model_id="openai/clip-vit-large-patch14"`` (the
text encoder of Stable Diffusion 1.x) or any other CLIP checkpoint can be chosen instead.

Preprocessing is ``CLIPImageProcessor``'s, written in torch so photos never leave the tensor world:
resize the shorter side to ``image_size`` (bicubic, antialiased: PIL's filter), centre crop
``image_size``, CLIP mean/std. It works on float images, so it differs from the processor's
uint8 PIL path by rounding only (checked against ``CLIPImageProcessorPil`` in the tests).
The prompt is tokenised alone (no padding) and truncated at the model's context length.

Weights load offline only, from the first of: the ``path`` option (a ``save_pretrained`` folder holding
the model and its tokenizer; nothing else is searched), ``RunConfig.weights_dir / model_id``, the Hugging
Face cache (``local_files_only=True``). transformers is imported in ``load()``.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from guardkit import hookimpl
from guardkit.config import RunConfig
from guardkit.hub import quiet_library_logs
from guardkit.errors import ConfigError, WeightsError
from guardkit.types import EvalBatch
from guardkit.errors import first_line
from guardkit.weights import KnownWeight, hf_cache_dir

DEFAULT_MODEL_ID = "openai/clip-vit-base-patch32"  # FaceLock's evaluation/eval_clip_{s,i}.py
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipConfig:
    """``model_id``: hub id (looked up under ``weights_dir`` and in the HF cache). ``path``: a local
    folder with the model and tokenizer (only that folder is searched). ``revision``: hub revision in
    the cache. ``image_size``: the resize / crop size (``None``: the model's vision image size, 224
    for the OpenAI checkpoints)."""

    model_id: str = DEFAULT_MODEL_ID
    path: str | None = None
    revision: str = "main"
    image_size: int | None = None


def clip_preprocess(images: torch.Tensor, size: int, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """``[B,3,H,W]`` in [0,1] -> CLIP pixel values ``[B,3,size,size]``: shorter side to ``size``
    (bicubic, antialiased), centre crop, normalise. transformers' size and crop arithmetic."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"CLIP metrics expect images [B,3,H,W], got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(size * long / short)  # transformers' get_resize_output_image_size truncates
    new_h, new_w = (size, new_long) if h <= w else (new_long, size)
    x = images.float()
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
        x = x.clamp(0, 1)  # the processor resizes uint8 images: values stay in range
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = x[..., top : top + size, left : left + size]
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def _features(out: Any) -> torch.Tensor:
    """transformers 5 returns a model output with the projection in ``pooler_output``; 4.x a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipEncoder:
    """A CLIP image and text encoder loaded offline (shared by both metrics)."""

    def __init__(self, run: RunConfig, config: ClipConfig) -> None:
        self.run, self.config = run, config
        self.model = None
        self.tokenizer = None
        self.image_size = config.image_size

    def _how_to_fetch(self) -> str:
        mid = self.config.model_id
        return (f"fetch it with `hf download {mid} --local-dir DIR/{mid}` on a machine with network, then "
                f"pass --weights-dir DIR (or the metric option path=DIR/{mid})")

    def _folders(self) -> list[Path]:
        if self.config.path is not None:
            return [Path(self.config.path).expanduser()]
        if self.run.weights_dir is not None:
            return [Path(self.run.weights_dir).expanduser() / self.config.model_id]
        return []

    def load(self) -> None:
        with quiet_library_logs():
            self._load()

    def _load(self) -> None:
        if self.model is not None:
            return
        try:
            from transformers import CLIPModel, CLIPTokenizer
        except ImportError as exc:
            raise WeightsError("CLIP metrics need transformers: pip install transformers") from exc
        for folder in self._folders():
            if (folder / "config.json").is_file():
                try:
                    model = CLIPModel.from_pretrained(str(folder), local_files_only=True)
                    tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
                except (OSError, ValueError, TypeError) as exc:
                    raise WeightsError(f"CLIP weights in {folder} are incomplete or unreadable "
                                       f"({first_line(exc)}): {self._how_to_fetch()}") from exc
                break
        else:
            if self.config.path is not None:
                raise WeightsError(f"CLIP weights not found in {self.config.path} (no config.json): "
                                   f"{self._how_to_fetch()}")
            model, tokenizer = self._from_hf_cache(CLIPModel, CLIPTokenizer)
        model.to(self.run.torch_device()).eval().requires_grad_(False)
        if self.image_size is None:
            self.image_size = int(model.config.vision_config.image_size)
        self.model, self.tokenizer = model, tokenizer

    def _from_hf_cache(self, model_cls: Any, tokenizer_cls: Any) -> tuple[Any, Any]:
        from huggingface_hub.errors import EntryNotFoundError, OfflineModeIsEnabled

        cache = hf_cache_dir()
        kwargs = {"revision": self.config.revision, "cache_dir": str(cache), "local_files_only": True}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return (model_cls.from_pretrained(self.config.model_id, **kwargs),
                        tokenizer_cls.from_pretrained(self.config.model_id, **kwargs))
        except (OSError, EntryNotFoundError, OfflineModeIsEnabled) as exc:
            looked = [str(p) for p in self._folders()] + [f"the Hugging Face cache {cache}"]
            raise WeightsError(f"CLIP weights {self.config.model_id}@{self.config.revision} not found (looked in "
                               f"{' and '.join(looked)}): {self._how_to_fetch()}") from exc

    @torch.no_grad()
    def images(self, images: torch.Tensor) -> torch.Tensor:
        """``[B,3,H,W]`` in [0,1] -> projected image embeddings ``[B,D]`` (float32, not normalised)."""
        self.load()
        assert self.model is not None and self.image_size is not None
        param = next(self.model.parameters())
        pixels = clip_preprocess(images.to(param.device), self.image_size).to(param.dtype)
        return _features(self.model.get_image_features(pixel_values=pixels)).float()

    @torch.no_grad()
    def text(self, prompt: str) -> torch.Tensor:
        """``prompt`` -> projected text embedding ``[1,D]`` (float32, not normalised)."""
        self.load()
        assert self.model is not None and self.tokenizer is not None
        param = next(self.model.parameters())
        tokens = self.tokenizer([prompt], return_tensors="pt", truncation=True,
                                max_length=self.model.config.text_config.max_position_embeddings)
        out = self.model.get_text_features(input_ids=tokens["input_ids"].to(param.device),
                                           attention_mask=tokens["attention_mask"].to(param.device))
        return _features(out).float()


class _ClipMetric:
    higher_is_better: ClassVar[bool] = False
    name: ClassVar[str] = "clip"

    def __init__(self, run: RunConfig | None = None, **options: Any) -> None:
        self.run = run or RunConfig()
        try:
            self.config = ClipConfig(**options)
        except TypeError as exc:
            known = ", ".join(f.name for f in dataclasses.fields(ClipConfig))
            raise ConfigError(f"metric {self.name!r}: unknown option(s) {', '.join(sorted(options))}; "
                              f"known: {known}") from exc
        self.encoder = ClipEncoder(self.run, self.config)

    def load(self) -> None:
        with quiet_library_logs():
            self._load()

    def _load(self) -> None:
        self.encoder.load()


class ClipDirectional(_ClipMetric):
    """CLIP-S: ``cos(E_img(edited) - E_img(source), E_txt(prompt))`` per sample, in [-1, 1]."""

    name: ClassVar[str] = "clip-s"

    def score(self, batch: EvalBatch) -> torch.Tensor:
        edited, source = self.encoder.images(batch.edited), self.encoder.images(batch.source)
        text = self.encoder.text(batch.prompt)
        delta = edited - source
        # F.cosine_similarity clamps the norms at eps: a zero delta (no change) gives exactly 0
        return F.cosine_similarity(delta, text.expand_as(delta), dim=1).to(batch.edited.device)


class ClipImage(_ClipMetric):
    """CLIP-I: ``cos(E_img(edited), E_img(source))`` per sample, in [-1, 1]."""

    name: ClassVar[str] = "clip-i"

    def score(self, batch: EvalBatch) -> torch.Tensor:
        edited, source = self.encoder.images(batch.edited), self.encoder.images(batch.source)
        return F.cosine_similarity(edited, source, dim=1).to(batch.edited.device)


@hookimpl
def guardkit_register_metrics(register: Any) -> None:
    register("clip-s", ClipDirectional,
             summary="directional CLIP: cos(E(edited) - E(source), E(prompt)); lower = stronger protection",
             weights=(KnownWeight.hub(DEFAULT_MODEL_ID),))
    register("clip-i", ClipImage, summary="CLIP image similarity cos(E(edited), E(source)); lower = stronger protection",
             weights=(KnownWeight.hub(DEFAULT_MODEL_ID),))
