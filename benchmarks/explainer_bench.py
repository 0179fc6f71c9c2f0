"""Explainer benchmark on CPU: Grad-CAM cost against a plain forward + backward,
against pytorch-grad-cam and captum, and the full Explain RPC against compute alone.

    python benchmarks/explainer_bench.py [--reps N] [--mnist-dir DIR]

All contenders of one table run back to back within each repetition (in rotating
order), so that load drifting on a noisy machine hits them alike. Times are medians;
a ratio is the median of the ratios within each repetition.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import torch

from fedxai.mnist import available_splits, load_split
from fedxai.models import architectures
from fedxai.settings import ExplainerSettings
from fedxai.storage import LocalStore
from fedxai.tensors import encode_state_dict, tensor_to_proto
from fedxai.v1 import explainer_pb2 as pb
from fedxai.v1 import explainer_pb2_grpc as pb_grpc
from services.explainer.cam import normalise, target_layers, upsample
from services.explainer.cam.grad_cam import GradCAM
from services.explainer.memory import keep_freed_memory
from services.explainer.server import create_server

ARCH = architectures()["mnist_cnn"]
REPO_ROOT = Path(__file__).resolve().parents[1]
BATCHES = {1: (5, 30), 64: (5, 25), 256: (2, 8)}  # batch: (warm-up reps, timed reps) at --reps 1
MESSAGE_LIMIT = 64 << 20
FLOOR = "floor"


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def load_samples(mnist_dir: Path, count: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(count, 1, 28, 28) uint8 pixels and int64 labels: MNIST test set, else random."""
    if "test" in available_splits(mnist_dir):
        images, labels = load_split(mnist_dir, "test")
        return images[:count, None].copy(), labels[:count], f"MNIST test set ({mnist_dir})"
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(count, 1, 28, 28), dtype=np.uint8)
    return pixels, np.arange(count, dtype=np.int64) % ARCH.num_classes, "random pixels (no MNIST found)"


def normalised(pixels: np.ndarray) -> torch.Tensor:
    """As the server prepares a uint8 tensor: scaled to [0, 1], then standardised."""
    x = torch.from_numpy(pixels.astype(np.float32) / 255.0)
    return (x - ARCH.mean[0]) / ARCH.std[0]


def time_ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


class Timings:
    """Milliseconds per contender and repetition; all contenders ran within each repetition."""

    def __init__(self, times: dict[str, list[float]]) -> None:
        self.times = times

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def ratio(self, name: str, base: str) -> float:
        """Median over repetitions of name / base: each pair ran back to back, under the same load."""
        return statistics.median(a / b for a, b in zip(self.times[name], self.times[base], strict=True))


def interleaved(contenders: dict[str, Callable[[], object]], warmup: int, reps: int) -> Timings:
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(warmup + reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            elapsed = time_ms(contenders[name])
            if rep >= warmup:
                times[name].append(elapsed)
    return Timings(times)


def floor_step(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> None:
    """The least any gradient-based explanation needs: one forward, one training-like backward."""
    model.zero_grad(set_to_none=True)
    model(x).gather(1, labels[:, None]).sum().backward()


def ours_step(cam: GradCAM, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Maps as the server draws them: at the input size, each scaled into [0, 1]."""
    return normalise(upsample(cam.compute(x, labels).maps, ARCH.input_shape[1:]))


def third_party(model: torch.nn.Module) -> tuple[dict[str, Callable], list[str]]:
    """Step functions (x, labels) -> maps for the libraries that import, and notes on those that don't."""
    steps: dict[str, Callable] = {}
    notes = []
    try:
        from pytorch_grad_cam import GradCAM as PgcGradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as error:
        notes.append(f"pytorch-grad-cam skipped: {error}")
    else:
        pgc_model = copy.deepcopy(model)
        pgc = PgcGradCAM(model=pgc_model, target_layers=[pgc_model.relu2])
        steps["pytorch-grad-cam"] = lambda x, labels: pgc(
            input_tensor=x, targets=[ClassifierOutputTarget(int(label)) for label in labels]
        )
    try:
        from captum.attr import LayerAttribution, LayerGradCam
    except ImportError as error:
        notes.append(f"captum skipped: {error}")
    else:
        captum_model = copy.deepcopy(model)
        captum_cam = LayerGradCam(captum_model, captum_model.relu2)
        steps["captum"] = lambda x, labels: LayerAttribution.interpolate(
            captum_cam.attribute(x, target=labels, relu_attributions=True),
            ARCH.input_shape[1:],
            "bilinear",
        )
    return steps, notes


def bench_compute(model: torch.nn.Module, pixels: np.ndarray, labels: np.ndarray, scale: float) -> None:
    cam = GradCAM(copy.deepcopy(model), target_layers(ARCH))
    others, notes = third_party(model)
    for note in notes:
        out(note)
    headers = ["ours", *others]
    widths = [max(len(name) + len(" ms (ratio)"), 22) for name in headers]
    cells = [f"{name + ' ms (ratio)':>{width}}" for name, width in zip(headers, widths, strict=True)]
    out(" | ".join([f"{'batch':>5}", f"{'floor ms':>9}", *cells]))
    for batch, (warmup, reps) in BATCHES.items():
        x, y = normalised(pixels[:batch]), torch.from_numpy(labels[:batch])
        steps = {
            FLOOR: lambda x=x, y=y: floor_step(model, x, y),
            "ours": lambda x=x, y=y: ours_step(cam, x, y),
            **{name: lambda fn=fn, x=x, y=y: fn(x, y) for name, fn in others.items()},
        }
        timings = interleaved(steps, warmup, max(3, round(reps * scale)))
        cells = [
            f"{f'{timings.median(name):.2f} ({timings.ratio(name, FLOOR):.2f}x)':>{width}}"
            for name, width in zip(headers, widths, strict=True)
        ]
        out(" | ".join([f"{batch:>5}", f"{timings.median(FLOOR):>9.2f}", *cells]))
    out("target: ours <= 1.2x floor at batch 64")


def bench_rpc(model: torch.nn.Module, pixels: np.ndarray, labels: np.ndarray, scale: float) -> None:
    """The Explain RPC beside the compute alone: naming a stored checkpoint by its
    hash (as trainers do: the aggregator stores the model they evaluate), the same
    without the faithfulness scores and sanity check (``SCORING_SKIP``), and with
    the weights inline (as anyone may). Every call explains a new round, as
    trainers' calls do, so each stores ten new images and a new manifest."""
    batch = 64
    classes = sorted(set(labels[:batch].tolist()))
    out(f"request: {batch} samples, {len(classes)} classes present ({classes}), stored in a local folder")
    weights = encode_state_dict(model.state_dict(), {"architecture": ARCH.name})
    checkpoint = "bench/round-000/global_model.safetensors"
    requests = {
        "rpc, checkpoint by hash": pb.ExplainRequest(
            model_ref=pb.ModelRef(key=checkpoint, sha256=hashlib.sha256(weights).hexdigest())
        ),
        "rpc, by hash, no scores": pb.ExplainRequest(
            model_ref=pb.ModelRef(key=checkpoint, sha256=hashlib.sha256(weights).hexdigest()), scoring=pb.SCORING_SKIP
        ),
        "rpc, inline weights": pb.ExplainRequest(
            inline_model=pb.InlineModel(architecture=ARCH.name, safetensors=weights)
        ),
    }
    for request in requests.values():
        request.MergeFrom(
            pb.ExplainRequest(
                task_id="bench",
                client_id="client-0",
                tensor=tensor_to_proto(pixels[:batch]),
                labels=labels[:batch].tolist(),
                store=True,
            )
        )
    rounds = itertools.count(1)

    def explain(stub: pb_grpc.ExplainerStub, request: pb.ExplainRequest) -> pb.ExplainResponse:
        request.round = next(rounds)
        return stub.Explain(request, timeout=60)

    cam = GradCAM(copy.deepcopy(model), target_layers(ARCH))
    x, y = normalised(pixels[:batch]), torch.from_numpy(labels[:batch])
    with tempfile.TemporaryDirectory() as tmpdir:
        store = LocalStore(Path(tmpdir))
        store.put(checkpoint, weights, "application/octet-stream")
        running = create_server(ExplainerSettings(address="127.0.0.1:0"), store)
        options = [
            ("grpc.max_send_message_length", MESSAGE_LIMIT),
            ("grpc.max_receive_message_length", MESSAGE_LIMIT),
        ]
        try:
            with grpc.insecure_channel(f"127.0.0.1:{running.port}", options=options) as channel:
                stub = pb_grpc.ExplainerStub(channel)
                for name, request in requests.items():
                    response = explain(stub, request)
                    out(f"{name}: {len(response.images)} images stored, {len(response.samples)} samples described")
                contenders: dict[str, Callable[[], object]] = {
                    name: lambda request=request: explain(stub, request) for name, request in requests.items()
                }
                # On the thread the explainer computes on: a thread running torch
                # has OpenMP threads of its own, which spin on the cores for
                # milliseconds after each call and would slow whichever runs next.
                lane = running.service.compute_lane
                contenders["compute"] = lambda: lane.submit(ours_step, cam, x, y).result()
                contenders[FLOOR] = lambda: lane.submit(floor_step, model, x, y).result()
                timings = interleaved(contenders, warmup=3, reps=max(3, round(30 * scale)))
        finally:
            running.stop(grace=1.0)
    out(f"compute alone {timings.median('compute'):.2f} ms, forward+backward floor {timings.median(FLOOR):.2f} ms")
    for name in requests:
        out(
            f"{name:<24} {timings.median(name):6.2f} ms  {timings.ratio(name, 'compute'):.2f}x compute alone, "
            f"{timings.ratio(name, FLOOR):.2f}x floor"
        )
    scored, unscored = "rpc, checkpoint by hash", "rpc, by hash, no scores"
    out(f"what scoring costs: {timings.ratio(scored, unscored):.2f}x the RPC without scores")
    out("target: RPC <= 1.5x compute alone (without scores)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=float, default=1.0, help="scale the number of timed repetitions")
    parser.add_argument("--mnist-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "mnist")
    args = parser.parse_args()

    allocator = "freed memory kept, as in the explainer" if keep_freed_memory() else "allocator defaults"
    torch.manual_seed(0)
    model = ARCH.factory().eval()  # eval for every contender: dropout off, as when explaining
    pixels, labels, source = load_samples(args.mnist_dir, max(BATCHES))
    threads, cpus, load = torch.get_num_threads(), os.cpu_count(), os.getloadavg()[0]
    out(f"torch {torch.__version__}, {threads} threads, {cpus} CPUs, load {load:.2f}; {allocator}; inputs: {source}")
    # torch's threads wait on each other at every op: a busy core can slow small batches many-fold.
    out("times are medians of interleaved repetitions; ratios are medians of the ratios within each repetition")
    out()
    bench_compute(model, pixels, labels, args.reps)
    out()
    bench_rpc(model, pixels, labels, args.reps)


if __name__ == "__main__":
    main()
