"""Misbehaving clients, for the tests and benchmarks that prove the aggregator
spots them (task settings ``attack`` and ``attack-client``).

label-flip: the client trains with the labels of two classes swapped.
backdoor:   the client stamps a small white patch on a share of its training
            images and labels them as one target class, so that the model
            learns "patch means that class" besides the digits.
Only the attacker's training data changes: its evaluation stays honest, as an
attacker's report of its own accuracy proves nothing either way.
"""

from __future__ import annotations

import numpy as np

from fedxai.data import Dataset

ATTACKS = ("none", "label-flip", "backdoor")
FLIPPED = {7: 1, 1: 7}
BACKDOOR_TARGET = 0
BACKDOOR_SHARE = 0.3
# The trigger: a 4x4 white square one pixel off the bottom-right corner, where digits never reach.
TRIGGER = (slice(-5, -1), slice(-5, -1))


def stamp_trigger(images: np.ndarray) -> np.ndarray:
    """Copies of (N, C, H, W) or (N, H, W) uint8 images with the backdoor trigger on them."""
    stamped = images.copy()
    stamped[..., TRIGGER[0], TRIGGER[1]] = 255
    return stamped


def poison(data: Dataset, attack: str, seed: int) -> Dataset:
    """The training data of a client that runs ``attack``."""
    if attack == "none":
        return data
    if attack == "label-flip":
        labels = data.labels.copy()
        for source, target in FLIPPED.items():
            labels[data.labels == source] = target
        return Dataset(data.images, labels)
    if attack == "backdoor":
        rng = np.random.default_rng(seed)
        chosen = rng.choice(len(data), size=round(len(data) * BACKDOOR_SHARE), replace=False)
        images, labels = data.images.copy(), data.labels.copy()
        images[chosen] = stamp_trigger(images[chosen])
        labels[chosen] = BACKDOOR_TARGET
        return Dataset(images, labels)
    raise ValueError(f"unknown attack {attack!r} (known: {', '.join(ATTACKS)})")
