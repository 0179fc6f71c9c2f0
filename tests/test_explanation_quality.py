"""Explanations of a trained model, measured: targets after the activation, blank
and weak maps said plainly, faithfulness by deletion, and the sanity check."""

from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from fedxai.errors import InvalidArgument
from fedxai.models import architectures
from fedxai.stats import rank_correlation
from fedxai.tensors import encode_state_dict
from fedxai.v1 import explainer_pb2 as pb
from services.explainer import quality
from services.explainer.cam import ALL_METHODS, CamResult, TargetLayers, normalise, target_layers, upsample
from services.explainer.explanations import Computed, SampleStats
from services.explainer.render import CAPTION_HEIGHT, GAP, SCALE, Caption, render_explanations
from tests.helpers import TRAINED_ON, decode_jpeg, explain_request

MNIST = architectures()["mnist_cnn"]
LAYERS = target_layers(MNIST)
MEAN, STD = torch.tensor(MNIST.mean), torch.tensor(MNIST.std)
PER_CLASS = 12  # held-out digits of each class the measurements use


@pytest.fixture(scope="module")
def held_out(mnist) -> tuple[torch.Tensor, torch.Tensor]:
    """120 digits the shared model never trained on, 12 of each class: pixels in [0, 1] and labels."""
    images, labels = mnist[0][TRAINED_ON:], mnist[1][TRAINED_ON:]
    chosen = np.concatenate([np.flatnonzero(labels == c)[:PER_CLASS] for c in range(10)])
    return torch.from_numpy(images[chosen]).float()[:, None] / 255.0, torch.from_numpy(labels[chosen]).long()


@pytest.fixture(scope="module")
def measured(trained_mnist_cnn, held_out):
    """Every method's maps at the default layer, their deletion scores and the sanity check."""
    pixels, labels = held_out
    inputs = (pixels - MEAN) / STD
    result = ALL_METHODS[0](trained_mnist_cnn, LAYERS).compute(inputs, labels)
    maps = {m.name: m.cam_image(result.activations, result.gradients) for m in ALL_METHODS}
    heats = {name: normalise(upsample(m, (28, 28))) for name, m in maps.items()}
    heats["random"] = torch.rand(len(labels), 28, 28, generator=torch.Generator().manual_seed(5))
    scores = quality.deletion(trained_mnist_cnn, pixels, heats, labels, MEAN, STD)
    sample = np.arange(0, len(labels), 3)  # 40 samples for the sanity check
    sanity = quality.randomisation_check(
        trained_mnist_cnn,
        LAYERS,
        LAYERS.default,
        inputs[sample],
        labels[sample],
        {name: m[sample] for name, m in maps.items()},
        ALL_METHODS,
    )
    return maps, scores, sanity


def pre_activation_maps(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of conv2's raw output, as the explainer computed it before targets moved after the ReLU."""
    before = TargetLayers(("conv2",), "conv2", {}, {}, LAYERS.forward_order, LAYERS.parameterised)
    return ALL_METHODS[0](model, before, "conv2").compute(inputs, labels).maps


def test_activations_are_modules_and_checkpoint_keys_are_unchanged() -> None:
    keys = set(MNIST.factory().state_dict())
    assert keys == {f"{layer}.{p}" for layer in ("conv1", "conv2", "fc1", "fc2") for p in ("weight", "bias")}
    assert LAYERS.default == "relu2"
    assert LAYERS.names == ("relu1", "relu2", "pool")
    assert LAYERS.resolve("") == "relu2" and LAYERS.resolve("conv2") == "relu2" and LAYERS.resolve("pool") == "pool"
    assert target_layers(architectures()["cifar10_cnn"]).default == "relu3"


class FunctionalReLU(nn.Module):
    """A model whose activations are applied in forward(), not by modules."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


def test_a_layer_followed_by_a_functional_activation_is_refused_with_the_reason() -> None:
    model = FunctionalReLU()
    with pytest.raises(InvalidArgument, match=r"last convolution 'conv2' goes through relu applied in forward\(\)"):
        TargetLayers.of(model, (1, 12, 12))
    # Where the last convolution has an activation module, an earlier functional one is named on request.
    layers = TargetLayers.of(Stacked(), (1, 12, 12))
    assert layers.default == "act2"
    with pytest.raises(InvalidArgument, match=r"'conv1' goes through relu applied in forward\(\), outside any module"):
        layers.resolve("conv1")


class Stacked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.conv2 = nn.Conv2d(4, 4, 3)
        self.act2 = nn.ReLU()
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act2(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def test_post_activation_target_ends_the_blank_maps(trained_mnist_cnn, held_out, measured) -> None:
    pixels, labels = held_out
    maps, _, _ = measured
    blank = {name: float((m.amax(dim=(1, 2)) <= 1e-10).float().mean()) for name, m in maps.items()}
    pre_activation = pre_activation_maps(trained_mnist_cnn, (pixels - MEAN) / STD, labels)
    before = float((pre_activation.amax(dim=(1, 2)) <= 1e-10).float().mean())
    for name in ("Grad-CAM++", "HiResCAM", "XGrad-CAM", "LayerCAM"):
        assert blank[name] <= 0.01, f"{name}: {blank[name]:.1%} blank maps"
    # Grad-CAM's channel-mean weights stay negative for some classes even after the ReLU
    # (the README's quality table): fewer blank maps than before, each one flagged.
    assert blank["Grad-CAM"] < before


def test_faithful_methods_beat_random_maps_by_a_wide_margin(measured) -> None:
    _, scores, sanity = measured
    random_gap = float(scores["random"].gap.mean())
    assert abs(random_gap) < 0.05
    assert float(scores["HiResCAM"].gap.mean()) > random_gap + 0.4
    faithfulness = {m.name: scores[m.name] for m in ALL_METHODS}
    subset = {name: _rows(s, slice(0, None, 3)) for name, s in faithfulness.items()}
    auto = quality.most_faithful(subset, sanity)
    auto_gap = np.mean([choice["gap"] for choice in auto])
    assert auto_gap > random_gap + 0.4
    # Every choice passes the sanity check and is the best of those that do.
    passing = [name for name in subset if sanity.passed(name)]
    for row, choice in enumerate(auto):
        assert choice["passed_sanity"] and choice["method"] in passing
        assert choice["gap"] == pytest.approx(max(float(subset[name].gap[row]) for name in passing), abs=1e-4)


def _rows(scores: quality.Deletion, rows: slice) -> quality.Deletion:
    return quality.Deletion(morf=scores.morf[rows], lerf=scores.lerf[rows], degenerate=scores.degenerate[rows])


def test_sanity_check_flags_maps_that_survive_randomisation(measured) -> None:
    _, _, sanity = measured
    assert sanity.randomised_layers == ("fc2", "fc1", "conv2")
    # LayerCAM keeps the ranking of its map on a random model: it shows the input, not the model.
    assert not sanity.passed("LayerCAM") and sanity.final("LayerCAM") >= quality.SANITY_THRESHOLD
    assert sanity.passed("HiResCAM") and sanity.passed("Grad-CAM")


def test_rank_correlation_handles_ties_and_constant_rows() -> None:
    a = np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 2.0], [5.0, 5.0, 5.0, 5.0]])
    b = np.array([[4.0, 3.0, 2.0, 1.0], [0.0, 0.0, 2.0, 9.0], [1.0, 2.0, 3.0, 4.0]])
    np.testing.assert_allclose(rank_correlation(a, b), [-1.0, 1.0, 0.0])
    # Average ranks for ties, against Pearson's r of hand-made ranks.
    x, y = np.array([[1.0, 1.0, 2.0, 3.0, 3.0]]), np.array([[2.0, 1.0, 3.0, 5.0, 4.0]])
    expected = np.corrcoef([1.5, 1.5, 3.0, 4.5, 4.5], [2.0, 1.0, 3.0, 5.0, 4.0])[0, 1]
    assert rank_correlation(x, y)[0] == pytest.approx(expected)


def test_imputation_fills_holes_from_their_neighbours() -> None:
    ramp = torch.linspace(0.0, 1.0, 28).expand(1, 1, 28, 28).clone()
    removed = torch.zeros(1, 1, 28, 28, dtype=torch.bool)
    removed[..., 8:20, 8:20] = True
    filled = quality.impute(ramp, removed, torch.tensor([0.5]), torch.Generator().manual_seed(0))
    assert torch.equal(filled[~removed.expand_as(filled)], ramp[~removed.expand_as(ramp)])
    # A linear ramp is what the neighbours' mean gives back, up to the added noise.
    assert (filled - ramp)[removed.expand_as(filled)].abs().mean() < 3 * quality.IMPUTATION_NOISE


def test_blank_maps_score_like_random_ones(trained_mnist_cnn, held_out) -> None:
    pixels, labels = held_out[0][::2], held_out[1][::2]
    heats = {"blank": torch.zeros(len(labels), 28, 28)}
    scores = quality.deletion(trained_mnist_cnn, pixels, heats, labels, MEAN, STD)["blank"]
    assert scores.degenerate.all()
    assert abs(float(scores.gap.mean())) < 0.05


def test_explain_reply_manifest_and_listing_carry_the_scores(stub, local_store, mnist, mnist_weights) -> None:
    images, labels = mnist[0][TRAINED_ON : TRAINED_ON + 64], mnist[1][TRAINED_ON : TRAINED_ON + 64]
    response = stub.Explain(explain_request(images, labels, mnist_weights), timeout=60)
    assert response.replacement == quality.REPLACEMENT
    assert list(response.sanity.randomised_layers) == ["fc2", "fc1", "conv2"]
    assert {m.method for m in response.sanity.methods} == {m.name for m in ALL_METHODS}
    by_method = {m.method: m for m in response.sanity.methods}
    assert not by_method["LayerCAM"].passed and by_method["HiResCAM"].passed
    for image in response.images:
        assert [f.method for f in image.faithfulness] == [m.name for m in ALL_METHODS]
        hires = next(f for f in image.faithfulness if f.method == "HiResCAM")
        assert hires.gap == pytest.approx(hires.lerf_auc - hires.morf_auc, abs=1e-6)
        assert hires.gap > 0.2
    manifest = json.loads(local_store.get(response.manifest_key))
    assert manifest["sanity"]["methods"]["LayerCAM"]["passed"] is False
    for entry in manifest["images"]:
        assert len(entry["faithfulness"]) == 5 and entry["sanity_passed"] is True
    listed = stub.ListExplanations(pb.ListExplanationsRequest(task_id="xaitest"), timeout=10).explanations
    assert len(listed) == 10
    assert all(len(e.faithfulness) == 5 and e.HasField("sanity_passed") for e in listed)

    skipped = stub.Explain(
        explain_request(images, labels, mnist_weights, store=False, scoring=pb.SCORING_SKIP), timeout=60
    )
    assert not skipped.HasField("sanity") and all(not image.faithfulness for image in skipped.images)


def test_scores_after_the_reply_land_in_the_stored_pictures_and_manifest(
    stub, local_store, mnist, mnist_weights
) -> None:
    images, labels = mnist[0][TRAINED_ON : TRAINED_ON + 64], mnist[1][TRAINED_ON : TRAINED_ON + 64]
    request = explain_request(images, labels, mnist_weights, scoring=pb.SCORING_AFTER_REPLY)
    response = stub.Explain(request, timeout=60)
    assert not response.HasField("sanity") and all(not image.faithfulness for image in response.images)
    deadline = time.monotonic() + 30
    while "sanity" not in json.loads(local_store.get(response.manifest_key)):
        assert time.monotonic() < deadline, "the scores never reached the manifest"
        time.sleep(0.1)
    manifest = json.loads(local_store.get(response.manifest_key))
    assert len(manifest["images"]) == 10
    assert all(len(entry["faithfulness"]) == 5 and "sanity_passed" in entry for entry in manifest["images"])
    # Redrawn with the scores in the caption: against the same call unscored, the
    # panels are the same and the caption is not.
    request.round, request.scoring = 2, pb.SCORING_SKIP
    unscored = stub.Explain(request, timeout=60)
    for image, plain in zip(response.images, unscored.images, strict=True):
        scored_picture = decode_jpeg(local_store.get(image.key)).astype(np.int16)
        plain_picture = decode_jpeg(local_store.get(plain.key)).astype(np.int16)
        assert np.abs(scored_picture[CAPTION_HEIGHT:] - plain_picture[CAPTION_HEIGHT:]).mean() < 1
        if not image.degenerate:  # a blank map's caption says only that
            assert np.abs(scored_picture[:CAPTION_HEIGHT] - plain_picture[:CAPTION_HEIGHT]).mean() > 0.5


def test_auto_draws_the_most_faithful_method_that_passes(stub, local_store, mnist, mnist_weights) -> None:
    images, labels = mnist[0][TRAINED_ON : TRAINED_ON + 64], mnist[1][TRAINED_ON : TRAINED_ON + 64]
    request = explain_request(images, labels, mnist_weights, method=pb.CAM_METHOD_AUTO)
    response = stub.Explain(request, timeout=60)
    assert response.method == "auto"
    passed = {m.method for m in response.sanity.methods if m.passed}
    manifest = {e["label"]: e for e in json.loads(local_store.get(response.manifest_key))["images"]}
    for image in response.images:
        best = max((f for f in image.faithfulness if f.method in passed), key=lambda f: f.gap)
        assert image.method == best.method == manifest[image.label]["method"]
        assert response.samples[image.sample_index].method == image.method
        selection = manifest[image.label]["selection"]
        assert selection["method"] == image.method and selection["passed_sanity"] is True
        assert selection["gap"] == pytest.approx(best.gap, abs=1e-4)
        assert image.key.endswith(f"gradcam_class_{image.label}.jpg")


def test_a_blank_map_is_drawn_and_listed_as_no_evidence(stub, local_store, mnist, trained_mnist_cnn) -> None:
    silent = {name: tensor.clone() for name, tensor in trained_mnist_cnn.state_dict().items()}
    silent["fc2.weight"].zero_()  # every logit is a constant: no gradient reaches any map
    weights = encode_state_dict(silent, {"architecture": "mnist_cnn"})
    images, labels = mnist[0][:20], mnist[1][:20]
    response = stub.Explain(explain_request(images, labels, weights), timeout=60)
    assert all(sample.degenerate and sample.cam_max == 0 for sample in response.samples)
    image = response.images[0]
    assert image.degenerate and not image.weak
    picture = decode_jpeg(local_store.get(image.key)).astype(np.int16)
    side = 28 * SCALE
    heatmap = picture[CAPTION_HEIGHT:, side + GAP : 2 * side + GAP]
    assert _no_evidence_card(heatmap)
    overlay = picture[CAPTION_HEIGHT:, 2 * side + 2 * GAP :]
    np.testing.assert_allclose(overlay, picture[CAPTION_HEIGHT:, :side], atol=12)  # the input alone
    assert (picture[:CAPTION_HEIGHT, :, 2] - picture[:CAPTION_HEIGHT, :, 0] > 100).any()  # red caption line
    listed = stub.ListExplanations(pb.ListExplanationsRequest(task_id="xaitest"), timeout=10).explanations
    assert listed and all(entry.degenerate for entry in listed)
    manifest = json.loads(local_store.get(response.manifest_key))
    assert all(entry["degenerate"] for entry in manifest["images"])


def _no_evidence_card(panel: np.ndarray) -> bool:
    """Grey, no JET colours, with red "NO EVIDENCE" text in the middle."""
    grey = np.abs(panel[..., 0] - panel[..., 2]) < 25
    red_text = (panel[..., 2] - panel[..., 0]) > 100
    return bool(grey.mean() > 0.9 and red_text.any() and np.median(panel) > 140)


def test_weak_maps_say_so_in_red_beside_their_raw_peak() -> None:
    pixels = np.zeros((2, 1, 28, 28), np.float32)
    heat = np.tile(cv2.getGaussianKernel(28, 5) @ cv2.getGaussianKernel(28, 5).T, (2, 1, 1)).astype(np.float32)
    heat /= heat.max()
    captions = [Caption("class 1", "peak 0.8"), Caption("class 2", "WEAK: peak 0.0003", warning=True)]
    normal, weak = render_explanations(pixels, heat, captions, np.array([False, False])).astype(np.int16)
    red = lambda picture: ((picture[:CAPTION_HEIGHT, :, 2] - picture[:CAPTION_HEIGHT, :, 0]) > 100).sum()  # noqa: E731
    assert red(weak) > 50 and red(normal) == 0
    side = 28 * SCALE
    assert not _no_evidence_card(weak[CAPTION_HEIGHT:, side + GAP : 2 * side + GAP])


def test_a_map_from_a_tiny_peak_is_marked_weak() -> None:
    peaks = np.array([0.01, 0.0, 0.2, 1.0, 1.0, 1.0], np.float32)  # median 0.6
    maps = np.ones((6, 3, 3), np.float32) * peaks[:, None, None]
    empty = torch.zeros(6, 1, 3, 3)
    result = CamResult(torch.zeros(6, 10), torch.arange(6), torch.from_numpy(maps), empty, empty)
    computed = Computed("relu2", result, {"Grad-CAM": maps}, np.zeros(6), np.ones(6), {}, None, None)
    stats = SampleStats.of(computed, ["Grad-CAM"] * 6)
    # Under 5% of the median peak is weak; a blank map is degenerate, not weak.
    assert stats.weak.tolist() == [True, False, False, False, False, False]
    np.testing.assert_allclose(stats.peaks, peaks)
