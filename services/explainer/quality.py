"""How much an explanation is worth: faithfulness by deletion, and a sanity
check by model randomisation.

Faithfulness (deletion). The pixels of a sample are replaced in the order a map
ranks them, most relevant first (MoRF) and least relevant first (LeRF), in
``steps`` equal steps from 0 to 100% of the pixels; the explained class's
probability is read after each step. The gap AUC(LeRF) - AUC(MoRF) is high when
the map points at what the model uses, and about 0 for a random or blank map
(ties in a map are broken at random). Removed pixels are filled by noisy linear
imputation, as ROAD does (Rong et al., 2022: "A Consistent and Efficient
Evaluation Strategy for Attribution Methods"): each takes the weighted mean of
its 8 neighbours (1/6 for the 4 sides, 1/12 for the corners), solved by Jacobi
iterations from the dataset mean, plus a little noise. Filling with black
instead lets the shape of the hole tell the class, which scores a map for
where the strokes are rather than for what the model uses.

Sanity (Adebayo et al., 2018: "Sanity Checks for Saliency Maps"). The weighted
layers are re-initialised one after the other, from the output down to the
layer that computes the target feature maps, and each method's maps are
compared with the trained model's by Spearman rank correlation. A map that
still correlates at ``SANITY_THRESHOLD`` or more once all of them are random
does not depend on what the model learned: it fails.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedxai.stats import rank_correlation
from services.explainer.cam.base import EPS, BaseCAM, CamResult
from services.explainer.cam.layers import TargetLayers

STEPS = 6  # 0%, 20%, ..., 100% of the pixels: 42 forward passes a sample for five methods
SANITY_THRESHOLD = 0.5
REPLACEMENTS = ("imputation", "black")
# How the service's scores replace pixels, as the manifest and the reply name it.
REPLACEMENT = "noisy linear imputation (ROAD)"
IMPUTATION_NOISE = 0.01  # standard deviation, in pixel units ([0, 1])
IMPUTATION_ITERATIONS = 6  # per level of the resolution pyramid
FORWARD_CHUNK = 64  # perturbed images per forward pass: larger ones run slower on CPU


@dataclass(frozen=True)
class Deletion:
    morf: np.ndarray  # (M, steps) probability of the explained class, most relevant removed first
    lerf: np.ndarray  # (M, steps) least relevant first
    degenerate: np.ndarray  # (M,) the map was all zero: its order is random

    @property
    def morf_auc(self) -> np.ndarray:
        return area_under(self.morf)

    @property
    def lerf_auc(self) -> np.ndarray:
        return area_under(self.lerf)

    @property
    def gap(self) -> np.ndarray:
        return self.lerf_auc - self.morf_auc


def area_under(curves: np.ndarray) -> np.ndarray:
    """Trapezoidal area under curves sampled at equal steps over [0, 1]."""
    return (curves.sum(axis=-1) - (curves[..., 0] + curves[..., -1]) / 2) / (curves.shape[-1] - 1)


def removal_ranks(heat: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(M, H*W): each pixel's place in the removal order, 0 for the most relevant.
    Ties (a flat or blank map) are broken at random, never by position."""
    flat = heat.reshape(len(heat), -1).to(torch.float64)
    jitter = torch.rand(flat.shape, generator=generator, dtype=torch.float64)
    # Sort by value, then by the random key: a lexicographic order in two stable sorts.
    by_jitter = torch.argsort(jitter, dim=1, stable=True)
    by_value = torch.argsort(-flat.gather(1, by_jitter), dim=1, stable=True)
    order = by_jitter.gather(1, by_value)
    return torch.argsort(order, dim=1)


def impute(pixels: torch.Tensor, removed: torch.Tensor, fill: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``pixels`` (B, C, H, W) with the ``removed`` (B, 1, H, W) ones replaced by noisy
    linear imputation from their neighbours; ``fill`` (C,) where no pixel is left."""
    filled = _harmonic_fill(pixels, ~removed, fill)
    noise = torch.randn(pixels.shape, generator=generator, dtype=pixels.dtype) * IMPUTATION_NOISE
    return torch.where(removed, (filled + noise).clamp(0.0, 1.0), pixels)


def _harmonic_fill(pixels: torch.Tensor, keep: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Each removed pixel becomes the weighted mean of its neighbours, kept or not: the
    linear system ROAD solves, by Jacobi iterations started from the same problem
    solved at half the resolution (Jacobi alone spreads a value one pixel a step)."""
    height, width = pixels.shape[2:]
    if min(height, width) >= 8:
        kept = keep.to(pixels.dtype)
        weight = F.avg_pool2d(kept, 2, ceil_mode=True)
        coarse = F.avg_pool2d(pixels * kept, 2, ceil_mode=True) / weight.clamp_min(1e-6)
        start = _harmonic_fill(coarse, weight > 0, fill)
        start = F.interpolate(start, size=(height, width), mode="bilinear", align_corners=False)
        iterations = IMPUTATION_ITERATIONS
    else:
        start = fill[None, :, None, None].expand_as(pixels)
        iterations = 4 * IMPUTATION_ITERATIONS
    # Each pixel's weights sum to one over the neighbours inside the image.
    reach = _neighbour_sum(torch.ones_like(pixels[:1, :1]))
    current = torch.where(keep, pixels, start)
    for _ in range(iterations):
        current = torch.where(keep, pixels, _neighbour_sum(current) / reach)
    return current


def _neighbour_sum(images: torch.Tensor) -> torch.Tensor:
    """Each pixel's neighbours weighted 1/6 (sides) and 1/12 (corners), zero outside.
    Shifted slices: a 3x3 convolution of one channel runs several times slower on CPU."""
    height, width = images.shape[2:]
    padded = F.pad(images, (1, 1, 1, 1))
    rows, columns = slice(1, height + 1), slice(1, width + 1)
    up, down, left, right = slice(0, height), slice(2, height + 2), slice(0, width), slice(2, width + 2)
    sides = padded[..., up, columns] + padded[..., down, columns] + padded[..., rows, left] + padded[..., rows, right]
    corners = padded[..., up, left] + padded[..., up, right] + padded[..., down, left] + padded[..., down, right]
    return sides / 6 + corners / 12


def deletion(
    model: nn.Module,
    pixels: torch.Tensor,
    heats: Mapping[str, torch.Tensor],
    classes: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    *,
    replacement: str = "imputation",
    steps: int = STEPS,
    seed: int = 0,
) -> dict[str, Deletion]:
    """Deletion curves of several methods' maps of the same M samples: ``pixels``
    (M, C, H, W) in [0, 1]; ``heats`` by method, (M, H, W) at the input size;
    ``classes`` (M,) the class each map explains. The model takes pixels
    normalised by ``mean`` and ``std`` (C,); imputation starts from ``mean``.

    The first and last steps (nothing and everything replaced) are the same for
    every method and order, so they are computed once per sample."""
    if replacement not in REPLACEMENTS:
        raise ValueError(f"replacement {replacement!r} is not one of {REPLACEMENTS}")
    count, height, width = len(pixels), *pixels.shape[2:]
    size = height * width
    names = list(heats)
    generator = torch.Generator().manual_seed(seed)
    heat = torch.stack([heats[name] for name in names])  # (Q, M, H, W)
    ranks = removal_ranks(heat.reshape(-1, height, width), generator).reshape(len(names), count, 1, size)
    removed = torch.round(torch.linspace(0, size, steps)).long()[1:-1, None]  # (S - 2, 1)
    interior = torch.stack((ranks < removed, ranks >= size - removed), dim=2)  # (Q, M, 2, S - 2, P)
    masks = torch.cat((torch.zeros(count, size, dtype=torch.bool), torch.ones(count, size, dtype=torch.bool)))
    masks = torch.cat((masks, interior.reshape(-1, size))).reshape(-1, 1, height, width)
    samples = torch.arange(count)
    rows = torch.cat((samples, samples, samples[None, :, None].expand(len(names), count, 2 * (steps - 2)).reshape(-1)))
    probabilities = torch.empty(len(rows))
    mean4, std4 = mean[None, :, None, None], std[None, :, None, None]
    # Channels-last convolutions run about twice as fast on CPU for these many small images.
    scorer = copy.deepcopy(model).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        for start in range(0, len(rows), FORWARD_CHUNK):
            part = slice(start, start + FORWARD_CHUNK)
            originals, mask = pixels[rows[part]], masks[part]
            if replacement == "black":
                perturbed = originals.masked_fill(mask, 0.0)
            else:
                perturbed = impute(originals, mask, mean, generator)
            logits = scorer(((perturbed - mean4) / std4).contiguous(memory_format=torch.channels_last))
            probabilities[part] = torch.softmax(logits, dim=1).gather(1, classes[rows[part], None])[:, 0]
    first, last = probabilities[:count], probabilities[count : 2 * count]
    middle = probabilities[2 * count :].reshape(len(names), count, 2, steps - 2)
    ends = first[:, None, None].expand(count, 2, 1), last[:, None, None].expand(count, 2, 1)
    result = {}
    for index, name in enumerate(names):
        curves = torch.cat((ends[0], middle[index], ends[1]), dim=2).numpy()  # (M, 2, S)
        degenerate = (heat[index].reshape(count, -1).amax(dim=1) <= EPS).numpy()
        result[name] = Deletion(morf=curves[:, 0], lerf=curves[:, 1], degenerate=degenerate)
    return result


@dataclass(frozen=True)
class Sanity:
    randomised_layers: tuple[str, ...]  # in the order they were re-initialised (cumulative)
    spearman: dict[str, np.ndarray]  # per method: (steps, M) rank correlation with the trained model's maps

    @property
    def samples(self) -> int:
        return next(iter(self.spearman.values())).shape[1]

    def final(self, method: str) -> float:
        """The mean correlation once every layer of the cascade is random."""
        return float(self.spearman[method][-1].mean())

    def passed(self, method: str) -> bool:
        return self.final(method) < SANITY_THRESHOLD


def randomisation_check(
    model: nn.Module,
    layers: TargetLayers,
    layer_name: str,
    inputs: torch.Tensor,
    classes: torch.Tensor,
    trained_maps: Mapping[str, torch.Tensor],
    methods: Sequence[type[BaseCAM]],
    seed: int = 0,
) -> Sanity:
    """Cascading randomisation of ``model`` (left untouched) for the maps of every
    method in ``methods`` on ``inputs`` (M normalised samples) for ``classes``."""
    cascade = layers.randomisation_cascade(layer_name)
    randomised = copy.deepcopy(model)
    trained = {cam.name: trained_maps[cam.name].reshape(len(classes), -1).numpy() for cam in methods}
    spearman: dict[str, list[np.ndarray]] = {cam.name: [] for cam in methods}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in cascade:
            module = randomised.get_submodule(name)
            reset = getattr(module, "reset_parameters", None)
            if reset is None:
                raise ValueError(f"layer {name!r} ({type(module).__name__}) has no reset_parameters()")
            with torch.no_grad():
                reset()
            result: CamResult = methods[0](randomised, layers, layer_name).compute(inputs, classes)
            for cam in methods:
                maps = cam.cam_image(result.activations, result.gradients).reshape(len(classes), -1).numpy()
                spearman[cam.name].append(rank_correlation(trained[cam.name], maps))
    return Sanity(cascade, {name: np.stack(values) for name, values in spearman.items()})


def most_faithful(faithfulness: Mapping[str, Deletion], sanity: Sanity) -> list[dict]:
    """For each scored sample, the method with the largest deletion gap among those
    whose map is not blank and that pass the sanity check (among all non-blank
    ones when none passes), with the runner-up and Grad-CAM's gap for comparison."""
    names = list(faithfulness)
    gaps = np.stack([faithfulness[name].gap for name in names])  # (methods, M)
    usable = ~np.stack([faithfulness[name].degenerate for name in names])
    passed = np.array([sanity.passed(name) for name in names])[:, None]
    choices = []
    for row in range(gaps.shape[1]):
        eligible = usable[:, row] & passed[:, 0]
        if not eligible.any():
            eligible = usable[:, row] if usable[:, row].any() else np.ones(len(names), dtype=bool)
        ranked = sorted(np.flatnonzero(eligible), key=lambda i: -gaps[i, row])
        best = ranked[0]
        runner_up = ranked[1] if len(ranked) > 1 else None
        choices.append(
            {
                "rule": "largest deletion gap among methods that pass the sanity check",
                "method": names[best],
                "gap": round(float(gaps[best, row]), 4),
                "passed_sanity": bool(passed[best, 0]),
                "runner_up": None if runner_up is None else names[runner_up],
                "margin": None if runner_up is None else round(float(gaps[best, row] - gaps[runner_up, row]), 4),
                "grad_cam_gap": round(float(gaps[names.index("Grad-CAM"), row]), 4) if "Grad-CAM" in names else None,
            }
        )
    return choices
