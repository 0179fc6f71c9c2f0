"""The CAM engine against an independent reference, on real digits."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch

from fedxai.errors import InvalidArgument
from fedxai.models import architectures
from services.explainer.cam import METHODS, normalise, target_layers, upsample
from services.explainer.cam.grad_cam import GradCAM
from services.explainer.cam.grad_cam_plusplus import GradCAMPlusPlus
from services.explainer.cam.hires_cam import HiResCAM
from services.explainer.cam.layer_cam import LayerCAM
from services.explainer.cam.xgrad_cam import XGradCAM
from services.explainer.explanations import heat_at_input_size

MNIST = architectures()["mnist_cnn"]
LAYERS = target_layers(MNIST)


def inputs_for(images: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(images).float()[:, None] / 255.0 - MNIST.mean[0]) / MNIST.std[0]


def copy_of(model: torch.nn.Module) -> torch.nn.Module:
    clone = MNIST.factory()
    clone.load_state_dict(model.state_dict())
    return clone.eval()


def reference_activations_and_gradients(model, x, classes):
    """Activations of relu2 and d(score)/d(activations) by a full backward pass, one sample at a time."""
    acts, grads = [], []
    for i in range(len(x)):
        stored: dict[str, torch.Tensor] = {}
        handle = model.relu2.register_forward_hook(lambda _m, _a, out, stored=stored: stored.update(a=out))
        try:
            logits = model(x[i : i + 1])
        finally:
            handle.remove()
        stored["a"].retain_grad()
        logits[0, classes[i]].backward()
        acts.append(stored["a"].detach()[0].numpy())
        grads.append(stored["a"].grad[0].numpy())
    return np.stack(acts).astype(np.float64), np.stack(grads).astype(np.float64)


def reference_map(method: str, a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The published formulas, written out in numpy for (N, K, h, w) arrays."""
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    if method == "Grad-CAM":
        w = g.mean(axis=(2, 3), keepdims=True)
        return relu((w * a).sum(axis=1))
    if method == "Grad-CAM++":
        g2, g3 = g**2, g**3
        alpha = g2 / (2 * g2 + a.sum(axis=(2, 3), keepdims=True) * g3 + 1e-7)
        alpha = np.where(g != 0, alpha, 0)
        w = (alpha * relu(g)).sum(axis=(2, 3), keepdims=True)
        return relu((w * a).sum(axis=1))
    if method == "XGrad-CAM":
        w = (g * a).sum(axis=(2, 3), keepdims=True) / (a.sum(axis=(2, 3), keepdims=True) + 1e-7)
        return relu((w * a).sum(axis=1))
    if method == "HiResCAM":
        return relu((g * a).sum(axis=1))
    if method == "LayerCAM":
        return relu((relu(g) * a).sum(axis=1))
    raise AssertionError(method)


@pytest.mark.parametrize("method", [GradCAM, HiResCAM])
def test_one_batched_pass_matches_a_full_backward_per_sample(method, trained_mnist_cnn, mnist) -> None:
    images, labels = mnist
    x, y = inputs_for(images[:16]), torch.from_numpy(labels[:16])
    result = method(copy_of(trained_mnist_cnn), LAYERS).compute(x, y)

    a, g = reference_activations_and_gradients(copy_of(trained_mnist_cnn), x, y)
    expected = reference_map(method.name, a, g)
    assert result.maps.shape == (16, 24, 24)
    assert expected.max() > 0, "the reference maps are all zero: the comparison would prove nothing"
    np.testing.assert_allclose(result.maps.numpy(), expected, rtol=1e-3, atol=1e-5 * expected.max())


@pytest.mark.parametrize("method", [GradCAM, GradCAMPlusPlus, XGradCAM, HiResCAM, LayerCAM])
def test_methods_match_the_published_formulas(method, trained_mnist_cnn, mnist) -> None:
    # Same activations and gradients for both sides: Grad-CAM++'s weights divide
    # by a difference of tiny terms, so float32 gradient noise is amplified.
    images, labels = mnist
    x, y = inputs_for(images[:16]), torch.from_numpy(labels[:16])
    a, g = reference_activations_and_gradients(copy_of(trained_mnist_cnn), x, y)
    cam = method(copy_of(trained_mnist_cnn), LAYERS)
    got = cam.cam_image(torch.from_numpy(a), torch.from_numpy(g)).numpy()
    expected = reference_map(method.name, a, g)
    assert expected.max() > 0
    assert (got >= 0).all()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9 * expected.max())


def test_batch_gives_the_same_maps_as_one_sample_at_a_time(trained_mnist_cnn, mnist) -> None:
    images, labels = mnist
    x, y = inputs_for(images[:8]), torch.from_numpy(labels[:8])
    cam = GradCAM(copy_of(trained_mnist_cnn), LAYERS)
    batch = cam.compute(x, y).maps
    single = torch.cat([cam.compute(x[i : i + 1], y[i : i + 1]).maps for i in range(8)])
    torch.testing.assert_close(batch, single, rtol=1e-4, atol=1e-6)


def test_predicted_class_is_explained_when_no_targets_given(trained_mnist_cnn, mnist) -> None:
    x = inputs_for(mnist[0][:32])
    result = GradCAM(copy_of(trained_mnist_cnn), LAYERS).compute(x)
    assert torch.equal(result.classes, result.logits.argmax(dim=1))


def test_hooks_are_removed_and_no_parameter_gradients_are_left(trained_mnist_cnn, mnist) -> None:
    model = copy_of(trained_mnist_cnn)
    GradCAM(model, LAYERS).compute(inputs_for(mnist[0][:4]), torch.from_numpy(mnist[1][:4]))
    for module in model.modules():
        assert not module._forward_hooks and not module._backward_hooks
    assert all(p.grad is None for p in model.parameters())


def test_hooks_are_removed_when_the_layer_is_not_spatial(trained_mnist_cnn, mnist) -> None:
    model = copy_of(trained_mnist_cnn)
    # A layer list that lets fc1 through: the hook itself refuses a non-spatial output.
    permissive = dataclasses.replace(LAYERS, names=(*LAYERS.names, "fc1"))
    with pytest.raises(InvalidArgument, match=r"target_layer: layer 'fc1' outputs \(4, 128\)"):
        GradCAM(model, permissive, "fc1").compute(inputs_for(mnist[0][:4]))
    assert not model.fc1._forward_hooks


def test_all_zero_map_is_flagged_not_nan(mnist) -> None:
    model = MNIST.factory().eval()
    with torch.no_grad():
        model.conv2.weight.zero_()
        model.conv2.bias.zero_()
    result = GradCAM(model, LAYERS).compute(inputs_for(mnist[0][:3]), torch.tensor([0, 1, 2]))
    peaks = result.maps.amax(dim=(1, 2))
    assert torch.equal(peaks, torch.zeros(3))
    heat = normalise(upsample(result.maps, (28, 28)))
    assert torch.isfinite(heat).all() and torch.equal(heat, torch.zeros(3, 28, 28))


def test_upsampled_maps_span_zero_to_one_at_the_input_size(trained_mnist_cnn, mnist) -> None:
    # HiResCAM: on a confident model Grad-CAM leaves some maps blank, which stay at zero.
    x, y = inputs_for(mnist[0][:8]), torch.from_numpy(mnist[1][:8])
    result = HiResCAM(copy_of(trained_mnist_cnn), LAYERS).compute(x, y)
    heat = normalise(upsample(result.maps, (28, 28)))
    assert heat.shape == (8, 28, 28)
    assert heat.min() >= 0
    torch.testing.assert_close(heat.amax(dim=(1, 2)), torch.ones(8))


def test_pictures_heat_matches_the_torch_upsampling_and_normalisation(trained_mnist_cnn, mnist) -> None:
    x, y = inputs_for(mnist[0][:8]), torch.from_numpy(mnist[1][:8])
    result = GradCAM(copy_of(trained_mnist_cnn), LAYERS).compute(x, y)
    expected = normalise(upsample(result.maps, (28, 28))).numpy()
    np.testing.assert_allclose(heat_at_input_size(result.maps.numpy(), 28, 28), expected, atol=1e-5)
    zeros = heat_at_input_size(np.zeros((2, 24, 24), np.float32), 28, 28)
    assert np.array_equal(zeros, np.zeros((2, 28, 28)))


def test_three_channel_input_works() -> None:
    arch = architectures()["cifar10_cnn"]
    torch.manual_seed(1)
    result = METHODS[0](arch.factory(), target_layers(arch)).compute(torch.rand(5, 3, 32, 32), torch.arange(5))
    assert result.maps.shape == (5, 8, 8)
    assert result.maps.max() > 0


def test_concurrent_requests_on_their_own_models_do_not_mix(trained_mnist_cnn, mnist) -> None:
    x, y = inputs_for(mnist[0][:16]), torch.from_numpy(mnist[1][:16])
    other = MNIST.factory().eval()  # untrained: a very different map
    expected = {
        "trained": GradCAM(copy_of(trained_mnist_cnn), LAYERS).compute(x, y).maps,
        "other": GradCAM(other, LAYERS).compute(x, y).maps,
    }
    results: dict[str, list[torch.Tensor]] = {"trained": [], "other": []}

    def work(name: str, model: torch.nn.Module) -> None:
        cam = GradCAM(model, LAYERS)
        for _ in range(5):
            results[name].append(cam.compute(x, y).maps)

    threads = [
        threading.Thread(target=work, args=("trained", copy_of(trained_mnist_cnn))),
        threading.Thread(target=work, args=("other", other)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name, maps in results.items():
        assert len(maps) == 5
        for got in maps:
            torch.testing.assert_close(got, expected[name])
