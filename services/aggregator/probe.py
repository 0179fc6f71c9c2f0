"""The aggregator's own explanations: the global model and every client's update,
explained by the Explainer on the probe set and compared (see ``comparison``).

Requests go out on one background lane, so they overlap with the rest of the
round, through the same outbox as the trainers' (``fedxai.delivery``), written to it
before they wait for the lane: while the Explainer is away, or after the aggregator
died, they wait on disk and go first once it is back (or the run goes on), and their
comparisons are recorded then. No raw client data moves: only weights, and
public probe images the aggregator holds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from fedxai.data import Dataset
from fedxai.delivery import Outbox, deliver
from fedxai.models import Architecture
from fedxai.task import CAM_METHODS, TaskConfig
from fedxai.tensors import encode_state_dict, tensor_to_proto
from fedxai.v1 import explainer_pb2 as pb
from services.aggregator.comparison import compare_round

log = logging.getLogger(__name__)


def probe_request(
    task: TaskConfig,
    arch: Architecture,
    probe: Dataset,
    round_number: int,
    subject: pb.Subject,
    client_id: str,
    state_dict: Mapping[str, torch.Tensor],
    class_names: tuple[str, ...] = (),
) -> pb.ExplainRequest:
    return pb.ExplainRequest(
        task_id=task.task_name,
        run_id=task.run_id,
        round=round_number,
        client_id=client_id,
        subject=subject,
        inline_model=pb.InlineModel(
            architecture=arch.name, safetensors=encode_state_dict(dict(state_dict), {"architecture": arch.name})
        ),
        tensor=tensor_to_proto(np.ascontiguousarray(probe.images)),
        labels=probe.labels.tolist(),
        class_names=class_names,
        normalization=pb.Normalization(mean=arch.mean, std=arch.std),
        method=pb.CamMethod.Value(CAM_METHODS[task.probe_cam_method]),
        store=True,
        # The global model's pictures get the faithfulness and sanity figures; an
        # update's are compared, and scoring each would cost the round.
        scoring=pb.SCORING_AFTER_REPLY if subject == pb.SUBJECT_GLOBAL_MODEL else pb.SCORING_SKIP,
    )


class RoundMaps:
    """The maps received for the last few rounds, and the comparisons made from them."""

    KEPT_ROUNDS = 3  # a round's maps, and the previous round's global ones for its drift

    def __init__(self, labels: np.ndarray, threshold: float, on_compared: Callable[[int, dict], None]) -> None:
        self.labels = labels
        self.threshold = threshold
        self.on_compared = on_compared
        self._global: dict[int, np.ndarray] = {}
        self._updates: dict[int, dict[str, np.ndarray]] = {}
        self._lock = threading.Lock()

    def add(self, request: pb.ExplainRequest, response: pb.ExplainResponse) -> None:
        maps = np.array([sample.cam for sample in response.samples], dtype=np.float32)
        round_number = request.round
        with self._lock:
            if request.subject == pb.SUBJECT_GLOBAL_MODEL:
                self._global[round_number] = maps
            else:
                self._updates.setdefault(round_number, {})[request.client_id] = maps
            # Replies come round after round (the outbox sends the oldest first).
            for kept in (self._global, self._updates):
                for old in [r for r in kept if r <= round_number - self.KEPT_ROUNDS]:
                    del kept[old]
            comparison = compare_round(
                self.labels,
                self._updates.get(round_number, {}),
                self._global.get(round_number),
                self._global.get(round_number - 1),
                self.threshold,
            )
        comparison["method"] = response.method
        comparison["target_layer"] = response.target_layer
        self.on_compared(round_number, comparison)

    def flagged(self, round_number: int, clients: list[str]) -> list[str] | None:
        """The flagged clients among ``clients``, or None unless all their maps are in."""
        with self._lock:
            received = self._updates.get(round_number, {})
            if not set(clients) <= set(received):
                return None
            comparison = compare_round(self.labels, received, None, None, self.threshold)
        return list(comparison["flagged"])


class ProbeExplainer:
    """Sends the probe requests of a run, one at a time, and hands the replies to ``maps``."""

    def __init__(
        self,
        task: TaskConfig,
        arch: Architecture,
        probe: Dataset,
        state_dir: Path,
        maps: RoundMaps,
        token: str = "",
        class_names: tuple[str, ...] = (),  # empty: the architecture's
    ) -> None:
        self.task = task
        self.class_names = class_names
        self.token = token
        self.arch = arch
        self.probe = probe
        self.maps = maps
        self.outbox = Outbox(state_dir / "outbox")
        self._lane = ThreadPoolExecutor(max_workers=1, thread_name_prefix="probe-explainer")
        # Requests written to the outbox that wait for their turn on the lane: the lane's
        # earlier calls leave them be, so that each goes out once, as itself.
        self._staged: set[Path] = set()
        self._staging = threading.Lock()

    def explain_updates(self, round_number: int, updates: Mapping[str, Mapping[str, torch.Tensor]]) -> list[Future]:
        return [
            self._submit(self._request(round_number, pb.SUBJECT_CLIENT_UPDATE, client, update))
            for client, update in updates.items()
        ]

    def explain_global(
        self, round_number: int, state_dict: Mapping[str, torch.Tensor], checkpoint: tuple[str, str]
    ) -> Future:
        request = self._request(round_number, pb.SUBJECT_GLOBAL_MODEL, "", state_dict)
        key, sha256 = checkpoint
        return self._submit(request, pb.ModelRef(key=key, architecture=self.arch.name, sha256=sha256))

    def _request(
        self, round_number: int, subject: pb.Subject, client_id: str, state_dict: Mapping[str, torch.Tensor]
    ) -> pb.ExplainRequest:
        return probe_request(
            self.task, self.arch, self.probe, round_number, subject, client_id, state_dict, self.class_names
        )

    def close(self) -> int:
        """Delivers what is still queued, if the Explainer answers; returns how many
        requests stay in the outbox."""
        self._submit(None).result()
        self._lane.shutdown()
        return len(self.outbox.pending())

    def _submit(self, request: pb.ExplainRequest | None, checkpoint: pb.ModelRef | None = None) -> Future:
        staged = None
        if request is not None:
            # On disk before it waits for the lane: what an aggregator dies holding, the next one sends.
            staged = self.outbox.add(request)
            with self._staging:
                self._staged.add(staged)
        return self._lane.submit(self._deliver, request, staged, checkpoint)

    def _deliver(self, request: pb.ExplainRequest | None, staged: Path | None, checkpoint: pb.ModelRef | None) -> None:
        task = self.task
        with self._staging:
            waiting = self._staged - {staged}
            self._staged = waiting
        delivery = deliver(
            task.explainer_address,
            task.explainer_timeout,
            self.outbox,
            request,
            task.explainer_ca_file,
            checkpoint,
            on_reply=self.maps.add,
            token=self.token,
            staged=staged,
            skip=waiting,
        )
        if delivery.queued:
            log.warning("%d probe explanation requests wait in %s", delivery.queued, self.outbox.directory)
