"""How the federation's models compare, from their maps of the same probe images.

The distance between two maps of one image is 1 - Spearman's rank correlation of
their cells (0: the same ranking, 1: unrelated, 2: reversed; two all-zero maps
are at 0, an all-zero map and another at 1). A class's distance is the mean over
its probe images.

Per round and class, each client's update is compared with the global model's
maps (``distance_to_global``) and with the cell-wise median of the other
clients' maps, each scaled to its peak (``distance_to_clients``). The flag rule
works on the latter, which needs no aggregate and so can decide before
aggregation which updates to leave out:

    z = (d - median over clients) / max(1.4826 * MAD over clients, 0.05)

A client is flagged when some class has z above the threshold (``flag-threshold``,
3.5 by default, Iglewicz and Hoaglin's cut-off); those classes drive the flag.
The floor on the scale (0.05 in distance units) keeps clients that agree almost
perfectly from turning tiny differences into large scores. It takes at least 3
clients. The global model's ``drift`` is its distance from the previous round's
global maps.

The maps are HiResCAM's by default (``probe-cam-method``): Grad-CAM averages the
gradients over the map before weighting the channels, so a confident model's
map of a class is often all zero, and an honest client's distance jumps between
0 and 1 from round to round. In a trial of 5 clients x 8 rounds with a
label-flipping client, honest clients reached z = 12.8 on Grad-CAM's maps and
stayed under 1.5 on HiResCAM's, where the attacker's never fell below 6.3.

The same robust z-score on the cosine distance between a client's weight update
and the median of the others' updates is recorded beside it: the idea behind
distance-based defences (Krum, FLAME), with no explanation involved.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedxai.stats import rank_correlation

MIN_CLIENTS_TO_FLAG = 3
# Consistency constant: 1.4826 * MAD estimates the standard deviation of normal data.
MAD_TO_SIGMA = 1.4826
SCALE_FLOOR = 0.05
WEIGHT_SCALE_FLOOR = 0.02  # the weight distance's floor, in cosine-distance units
BLOCK = 16_384  # coordinates of every update compared at a time


def map_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - Spearman's rho of each row of ``a`` with the same row of ``b``: (N, cells) -> (N,)."""
    distance = 1.0 - rank_correlation(a.astype(np.float64), b.astype(np.float64))
    both_flat = (np.ptp(a, axis=1) == 0) & (np.ptp(b, axis=1) == 0)
    distance[both_flat] = 0.0
    return distance


def per_class(distances: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    return {int(label): float(distances[labels == label].mean()) for label in np.unique(labels)}


def scaled_to_peak(maps: np.ndarray) -> np.ndarray:
    peaks = maps.max(axis=1, keepdims=True)
    return np.divide(maps, peaks, out=np.zeros_like(maps), where=peaks > 0)


def robust_z(values: Mapping[str, float], floor: float) -> dict[str, float]:
    """Each value's distance above the median, in robust standard deviations."""
    array = np.array(list(values.values()), dtype=np.float64)
    median = np.median(array)
    scale = max(MAD_TO_SIGMA * float(np.median(np.abs(array - median))), floor)
    return {name: float((value - median) / scale) for name, value in values.items()}


def compare_round(
    labels: np.ndarray,
    updates: Mapping[str, np.ndarray],
    global_maps: np.ndarray | None,
    previous_global: np.ndarray | None,
    threshold: float,
) -> dict:
    """The round's comparisons from the maps at hand ((N, cells) arrays of the
    probe images, in order): what ``metrics.json`` keeps under ``comparison``."""
    clients: dict[str, dict] = {name: {} for name in sorted(updates)}
    scaled = {name: scaled_to_peak(maps) for name, maps in updates.items()}
    if len(updates) >= 2:
        for name in clients:
            others = np.median(np.stack([scaled[other] for other in scaled if other != name]), axis=0)
            clients[name]["distance_to_clients"] = per_class(map_distances(scaled[name], others), labels)
    if global_maps is not None:
        for name in clients:
            clients[name]["distance_to_global"] = per_class(map_distances(updates[name], global_maps), labels)
    flagged = []
    if len(updates) >= MIN_CLIENTS_TO_FLAG:
        classes = sorted(next(iter(clients.values()))["distance_to_clients"])
        z_by_class = {
            label: robust_z({name: c["distance_to_clients"][label] for name, c in clients.items()}, SCALE_FLOOR)
            for label in classes
        }
        for name, figures in clients.items():
            figures["z_score"] = {label: round(z_by_class[label][name], 3) for label in classes}
            figures["flag_classes"] = [label for label in classes if z_by_class[label][name] > threshold]
            figures["flagged"] = bool(figures["flag_classes"])
            if figures["flagged"]:
                flagged.append(name)
    for figures in clients.values():
        for field in ("distance_to_clients", "distance_to_global"):
            if field in figures:
                figures[field] = {label: round(value, 4) for label, value in figures[field].items()}
    comparison: dict = {"clients": clients, "flagged": flagged}
    if global_maps is not None and previous_global is not None:
        drift = per_class(map_distances(global_maps, previous_global), labels)
        comparison["global"] = {"drift": {label: round(value, 4) for label, value in drift.items()}}
    return comparison


def _against_medians_of_others(updates: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each update in turn, its dot product with the coordinate-wise median of all
    the others, its squared norm and that median's.

    The medians come from the order statistics of all n updates around the middle, found
    once (``np.partition``, linear time), rather than from a median of n - 1 updates per
    client: leaving out a value at or below the k-th smallest shifts the others' k-th
    smallest up by one place, and leaves it in place otherwise. The coordinates are taken
    a block at a time, so that what is partitioned stays in the cache and no copy of all
    the updates is made (480 MB with 100 clients of a 1.2-million-weight model).
    """
    count = len(updates)
    middle = (count - 2) // 2 if count % 2 == 0 else (count - 3) // 2
    products, squares, median_squares = np.zeros(count), np.zeros(count), np.zeros(count)
    for begin in range(0, updates[0].size, BLOCK):
        block = np.stack([update[begin : begin + BLOCK] for update in updates])
        if count % 2 == 0:  # the others are odd in number: their median is one value
            ordered = np.partition(block.T, (middle, middle + 1), axis=1).T
            below, above = ordered[middle], ordered[middle + 1]
            medians = np.where(block <= below, above, below)
        else:  # the mean of the others' two middle values
            ordered = np.partition(block.T, (middle, middle + 1, middle + 2), axis=1).T
            low, mid, high = ordered[middle], ordered[middle + 1], ordered[middle + 2]
            medians = (np.where(block <= low, mid, low) + np.where(block <= mid, high, mid)) / 2
        products += np.einsum("ij,ij->i", block, medians, dtype=np.float64)
        squares += np.einsum("ij,ij->i", block, block, dtype=np.float64)
        median_squares += np.einsum("ij,ij->i", medians, medians, dtype=np.float64)
    return products, squares, median_squares


def weight_outliers(updates: Mapping[str, np.ndarray], threshold: float) -> dict[str, dict]:
    """The baseline without explanations: each client's cosine distance from the
    coordinate-wise median of the other clients' weight updates (flattened
    differences from the round's starting model), and its robust z-score."""
    figures: dict[str, dict] = {}
    products, squares, median_squares = _against_medians_of_others(list(updates.values()))
    for name, product, norms in zip(updates, products, np.sqrt(squares * median_squares), strict=True):
        figures[name] = {"distance": round(1.0 - float(product) / norms if norms > 0 else 1.0, 5)}
    if len(updates) >= MIN_CLIENTS_TO_FLAG:
        z = robust_z({name: f["distance"] for name, f in figures.items()}, WEIGHT_SCALE_FLOOR)
        for name, f in figures.items():
            f["z_score"] = round(z[name], 3)
            f["flagged"] = z[name] > threshold
    return figures
