"""The Caffe input convention every DeepLab model uses: BGR, 0-255, minus the ImageNet mean.

torchvision's VGG16 instead takes RGB in 0-1 normalised by mean/std; weights trained in one
convention and fed the other give wrong results. ``deeplabv1 convert`` folds the torchvision
convention into conv1_1, so every network in this project takes this Caffe input.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# B, G, R means of the ImageNet training set as used by the DeepLab release
MEAN_BGR = (104.008, 116.669, 122.675)


def to_caffe_input(image: np.ndarray | Image.Image) -> torch.Tensor:
    """RGB image (H, W, 3) uint8 array or PIL image -> float32 tensor (3, H, W): BGR minus mean."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {arr.shape}")
    bgr = arr[:, :, ::-1].astype(np.float32) - np.asarray(MEAN_BGR, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)))


def from_caffe_input(tensor: torch.Tensor) -> np.ndarray:
    """Inverse of ``to_caffe_input``: (3, H, W) tensor -> RGB uint8 (H, W, 3)."""
    bgr = tensor.detach().cpu().numpy().transpose(1, 2, 0) + np.asarray(MEAN_BGR, np.float32)
    return np.clip(np.rint(bgr[:, :, ::-1]), 0, 255).astype(np.uint8)
