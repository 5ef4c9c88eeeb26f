"""Photos between numpy (HxWx3 uint8, as read and written) and torch ([1,3,H,W] float in [0, 1])."""

from __future__ import annotations

from typing import Any

import numpy as np


def image_to_tensor(image: np.ndarray, device: Any = "cpu"):
    """HxWx3 uint8 -> [1,3,H,W] float32 in [0, 1] on ``device``."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().div(255).to(device)


def tensor_to_image(tensor) -> np.ndarray:
    """[1,3,H,W] in [0, 1] (the first photo of a batch) -> HxWx3 uint8, rounded to the 8-bit grid."""
    import torch

    return torch.round(tensor[0].detach().float().clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
