"""Draws explanations as original | heatmap | overlay, scaled up for people."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

SCALE = 8  # a 28x28 digit becomes 224x224
GAP = 8  # white pixels between panels
CAPTION_HEIGHT = 48  # two lines
JPEG_QUALITY = 90
TEXT = (0, 0, 0)
WARNING = (0, 0, 200)  # BGR: dark red
NO_EVIDENCE_GREY = 200
NO_EVIDENCE_TEXT = "NO EVIDENCE"


@dataclass(frozen=True)
class Caption:
    title: str  # what is explained and how
    detail: str  # the map's figures
    warning: bool = False  # the detail says the map is blank or weak: drawn in red


def render_explanations(
    pixels: np.ndarray, heat: np.ndarray, captions: Sequence[Caption], blank: np.ndarray, scale: int = SCALE
) -> np.ndarray:
    """BGR uint8 pictures, shape (K, caption + H * scale, 3 * W * scale + 2 gaps, 3):
    a caption band over three panels for each sample.

    ``pixels`` is (K, C, H, W) in [0, 1] with C = 1 or 3 (RGB); ``heat`` is
    (K, H, W) in [0, 1], already at the input size. Where ``blank`` (K,) is true
    the map is all zero: its heatmap panel is a hatched grey "NO EVIDENCE" card
    and the overlay shows the input alone, never a colour map of zeros, which
    would read as a weak map. The samples are drawn as one tall stack: at these
    sizes an OpenCV call costs mostly per call, not per pixel.
    """
    count, channels, height, width = pixels.shape
    side_h, side_w = height * scale, width * scale
    stacked = np.clip(pixels.transpose(0, 2, 3, 1) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    bgr = cv2.cvtColor(
        stacked.reshape(count * height, width, channels), cv2.COLOR_GRAY2BGR if channels == 1 else cv2.COLOR_RGB2BGR
    )
    # Nearest neighbour by a whole factor never mixes pixels of neighbouring samples.
    original = cv2.resize(bgr, (side_w, count * side_h), interpolation=cv2.INTER_NEAREST)
    heat_u8 = np.clip(heat * 255.0 + 0.5, 0, 255).astype(np.uint8)
    # Bilinear would blend across the stack: one sample at a time.
    smooth = np.concatenate([cv2.resize(h, (side_w, side_h), interpolation=cv2.INTER_LINEAR) for h in heat_u8])
    heatmap = cv2.LUT(cv2.cvtColor(smooth, cv2.COLOR_GRAY2BGR), jet_colours())
    overlay = cv2.addWeighted(original, 0.5, heatmap, 0.5, 0.0)
    if blank.any():
        rows = np.repeat(blank, side_h)
        heatmap[rows] = np.tile(no_evidence_panel(side_h, side_w), (int(blank.sum()), 1, 1))
        overlay[rows] = original[rows]

    pictures = np.full((count, CAPTION_HEIGHT + side_h, 3 * side_w + 2 * GAP, 3), 255, dtype=np.uint8)
    for column, panel in enumerate((original, heatmap, overlay)):
        left = column * (side_w + GAP)
        pictures[:, CAPTION_HEIGHT:, left : left + side_w] = panel.reshape(count, side_h, side_w, 3)
    for picture, caption in zip(pictures, captions, strict=True):
        cv2.putText(picture, caption.title, (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, TEXT, 1, cv2.LINE_AA)
        colour = WARNING if caption.warning else TEXT
        cv2.putText(
            picture, caption.detail, (6, CAPTION_HEIGHT - 9), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA
        )
    return pictures


@functools.cache
def no_evidence_panel(height: int, width: int) -> np.ndarray:
    """A light grey card with dark diagonal hatching and "NO EVIDENCE" across it."""
    panel = np.full((height, width, 3), NO_EVIDENCE_GREY, dtype=np.uint8)
    for offset in range(-height, width, 16):
        cv2.line(panel, (offset, height), (offset + height, 0), (150, 150, 150), 1, cv2.LINE_AA)
    (text_w, text_h), _ = cv2.getTextSize(NO_EVIDENCE_TEXT, cv2.FONT_HERSHEY_SIMPLEX, 0.7, 2)
    origin = ((width - text_w) // 2, (height + text_h) // 2)
    cv2.rectangle(
        panel, (origin[0] - 6, origin[1] - text_h - 6), (origin[0] + text_w + 6, origin[1] + 8), (255, 255, 255), -1
    )
    cv2.putText(panel, NO_EVIDENCE_TEXT, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.7, WARNING, 2, cv2.LINE_AA)
    panel.flags.writeable = False
    return panel


@functools.cache
def jet_colours() -> np.ndarray:
    """OpenCV's JET colour map as a lookup table: cv2.applyColorMap rebuilds it on every call."""
    return cv2.applyColorMap(np.arange(256, dtype=np.uint8)[None], cv2.COLORMAP_JET)  # (1, 256, 3)


def encode_jpeg(picture: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV could not encode the JPEG")
    return buffer.tobytes()
