"""The explainer's decoded models: kept by content hash, a module per call."""

from __future__ import annotations

import torch

from fedxai.models import architectures, build_model
from services.explainer.loaded_models import LoadedModel, ModelCache

ARCH = architectures()["mnist_cnn"]


def loaded(sha256: str, seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    state = ARCH.factory().state_dict()
    return LoadedModel(sha256, ARCH, state, build_model(ARCH, state, "model"))


def test_calls_at_the_same_time_get_modules_of_their_own_sharing_the_weights():
    model = loaded("a")
    with model.borrow() as first, model.borrow() as second:
        assert first is not second
        assert first.conv1.weight.data_ptr() == second.conv1.weight.data_ptr()
    with model.borrow() as reused:
        assert reused in (first, second)


def test_least_recently_used_model_goes_first():
    cache = ModelCache(capacity=2)
    a = cache.add(loaded("a"))
    cache.add(loaded("b"))
    c = loaded("c")
    assert cache.get("a") is a  # now b is the least recently used
    cache.add(c)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (a, None, c)


def test_lookup_by_architecture_needs_the_same_one():
    cache = ModelCache(capacity=2)
    model = cache.add(loaded("a"))
    assert cache.get("a", "mnist_cnn") is model
    assert cache.get("a", "cifar10_cnn") is None
    assert cache.get("a") is model
