"""Draws one explanation as original | heatmap | overlay, scaled up for people."""

from __future__ import annotations

import cv2
import numpy as np

SCALE = 8  # a 28x28 digit becomes 224x224
GAP = 8  # white pixels between panels
CAPTION_HEIGHT = 28
JPEG_QUALITY = 90


def render_explanation(pixels: np.ndarray, heat: np.ndarray, caption: str, scale: int = SCALE) -> np.ndarray:
    """A BGR uint8 picture: caption band over three panels.

    ``pixels`` is (C, H, W) in [0, 1] with C = 1 or 3 (RGB); ``heat`` is (H, W)
    in [0, 1], already at the input size.
    """
    channels, height, width = pixels.shape
    size = (width * scale, height * scale)
    image_u8 = np.clip(pixels.transpose(1, 2, 0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    bgr = cv2.cvtColor(image_u8, cv2.COLOR_GRAY2BGR if channels == 1 else cv2.COLOR_RGB2BGR)
    original = cv2.resize(bgr, size, interpolation=cv2.INTER_NEAREST)
    heat_u8 = np.clip(heat * 255.0 + 0.5, 0, 255).astype(np.uint8)
    heatmap = cv2.applyColorMap(cv2.resize(heat_u8, size, interpolation=cv2.INTER_LINEAR), cv2.COLORMAP_JET)
    overlay = cv2.addWeighted(original, 0.5, heatmap, 0.5, 0.0)

    gap = np.full((size[1], GAP, 3), 255, dtype=np.uint8)
    panels = np.hstack([original, gap, heatmap, gap, overlay])
    band = np.full((CAPTION_HEIGHT, panels.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(band, caption, (6, CAPTION_HEIGHT - 9), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([band, panels])


def encode_jpeg(picture: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV could not encode the JPEG")
    return buffer.tobytes()
