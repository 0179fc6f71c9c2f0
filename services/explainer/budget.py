"""The memory that Explain calls may hold at once.

A call holds its request, its parsed samples and, through compute, drawing and
storing, the activations and gradients of every sample: measured on ``mnist_cnn``,
about 1 MB a sample, so 1,024 samples add 1.2 GB to the process. Each call reserves
its estimate before it is parsed; a call that does not fit waits for others to
finish (within its deadline and ``MAX_WAIT``), and one larger than the whole budget
is refused at once.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

from fedxai.errors import ResourceExhausted
from fedxai.models import Architecture, architectures
from fedxai.settings import MIB
from fedxai.v1 import explainer_pb2 as pb

MAX_WAIT = 30.0  # seconds a call waits for room before it is refused
FLOAT_BYTES = 4
# Every layer's output is held twice (forward activation, backward gradient).
HELD_PER_OUTPUT = 2


@functools.cache
def bytes_per_sample(arch: Architecture) -> int:
    """What compute holds per sample: every layer's output, forward and backward,
    counted on one sample of zeros."""
    outputs = 0

    def count(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal outputs
        if isinstance(output, torch.Tensor):
            outputs += output.numel()

    model = arch.factory()
    leaves = [module for module in model.modules() if not list(module.children())]
    hooks = [module.register_forward_hook(count) for module in leaves]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *arch.input_shape))
    finally:
        for hook in hooks:
            hook.remove()
    inputs = int(torch.Size(arch.input_shape).numel())
    return (outputs + inputs) * FLOAT_BYTES * HELD_PER_OUTPUT


def estimated_bytes(request: pb.ExplainRequest, max_batch_size: int) -> int:
    """The request itself (and its parsed copy) plus compute for its samples, with
    the most costly architecture for one the request does not name correctly. A
    batch over ``max_batch_size`` counts as that: parsing refuses it, naming the field."""
    name = request.inline_model.architecture or request.model_ref.architecture
    arch = architectures().get(name)
    per_sample = bytes_per_sample(arch) if arch else max(bytes_per_sample(a) for a in architectures().values())
    if request.HasField("tensor"):
        samples = request.tensor.shape[0] if request.tensor.shape else 0
    else:
        samples = len(request.images.images)
    return 2 * request.ByteSize() + min(max(samples, 0), max_batch_size) * per_sample


class MemoryBudget:
    def __init__(self, limit_bytes: int, on_idle: Callable[[], None] = lambda: None) -> None:
        self.limit = limit_bytes
        self._on_idle = on_idle  # called when the last call in flight has finished
        self._used = 0
        self._room = threading.Condition()

    @property
    def used(self) -> int:
        with self._room:
            return self._used

    @contextlib.contextmanager
    def reserve(self, nbytes: int, wait_seconds: float) -> Iterator[None]:
        if nbytes > self.limit:
            raise ResourceExhausted(
                "explainer",
                f"this call needs about {nbytes / MIB:.0f} MiB, over the memory budget of "
                f"{self.limit / MIB:.0f} MiB; send fewer samples per call",
            )
        deadline = time.monotonic() + min(wait_seconds, MAX_WAIT)
        with self._room:
            while self._used + nbytes > self.limit:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ResourceExhausted(
                        "explainer",
                        f"memory budget of {self.limit / MIB:.0f} MiB taken by other calls "
                        f"(this one needs about {nbytes / MIB:.0f} MiB); retry later",
                    )
                self._room.wait(left)
            self._used += nbytes
        try:
            yield
        finally:
            with self._room:
                self._used -= nbytes
                idle = self._used == 0
                self._room.notify_all()
            if idle:
                self._on_idle()
