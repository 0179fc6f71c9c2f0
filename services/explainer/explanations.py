"""The explainer's work, free of gRPC: compute maps, pick and draw one sample per
class, store images and manifests, and read them back for listing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

import cv2
import numpy as np
import torch

from fedxai import __version__
from fedxai.errors import Abandoned, InvalidArgument
from fedxai.models import architectures
from fedxai.records import Manifest, ManifestImage, Subject
from fedxai.storage import ObjectStore, read_document
from fedxai.storage.layout import Folder, metrics_key, round_prefix, run_prefix, validate_id
from fedxai.v1 import explainer_pb2 as pb
from services.explainer import quality
from services.explainer.cam import ALL_METHODS, METHODS, CamResult, normalise, target_layers, upsample
from services.explainer.cam.base import EPS
from services.explainer.cam.grad_cam import GradCAM
from services.explainer.inputs import SUBJECT_VALUES, SUBJECTS, ExplainJob, Scoring, parse_explain_request
from services.explainer.loaded_models import ModelCache
from services.explainer.render import Caption, encode_jpeg, render_explanations
from services.explainer.store_watch import StoreWatch

log = logging.getLogger(__name__)

IMAGE_WORKERS = 8  # pictures drawn, encoded and stored at once, across calls
# A map whose peak is under this share of the median peak of the call's maps
# (same method) is drawn at full scale from a tiny signal: it is marked weak.
WEAK_FRACTION = 0.05
AUTO = "auto"
# Class names longer than this are cut in captions, so the title fits on the picture.
CAPTION_NAME = 18


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int
    max_batch_size: int
    cached_models: int


# Whether the caller still waits for the answer (gRPC's context.is_active).
StillWanted = Callable[[], bool]


def _always() -> bool:
    return True


def _check_wanted(still_wanted: StillWanted, stage: str) -> None:
    if not still_wanted():
        raise Abandoned("", f"the caller cancelled or its deadline passed; stopped {stage}")


def pick_samples_per_class(labels: np.ndarray, predicted: np.ndarray, probability: np.ndarray) -> dict[int, int]:
    """For each class in ``labels``: its most confident correctly classified
    sample, else its first sample."""
    correct = predicted == labels
    # By class, correct ones first, most confident first; the sort is stable, so
    # ties (and a class with no correct sample) keep the first sample.
    order = np.lexsort((np.where(correct, -probability, 0.0), ~correct, labels))
    ordered = labels[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]]
    return dict(zip(ordered[first].tolist(), order[first].tolist(), strict=True))


@dataclass(frozen=True)
class SampleStats:
    """What the reply says of each sample. From here on NumPy and OpenCV, not torch:
    a torch op wakes an OpenMP team, whose threads then spin for milliseconds on
    the cores the pictures are drawn on."""

    predicted: np.ndarray  # (N,) int64
    confidence: np.ndarray  # (N,) float32, softmax probability of the predicted class
    explained: np.ndarray  # (N,) int64, the class each map explains
    methods: list[str]  # (N,) the method of each map
    maps: np.ndarray  # (N, h, w) float32, raw
    peaks: np.ndarray  # (N,) float32
    means: np.ndarray  # (N,) float32
    weak: np.ndarray  # (N,) bool

    @classmethod
    def of(cls, computed: Computed, methods: list[str]) -> SampleStats:
        rows = np.arange(len(methods))
        maps = np.stack([computed.maps[name][row] for row, name in zip(rows, methods, strict=True)])
        peaks = maps.max(axis=(1, 2))
        median_peak = {name: float(np.median(computed.maps[name].max(axis=(1, 2)))) for name in set(methods)}
        threshold = np.array([WEAK_FRACTION * median_peak[name] for name in methods])
        return cls(
            predicted=computed.predicted,
            confidence=computed.confidence,
            explained=computed.result.classes.numpy(),
            methods=methods,
            maps=maps,
            peaks=peaks,
            means=maps.mean(axis=(1, 2)),
            weak=(peaks > EPS) & (peaks < threshold),
        )


def describe_samples(labels: np.ndarray, stats: SampleStats) -> list[pb.SampleExplanation]:
    """Per sample: prediction, confidence, the raw map and its statistics."""
    count, height, width = stats.maps.shape
    columns = zip(
        labels.tolist(),
        stats.predicted.tolist(),
        stats.confidence.tolist(),
        stats.explained.tolist(),
        stats.peaks.tolist(),
        stats.means.tolist(),
        stats.maps.reshape(count, -1).tolist(),
        stats.methods,
        stats.weak.tolist(),
        strict=True,
    )
    return [
        pb.SampleExplanation(
            index=index,
            true_label=label,
            predicted_class=prediction,
            probability=probability,
            explained_class=explained,
            cam_max=peak,
            cam_mean=mean,
            degenerate=peak <= EPS,
            cam_height=height,
            cam_width=width,
            cam=grid,
            method=method,
            weak=weak,
        )
        for index, (label, prediction, probability, explained, peak, mean, grid, method, weak) in enumerate(columns)
    ]


def heat_at_input_size(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Raw (K, h, w) maps as the pictures show them: as ``cam.upsample`` then
    ``cam.normalise`` do in torch (bilinear with half-pixel centres, each map
    scaled by its peak into [0, 1])."""
    resized = np.stack([cv2.resize(grid, (width, height), interpolation=cv2.INTER_LINEAR) for grid in maps])
    return resized / (resized.max(axis=(1, 2), keepdims=True) + EPS)


@dataclass(frozen=True)
class Computed:
    """What a call computes with torch, on the compute lane."""

    layer_name: str
    result: CamResult  # the capture: logits, activations, gradients
    maps: dict[str, np.ndarray]  # raw (N, h, w) maps by method: every method when scored
    predicted: np.ndarray  # (N,)
    confidence: np.ndarray  # (N,)
    picks: dict[int, int]  # class -> the sample drawn for it
    faithfulness: dict[str, quality.Deletion] | None  # by method, rows in the order of picks
    sanity: quality.Sanity | None

    @property
    def drawn(self) -> list[int]:
        return list(self.picks.values())


def compute(job: ExplainJob) -> Computed:
    """One forward and backward pass: the maps of the request's method (of Grad-CAM
    for CAM_METHOD_AUTO, until scored) and the sample drawn for each class."""
    with job.model.borrow() as model:
        cam = (job.method or GradCAM)(model, target_layers(job.model.architecture), job.target_layer)
        result = cam.compute(job.normalised_inputs(), None if job.explain_predicted else job.labels)
    if not (torch.isfinite(result.logits).all() and torch.isfinite(result.maps).all()):
        raise InvalidArgument("model", "its outputs for these samples are not finite (huge weights?)")
    logits = result.logits.numpy()
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = exp / exp.sum(axis=1, keepdims=True)
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities[np.arange(len(predicted)), predicted]
    picks = pick_samples_per_class(job.labels.numpy(), predicted, confidence)
    return Computed(cam.layer_name, result, {cam.name: result.maps.numpy()}, predicted, confidence, picks, None, None)


def add_scores(job: ExplainJob, computed: Computed) -> Computed:
    """Every method's maps from the same activations and gradients, the deletion
    curves of each method's map of each drawn sample, and the sanity check."""
    result, drawn = computed.result, computed.drawn
    layers = target_layers(job.model.architecture)
    with torch.no_grad():
        maps = {method.name: method.cam_image(result.activations, result.gradients) for method in ALL_METHODS}
    classes = result.classes[drawn]
    height, width = job.pixels.shape[2:]
    heats = {name: normalise(upsample(method_maps[drawn], (height, width))) for name, method_maps in maps.items()}
    with job.model.borrow() as model:
        faithfulness = quality.deletion(model, job.pixels[drawn], heats, classes, job.mean, job.std)
        sanity = quality.randomisation_check(
            model,
            layers,
            computed.layer_name,
            job.normalised_inputs()[drawn],
            classes,
            {name: method_maps[drawn] for name, method_maps in maps.items()},
            ALL_METHODS,
        )
    return dataclasses.replace(
        computed,
        maps={name: method_maps.numpy() for name, method_maps in maps.items()},
        faithfulness=faithfulness,
        sanity=sanity,
    )


def compute_and_score(job: ExplainJob, still_wanted: StillWanted = _always) -> Computed:
    # A call can wait a while for the compute lane: by its turn, its caller may be gone.
    _check_wanted(still_wanted, "before computing")
    computed = compute(job)
    if job.scoring != Scoring.NOW:
        return computed
    _check_wanted(still_wanted, "before scoring")
    return add_scores(job, computed)


def methods_per_sample(job: ExplainJob, computed: Computed) -> tuple[list[str], dict[int, dict]]:
    """The method of each sample's map and, for CAM_METHOD_AUTO, why each drawn
    sample got its method (by drawn sample index)."""
    count = len(job.labels)
    if job.method is not None:
        return [job.method.name] * count, {}
    assert computed.faithfulness is not None and computed.sanity is not None
    choices = quality.most_faithful(computed.faithfulness, computed.sanity)
    chosen = [choice["method"] for choice in choices]
    # Samples that are not drawn have no scores: they take the drawn samples' most frequent choice.
    usual = max(ALL_METHODS, key=lambda method: chosen.count(method.name)).name
    methods = [usual] * count
    for index, name in zip(computed.drawn, chosen, strict=True):
        methods[index] = name
    return methods, dict(zip(computed.drawn, choices, strict=True))


def class_image(
    sample: pb.SampleExplanation, row: int, faithfulness: dict[str, quality.Deletion] | None
) -> pb.ClassImage:
    """The reply entry of a drawn sample; ``row`` is its row in the deletion scores."""
    image = pb.ClassImage(
        label=sample.true_label,
        sample_index=sample.index,
        predicted_class=sample.predicted_class,
        probability=sample.probability,
        method=sample.method,
        cam_max=sample.cam_max,
        degenerate=sample.degenerate,
        weak=sample.weak,
    )
    for name, scores in (faithfulness or {}).items():
        image.faithfulness.add(
            method=name,
            morf_auc=float(scores.morf_auc[row]),
            lerf_auc=float(scores.lerf_auc[row]),
            gap=float(scores.gap[row]),
            degenerate=bool(scores.degenerate[row]),
        )
    return image


def sanity_message(sanity: quality.Sanity) -> pb.SanityCheck:
    message = pb.SanityCheck(
        randomised_layers=list(sanity.randomised_layers),
        threshold=quality.SANITY_THRESHOLD,
        samples=sanity.samples,
    )
    for method in ALL_METHODS:
        message.methods.add(
            method=method.name,
            spearman=sanity.spearman[method.name].mean(axis=1).tolist(),
            passed=sanity.passed(method.name),
        )
    return message


@dataclass(frozen=True)
class DrawingContext:
    """What a call's pictures and manifest entries say besides each image's own figures."""

    job: ExplainJob
    layer_name: str
    samples: Sequence[pb.SampleExplanation]
    sanity: pb.SanityCheck | None
    selections: dict[int, dict]  # by sample index: why CAM_METHOD_AUTO chose its method

    def method_sanity(self, method: str) -> pb.MethodSanity | None:
        if self.sanity is None:
            return None
        return next(entry for entry in self.sanity.methods if entry.method == method)

    def class_name(self, label: int) -> str:
        return self.job.class_names[label]

    def caption(self, image: pb.ClassImage) -> Caption:
        auto = " (auto)" if image.sample_index in self.selections else ""
        title = (
            f"{self._named(image.label)}  pred {self._named(image.predicted_class, '')} ({image.probability:.1%})  "
            f"{image.method}{auto} @ {self.layer_name}"
        )
        if image.degenerate:
            return Caption(title, "NO EVIDENCE: the map is all zero", warning=True)
        detail = f"peak {image.cam_max:.3g}"
        warning = image.weak
        if image.weak:
            detail = f"WEAK: peak {image.cam_max:.2g}, under {WEAK_FRACTION:.0%} of the median"
        gap = next((score.gap for score in image.faithfulness if score.method == image.method), None)
        if gap is not None:
            detail += f"  deletion gap {gap:+.2f}"
            if gap <= 0:  # the map ranks pixels no better than chance: misleading
                detail += " (no better than random)"
                warning = True
        sanity = self.method_sanity(image.method)
        if sanity is not None:
            detail += "  sanity ok" if sanity.passed else f"  FAILS SANITY (rho {sanity.spearman[-1]:.2f})"
            warning = warning or not sanity.passed
        return Caption(title, detail, warning)

    def _named(self, label: int, prefix: str = "class ") -> str:
        """A label as a caption shows it: "class 3" for digits, else its name, cut to fit."""
        name = self.class_name(label)
        if name == str(label):
            return f"{prefix}{label}"
        return name if len(name) <= CAPTION_NAME else name[: CAPTION_NAME - 2] + ".."

    def manifest_entry(self, image: pb.ClassImage) -> ManifestImage:
        job = self.job
        sample = self.samples[image.sample_index]
        entry: ManifestImage = {
            "key": image.key,
            "label": image.label,
            "class_name": self.class_name(image.label),
            "sample_index": image.sample_index,
            # Which input it is: the page tells when a class's sample changes between rounds.
            "sample_sha256": hashlib.sha256(job.pixels[image.sample_index].numpy().tobytes()).hexdigest(),
            "predicted_class": image.predicted_class,
            "predicted_class_name": self.class_name(image.predicted_class),
            "probability": round(image.probability, 6),
            "explained_class": sample.explained_class,
            "method": image.method,
            "target_layer": self.layer_name,
            "architecture": job.model.architecture.name,
            "model_sha256": job.model.sha256,
            "cam_max": image.cam_max,
            "cam_mean": sample.cam_mean,
            "degenerate": image.degenerate,
            "weak": image.weak,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if image.faithfulness:
            entry["faithfulness"] = [
                {
                    "method": score.method,
                    "morf_auc": round(score.morf_auc, 4),
                    "lerf_auc": round(score.lerf_auc, 4),
                    "gap": round(score.gap, 4),
                    "degenerate": score.degenerate,
                }
                for score in image.faithfulness
            ]
        sanity = self.method_sanity(image.method)
        if sanity is not None:
            entry["sanity_spearman"] = round(sanity.spearman[-1], 4)
            entry["sanity_passed"] = sanity.passed
        if image.sample_index in self.selections:
            entry["selection"] = self.selections[image.sample_index]
        return entry


class _Comparisons:
    """The aggregator's comparisons of probe-set maps (``comparison`` of each round in
    the run's ``metrics.json``), read once per run while listing."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._rounds: dict[tuple[str, str], dict[int, dict]] = {}

    def of(self, folder: Folder, label: int) -> pb.Comparison | None:
        if folder.subject == "client" or not folder.run_id:
            return None
        run = (folder.task_id, folder.run_id)
        if run not in self._rounds:
            document = read_document(self.store, metrics_key(*run)) or {}
            rounds = document.get("rounds", [])
            self._rounds[run] = {
                entry["round"]: entry["comparison"]
                for entry in rounds
                if isinstance(entry, dict) and isinstance(entry.get("comparison"), dict) and "round" in entry
            }
        compared = self._rounds[run].get(folder.round)
        if compared is None:
            return None
        figures = (
            compared.get("global", {})
            if folder.subject == "global"
            else compared.get("clients", {}).get(folder.client_id, {})
        )
        if not isinstance(figures, dict):
            return None
        message = pb.Comparison()
        for field in ("distance_to_global", "distance_to_clients", "z_score", "drift"):
            value = (figures.get(field) or {}).get(str(label))
            if isinstance(value, int | float):
                setattr(message, field, value)
        message.flagged = label in figures.get("flag_classes", [])
        return message


def _all_or_none(
    futures: list[Future[tuple[pb.ClassImage, ManifestImage | None]]], raise_first: bool = True
) -> list[tuple[pb.ClassImage, ManifestImage | None]]:
    """Every result, or, at the first failure, the tasks not started yet cancelled and
    the running ones waited for, so that nothing is written after the call answers."""
    done, pending = wait(futures, return_when=FIRST_EXCEPTION)
    failed = next((f for f in done if f.cancelled() or f.exception() is not None), None)
    if failed is None:
        return [future.result() for future in futures]
    for future in pending:
        future.cancel()
    wait(pending)
    if raise_first:
        failed.result()  # its error, or CancelledError for a task cancelled before
    return []


def _log_failure(done: Future[None]) -> None:
    error = done.exception()
    if error is not None:
        log.error("scores computed after the reply were not stored", exc_info=error)


class ExplanationService:
    def __init__(
        self,
        store: ObjectStore,
        limits: Limits,
        store_check_seconds: float = 5.0,
        on_store_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.store = store
        self.limits = limits
        self.store_watch = StoreWatch(store, store_check_seconds, on_store_change or (lambda _available: None))
        self.models = ModelCache(limits.cached_models)
        # Calls for the same task, round and client (a resent request, say) must not
        # interleave their read-modify-write of the manifest: one lock per key stripe.
        self._manifest_locks = [threading.Lock() for _ in range(64)]
        # One thread runs every call's torch compute, on all of torch's threads:
        # concurrent computes would only split the same cores, each with its own
        # OpenMP team spinning on them. Calls overlap in everything else.
        self.compute_lane = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
        self._image_workers = ThreadPoolExecutor(max_workers=IMAGE_WORKERS, thread_name_prefix="images")
        # Scores of calls answered before them (SCORING_AFTER_REPLY), one call at a time.
        self._scoring = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoring")
        self._drawing_parts = torch.get_num_threads()
        # Explain calls between their start and their reply, this one included: the log
        # says it, so that a fleet's load and queue can be read off its replicas' logs.
        self._in_progress = 0
        self._in_progress_lock = threading.Lock()

    def start(self) -> None:
        """Starts watching the store (the service works without; it then never fails fast)."""
        self.store_watch.start()

    def close(self) -> None:
        """Waits for the scores still being computed for answered calls."""
        self._scoring.shutdown()
        self.compute_lane.shutdown()
        self._image_workers.shutdown()
        self.store_watch.stop()

    def explain(self, request: pb.ExplainRequest, still_wanted: StillWanted = _always) -> pb.ExplainResponse:
        job = parse_explain_request(request, self.store, self.models, self.limits.max_batch_size)
        if job.store:
            self.store_watch.require_available()
        started = time.monotonic()
        where = job.folder.prefix if job.store else "a call that stores nothing"
        with self._in_progress_lock:
            self._in_progress += 1
            in_progress = self._in_progress
        try:
            log.info("explaining %d samples for %s (%d calls in progress)", len(job.labels), where, in_progress)
            computed = self.compute_lane.submit(compute_and_score, job, still_wanted).result()
            # Stored only while the caller waits: one that gave up sends it again.
            _check_wanted(still_wanted, "before storing")
            response = self._draw_and_keep(job, computed)
        finally:
            with self._in_progress_lock:
                self._in_progress -= 1
        if job.scoring == Scoring.AFTER_REPLY:
            self._scoring.submit(self._score_stored, job, computed).add_done_callback(_log_failure)
        log.info("explained %s: %d pictures in %.2f s", where, len(response.images), time.monotonic() - started)
        return response

    def _score_stored(self, job: ExplainJob, computed: Computed) -> None:
        """Scores a call that has been answered, then draws and stores its pictures and
        manifest again with the scores; on failure the unscored ones stay."""
        scored = self.compute_lane.submit(add_scores, job, computed).result()
        self._draw_and_keep(job, scored)

    def _draw_and_keep(self, job: ExplainJob, computed: Computed) -> pb.ExplainResponse:
        """The reply, with the pictures drawn and, when asked, stored with the manifest."""
        methods, selections = methods_per_sample(job, computed)
        stats = SampleStats.of(computed, methods)
        response = pb.ExplainResponse(
            method=AUTO if job.method is None else job.method.name,
            target_layer=computed.layer_name,
            model_sha256=job.model.sha256,
        )
        response.samples.extend(describe_samples(job.labels.numpy(), stats))
        if computed.sanity is not None:
            response.sanity.CopyFrom(sanity_message(computed.sanity))
            response.replacement = quality.REPLACEMENT
        indices = computed.drawn
        drawn = [class_image(response.samples[index], row, computed.faithfulness) for row, index in enumerate(indices)]
        # Only the drawn samples need maps at the input size.
        heat = heat_at_input_size(stats.maps[indices], job.pixels.shape[2], job.pixels.shape[3])
        pixels = job.pixels.numpy()[indices]
        sanity = response.sanity if computed.sanity else None
        context = DrawingContext(job, computed.layer_name, response.samples, sanity, selections)
        with self._manifest_lock(job):
            previous = (read_document(self.store, job.folder.manifest_key) or {}) if job.store else {}
            # Drawing and encoding release the GIL: the classes are split across the
            # cores torch computes on.
            parts = min(len(drawn), self._drawing_parts)
            drawings = [
                self._image_workers.submit(
                    self._draw, context, drawn[part::parts], pixels[part::parts], heat[part::parts]
                )
                for part in range(parts)
            ]
            kept: list[Future[tuple[pb.ClassImage, ManifestImage | None]]] = []
            try:
                for drawing in as_completed(drawings):
                    # One task a picture: S3 uploads wait on the network, not on a core.
                    kept += [self._image_workers.submit(self._keep, context, *pair) for pair in drawing.result()]
                outcomes = sorted(_all_or_none(kept), key=lambda outcome: outcome[0].label)
                if job.store:
                    entries = [entry for _, entry in outcomes if entry]
                    response.manifest_key = self._write_manifest(job, previous, entries, context)
            except BaseException:
                # Nothing half-stored: the pictures this call wrote go, unless the
                # manifest already there lists them (a resent call redraws those).
                wait(drawings)
                _all_or_none(kept, raise_first=False)
                if job.store:
                    listed = {entry.get("key") for entry in previous.get("images", []) if isinstance(entry, dict)}
                    written = {job.folder.class_image_key(image.label) for image in drawn}
                    self.store_watch.remove(written - listed)
                raise
        response.images.extend(image for image, _ in outcomes)
        return response

    @staticmethod
    def _draw(
        context: DrawingContext, images: list[pb.ClassImage], pixels: np.ndarray, heat: np.ndarray
    ) -> list[tuple[pb.ClassImage, bytes]]:
        """Some classes' pictures, JPEG-encoded."""
        captions = [context.caption(image) for image in images]
        blank = np.array([image.degenerate for image in images])
        pictures = render_explanations(pixels, heat, captions, blank)
        return [(image, encode_jpeg(picture)) for image, picture in zip(images, pictures, strict=True)]

    def _keep(
        self, context: DrawingContext, image: pb.ClassImage, jpeg: bytes
    ) -> tuple[pb.ClassImage, ManifestImage | None]:
        """Stores one class's picture (returning its manifest entry), or attaches it to the reply."""
        job = context.job
        if not job.store:
            image.jpeg = jpeg
            return image, None
        image.key = job.folder.class_image_key(image.label)
        entry = context.manifest_entry(image)
        metadata = {name: str(value) for name, value in entry.items() if not isinstance(value, dict | list)}
        del metadata["key"]
        self.store.put(image.key, jpeg, "image/jpeg", metadata=metadata)
        image.url = self.store.url(image.key)
        return image, entry

    def _manifest_lock(self, job: ExplainJob) -> threading.Lock | contextlib.nullcontext[None]:
        if not job.store:
            return contextlib.nullcontext()
        key = job.folder.manifest_key
        return self._manifest_locks[zlib.crc32(key.encode()) % len(self._manifest_locks)]

    def _write_manifest(
        self, job: ExplainJob, previous: dict, entries: list[ManifestImage], context: DrawingContext
    ) -> str:
        """Writes the manifest, keeping entries of the ``previous`` one for classes this
        call did not redraw. The sanity check is the latest call's."""
        key = job.folder.manifest_key
        redrawn = {entry["label"] for entry in entries}
        kept = [e for e in previous.get("images", []) if e.get("label") not in redrawn]
        manifest: Manifest = {
            "task_id": job.folder.task_id,
            "run_id": job.folder.run_id,
            "round": job.folder.round,
            "subject": cast(Subject, job.folder.subject),
            "client_id": job.folder.client_id,
            "images": sorted(kept + entries, key=lambda entry: entry["label"]),
        }
        if context.sanity is not None:
            manifest["replacement"] = quality.REPLACEMENT
            manifest["sanity"] = {
                "model_sha256": job.model.sha256,
                "target_layer": context.layer_name,
                "randomised_layers": list(context.sanity.randomised_layers),
                "threshold": quality.SANITY_THRESHOLD,
                "samples": context.sanity.samples,
                "methods": {
                    entry.method: {"spearman": [round(v, 4) for v in entry.spearman], "passed": entry.passed}
                    for entry in context.sanity.methods
                },
            }
        elif "sanity" in previous:
            manifest["replacement"], manifest["sanity"] = previous.get("replacement"), previous["sanity"]
        self.store.put(key, json.dumps(manifest, indent=2).encode(), "application/json")
        return key

    def list_explanations(self, request: pb.ListExplanationsRequest) -> pb.ListExplanationsResponse:
        if request.task_id:
            validate_id("task_id", request.task_id)
        if request.client_id:
            validate_id("client_id", request.client_id)
        if request.run_id:
            validate_id("run_id", request.run_id)
            if request.adhoc:
                raise InvalidArgument("adhoc", "ad-hoc calls belong to no run: leave run_id empty")
        unknown = [value for value in request.subjects if value not in SUBJECTS]
        if unknown:
            raise InvalidArgument("subjects", f"unknown subject {unknown[0]}")
        subjects = {SUBJECTS[value] for value in request.subjects}
        has_round = request.HasField("round")
        one_place = request.task_id and (request.run_id or request.adhoc)
        if one_place and has_round:
            prefix = round_prefix(request.task_id, request.run_id, request.round) + "/"
        elif one_place:
            prefix = run_prefix(request.task_id, request.run_id) + "/"
        elif request.task_id:
            prefix = request.task_id + "/"
        else:
            prefix = ""

        response = pb.ListExplanationsResponse()
        comparisons = _Comparisons(self.store)
        for info in self.store.list(prefix):
            folder = Folder.of_manifest(info.key)
            if folder is None:
                continue
            if (
                (request.run_id and folder.run_id != request.run_id)
                or (request.adhoc and folder.run_id)
                or (has_round and folder.round != request.round)
                or (request.client_id and folder.client_id != request.client_id)
                or (subjects and folder.subject not in subjects)
            ):
                continue
            manifest = read_document(self.store, info.key)
            for entry in (manifest or {}).get("images", []):
                try:
                    listed = self._listed(entry, folder)
                except (KeyError, TypeError, ValueError, InvalidArgument) as error:
                    log.warning("skipping a malformed entry of %s: %r", info.key, error)
                    continue
                comparison = comparisons.of(folder, listed.label)
                if comparison is not None:
                    listed.comparison.CopyFrom(comparison)
                response.explanations.append(listed)
        return response

    def _listed(self, entry: dict, folder: Folder) -> pb.StoredExplanation:
        return pb.StoredExplanation(
            key=entry["key"],
            url=self.store.url(entry["key"]),
            task_id=folder.task_id,
            run_id=folder.run_id,
            round=folder.round,
            client_id=folder.client_id,
            subject=SUBJECT_VALUES[folder.subject],
            label=entry["label"],
            class_name=entry.get("class_name", ""),
            predicted_class=entry["predicted_class"],
            predicted_class_name=entry.get("predicted_class_name", ""),
            probability=entry["probability"],
            method=entry["method"],
            target_layer=entry["target_layer"],
            model_sha256=entry["model_sha256"],
            cam_max=entry["cam_max"],
            cam_mean=entry["cam_mean"],
            degenerate=entry["degenerate"],
            created_at=entry["created_at"],
            # Manifests written before scoring existed have none of these.
            weak=entry.get("weak", False),
            faithfulness=[pb.Faithfulness(**score) for score in entry.get("faithfulness", [])],
            sanity_spearman=entry.get("sanity_spearman"),
            sanity_passed=entry.get("sanity_passed"),
        )

    def info(self) -> pb.GetInfoResponse:
        response = pb.GetInfoResponse(
            version=__version__,
            methods=[pb.CamMethod.Name(value) for value in METHODS if value != pb.CAM_METHOD_UNSPECIFIED],
            max_message_bytes=self.limits.max_message_bytes,
            max_batch_size=self.limits.max_batch_size,
            storage=self.store.kind,
        )
        response.methods.append(pb.CamMethod.Name(pb.CAM_METHOD_AUTO))
        for arch in architectures().values():
            layers = target_layers(arch)
            response.architectures.add(
                name=arch.name,
                input_shape=list(arch.input_shape),
                num_classes=arch.num_classes,
                default_target_layer=layers.default,
                target_layers=list(layers.names),
                conv_layers=arch.conv_layers(),
                default_mean=list(arch.mean),
                default_std=list(arch.std),
                class_names=[arch.class_name(label) for label in range(arch.num_classes)],
                provided_by=arch.provided_by,
            )
        return response
