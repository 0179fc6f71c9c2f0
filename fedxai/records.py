"""The documents the services leave in the store, typed once for the writers and
every reader.

- A run's ``metrics.json`` (``RunRecord``), written by the aggregator after
  every round; read by ``fedxai run``, ``fedxai status``, the explainer's
  ``ListExplanations`` and the monitoring page, which hands the page's script
  each run's ``state`` as ``run_state`` decides it.
- A folder's ``explanations.json`` (``Manifest``), written by the explainer;
  read by ``ListExplanations`` and the monitoring page.

Fields marked ``NotRequired`` are absent from documents written before they
existed, or where the run did not measure them; readers take them with ``.get``.
"""

from __future__ import annotations

import statistics
from datetime import datetime
from typing import Any, Literal, NotRequired, TypedDict

RunStatus = Literal["running", "finished", "failed"]
# Whose model a manifest's folder explains (fedxai.storage.layout.Folder).
Subject = Literal["client", "global", "update"]
# What the monitoring page and `fedxai status` show: a run still "running" whose
# record has not changed for a long while is "stale" (its aggregator is gone).
RunState = Literal["running", "finished", "failed", "stale"]
STALE_AFTER_SECONDS = 600.0
STALE_AFTER_ROUNDS = 3  # ... or three times its slowest round so far, if longer


class GlobalScores(TypedDict):
    loss: float
    accuracy: float
    examples: int


class ClientRecord(TypedDict, total=False):
    train: dict[str, float]  # train-loss, train-accuracy, num-examples, train-seconds
    evaluate: dict[str, float]  # eval-loss, eval-accuracy, xai-* counts, eval-seconds, xai-seconds
    # Flower's error for a message the client did not answer ("train" or "evaluate"):
    # its ClientApp crashed or raised, or its SuperNode went offline.
    failed: dict[str, str]


# "global" is a keyword: the functional form names the field as the document does.
RoundRecord = TypedDict(
    "RoundRecord",
    {
        "round": int,  # 0: the initial model, before training
        "global": GlobalScores,  # the global model on the aggregator's held-out split
        "checkpoint": NotRequired[str],
        "checkpoint_sha256": NotRequired[str],
        "seconds": NotRequired[float],  # the round's wall time
        # Of it, the aggregator's own work: the strategy's steps (and, in the first round,
        # Flower's wait for enough nodes to connect).
        "server_seconds": NotRequired[float],
        # The global model's test, which runs beside the next round rather than in this one.
        "global_test_seconds": NotRequired[float],
        "train": NotRequired[dict[str, float]],
        # The clients' evaluation of this round's global model, weighted by their examples.
        # It comes with the next round's training messages (``evaluated_in_round``) unless
        # this is the last round or not every node trains and evaluates every round.
        "evaluate": NotRequired[dict[str, float]],
        "evaluated_in_round": NotRequired[int],
        "xai": NotRequired[dict[str, int]],  # summed over the trainers: sent, stored, queued, ...
        # How many clients were asked to explain, of how many evaluated (fraction-explain,
        # max-explained-clients), and how many updates the aggregator explained of how many.
        "explaining": NotRequired[dict[str, float]],
        "clients": NotRequired[dict[str, ClientRecord]],
        # The aggregator's comparisons of the probe-set maps (services.aggregator.comparison).
        "comparison": NotRequired[dict[str, Any]],
        "excluded": NotRequired[list[str]],
        "exclusion": NotRequired[str],
    },
)


class RunRecord(TypedDict):
    task: str
    run_id: str
    status: RunStatus
    reason: str | None  # why a failed run failed
    num_rounds: int
    started_at: str  # RFC 3339, UTC
    updated_at: str
    finished_at: str | None
    config: dict[str, Any]  # the task settings (Flower's run config)
    # What a person reads for each label, in label order (runs before names existed have none).
    class_names: NotRequired[list[str]]
    rounds: list[RoundRecord]
    probe: NotRequired[dict[str, Any]]  # how the probe set was made and compared
    # Each time the run was continued (`fedxai run --resume`): after which round, and when.
    resumed: NotRequired[list[dict[str, Any]]]


class ManifestImage(TypedDict):
    key: str
    label: int
    class_name: NotRequired[str]  # what a person reads for the label ("Trouser")
    sample_index: int
    sample_sha256: NotRequired[str]  # of the input's pixels
    predicted_class: int
    predicted_class_name: NotRequired[str]
    probability: float
    explained_class: int
    method: str
    target_layer: str
    architecture: str
    model_sha256: str
    cam_max: float
    cam_mean: float
    degenerate: bool
    weak: bool
    created_at: str
    faithfulness: NotRequired[list[dict[str, Any]]]  # method, morf_auc, lerf_auc, gap, degenerate
    sanity_spearman: NotRequired[float]
    sanity_passed: NotRequired[bool]
    selection: NotRequired[dict[str, Any]]  # why CAM_METHOD_AUTO drew this method


class Manifest(TypedDict):
    task_id: str
    run_id: str  # empty: an ad-hoc call
    round: int
    subject: Subject
    client_id: str
    images: list[ManifestImage]
    replacement: NotRequired[str | None]  # how deletion filled removed pixels
    sanity: NotRequired[dict[str, Any]]  # the model-randomisation check of every method


def _parsed(timestamp: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(timestamp))
    except ValueError:
        return None


def run_state(document: dict[str, Any], now: datetime) -> RunState:
    """The run's status, with a running run that has gone quiet for longer than
    ``STALE_AFTER_SECONDS`` (or ``STALE_AFTER_ROUNDS`` of its slowest round) called stale."""
    status = document.get("status")
    if status in ("finished", "failed"):
        return status  # type: ignore[return-value]
    updated = _parsed(document.get("updated_at"))
    slowest = max((float(r.get("seconds", 0)) for r in document.get("rounds", []) if isinstance(r, dict)), default=0)
    if updated is None or (now - updated).total_seconds() > max(STALE_AFTER_SECONDS, STALE_AFTER_ROUNDS * slowest):
        return "stale"
    return "running"


def seconds_per_round(document: dict[str, Any]) -> float | None:
    """The median round's wall time, or None before the first round."""
    seconds = [float(r["seconds"]) for r in document.get("rounds", []) if isinstance(r, dict) and "seconds" in r]
    return statistics.median(seconds) if seconds else None


def duration_seconds(document: dict[str, Any], state: RunState, now: datetime) -> float | None:
    """From the start to the end, to the last update of a run that stopped
    without ending, or to ``now`` for one going on (``state``: its ``run_state``)."""
    started = _parsed(document.get("started_at"))
    end = now if state == "running" else _parsed(document.get("finished_at") or document.get("updated_at"))
    return (end - started).total_seconds() if started and end else None


def format_duration(seconds: float | None) -> str:
    """12.5 s, 3 min 20 s, 2 h 5 min."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes = int(seconds // 60)
    return f"{minutes} min {round(seconds % 60)} s" if minutes < 120 else f"{minutes // 60} h {minutes % 60} min"
