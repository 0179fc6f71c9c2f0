"""The explainer's work, free of gRPC: compute maps, pick and draw one sample per
class, store images and manifests, and read them back for listing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import zlib
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime

import cv2
import numpy as np
import torch

from fedxai import __version__
from fedxai.errors import InvalidArgument
from fedxai.models import ARCHITECTURES
from fedxai.storage import ObjectStore, read_document
from fedxai.storage.layout import (
    MANIFEST_NAME,
    class_image_key,
    client_prefix,
    manifest_key,
    parse_round_dir,
    round_prefix,
    validate_id,
)
from fedxai.v1 import explainer_pb2 as pb
from services.explainer.cam import METHODS, BaseCAM, CamResult
from services.explainer.cam.base import EPS
from services.explainer.inputs import ExplainJob, parse_explain_request
from services.explainer.loaded_models import ModelCache
from services.explainer.render import encode_jpeg, render_explanations

log = logging.getLogger(__name__)

IMAGE_WORKERS = 8  # pictures drawn, encoded and stored at once, across calls


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int
    max_batch_size: int
    cached_models: int


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
    maps: np.ndarray  # (N, h, w) float32, raw
    peaks: np.ndarray  # (N,) float32
    means: np.ndarray  # (N,) float32

    @classmethod
    def of(cls, result: CamResult) -> SampleStats:
        logits = result.logits.numpy()
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = exp / exp.sum(axis=1, keepdims=True)
        predicted = probabilities.argmax(axis=1)
        maps = result.maps.numpy()
        return cls(
            predicted=predicted,
            confidence=probabilities[np.arange(len(predicted)), predicted],
            explained=result.classes.numpy(),
            maps=maps,
            peaks=maps.max(axis=(1, 2)),
            means=maps.mean(axis=(1, 2)),
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
        )
        for index, (label, prediction, probability, explained, peak, mean, grid) in enumerate(columns)
    ]


def heat_at_input_size(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Raw (K, h, w) maps as the pictures show them: as ``cam.upsample`` then
    ``cam.normalise`` do in torch (bilinear with half-pixel centres, each map
    scaled by its peak into [0, 1])."""
    resized = np.stack([cv2.resize(grid, (width, height), interpolation=cv2.INTER_LINEAR) for grid in maps])
    return resized / (resized.max(axis=(1, 2), keepdims=True) + EPS)


def compute_maps(job: ExplainJob) -> tuple[BaseCAM, CamResult]:
    with job.model.borrow() as model:
        cam = job.method(model, job.target_layer)
        return cam, cam.compute(job.normalised_inputs(), None if job.explain_predicted else job.labels)


class ExplanationService:
    def __init__(self, store: ObjectStore, limits: Limits) -> None:
        self.store = store
        self.limits = limits
        self.models = ModelCache(limits.cached_models)
        # Calls for the same task, round and client (a resent request, say) must not
        # interleave their read-modify-write of the manifest: one lock per key stripe.
        self._manifest_locks = [threading.Lock() for _ in range(64)]
        # One thread runs every call's torch compute, on all of torch's threads:
        # concurrent computes would only split the same cores, each with its own
        # OpenMP team spinning on them. Calls overlap in everything else.
        self.compute_lane = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
        self._image_workers = ThreadPoolExecutor(max_workers=IMAGE_WORKERS, thread_name_prefix="images")
        self._drawing_parts = torch.get_num_threads()

    def close(self) -> None:
        self.compute_lane.shutdown()
        self._image_workers.shutdown()

    def explain(self, request: pb.ExplainRequest) -> pb.ExplainResponse:
        job = parse_explain_request(request, self.store, self.models, self.limits.max_batch_size)
        cam, result = self.compute_lane.submit(compute_maps, job).result()
        response = pb.ExplainResponse(method=cam.name, target_layer=cam.layer_name, model_sha256=job.model.sha256)
        labels = job.labels.numpy()
        stats = SampleStats.of(result)
        response.samples.extend(describe_samples(labels, stats))
        picks = pick_samples_per_class(labels, stats.predicted, stats.confidence)
        indices = list(picks.values())
        drawn = [response.samples[index] for index in indices]
        # Only the drawn samples need maps at the input size.
        heat = heat_at_input_size(stats.maps[indices], job.pixels.shape[2], job.pixels.shape[3])
        pixels = job.pixels.numpy()[indices]
        with self._manifest_lock(job):
            # Drawing and encoding release the GIL: the classes are split across the
            # cores torch computes on.
            parts = min(len(drawn), self._drawing_parts)
            drawings = [
                self._image_workers.submit(self._draw, cam, drawn[part::parts], pixels[part::parts], heat[part::parts])
                for part in range(parts)
            ]
            kept: list[Future[tuple[pb.ClassImage, dict | None]]] = []
            for drawing in as_completed(drawings):
                # One task a picture: S3 uploads wait on the network, not on a core.
                kept += [self._image_workers.submit(self._keep, job, cam, *pair) for pair in drawing.result()]
            outcomes = sorted((future.result() for future in kept), key=lambda outcome: outcome[0].label)
            if job.store:
                response.manifest_key = self._write_manifest(job, [entry for _, entry in outcomes if entry])
        response.images.extend(image for image, _ in outcomes)
        return response

    @staticmethod
    def _draw(
        cam: BaseCAM, samples: list[pb.SampleExplanation], pixels: np.ndarray, heat: np.ndarray
    ) -> list[tuple[pb.SampleExplanation, bytes]]:
        """Some classes' pictures, JPEG-encoded."""
        captions = [
            f"class {sample.true_label}  pred {sample.predicted_class} ({sample.probability:.1%})  "
            f"{cam.name} @ {cam.layer_name}"
            for sample in samples
        ]
        pictures = render_explanations(pixels, heat, captions)
        return [(sample, encode_jpeg(picture)) for sample, picture in zip(samples, pictures, strict=True)]

    def _keep(
        self, job: ExplainJob, cam: BaseCAM, sample: pb.SampleExplanation, jpeg: bytes
    ) -> tuple[pb.ClassImage, dict | None]:
        """Stores one class's picture (returning its manifest entry), or attaches it to the reply."""
        label = sample.true_label
        image = pb.ClassImage(
            label=label,
            sample_index=sample.index,
            predicted_class=sample.predicted_class,
            probability=sample.probability,
        )
        if not job.store:
            image.jpeg = jpeg
            return image, None
        image.key = class_image_key(job.task_id, job.round, job.client_id, label)
        entry = {
            "key": image.key,
            "label": label,
            "sample_index": sample.index,
            "predicted_class": sample.predicted_class,
            "probability": round(sample.probability, 6),
            "explained_class": sample.explained_class,
            "method": cam.name,
            "target_layer": cam.layer_name,
            "architecture": job.model.architecture.name,
            "model_sha256": job.model.sha256,
            "cam_max": sample.cam_max,
            "cam_mean": sample.cam_mean,
            "degenerate": sample.degenerate,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        metadata = {name: str(value) for name, value in entry.items() if name != "key"}
        self.store.put(image.key, jpeg, "image/jpeg", metadata=metadata)
        image.url = self.store.url(image.key)
        return image, entry

    def _manifest_lock(self, job: ExplainJob) -> threading.Lock | contextlib.nullcontext[None]:
        if not job.store:
            return contextlib.nullcontext()
        key = manifest_key(job.task_id, job.round, job.client_id)
        return self._manifest_locks[zlib.crc32(key.encode()) % len(self._manifest_locks)]

    def _write_manifest(self, job: ExplainJob, entries: list[dict]) -> str:
        """Writes the manifest, keeping entries of classes this call did not redraw."""
        key = manifest_key(job.task_id, job.round, job.client_id)
        previous = read_document(self.store, key)
        redrawn = {entry["label"] for entry in entries}
        kept = [e for e in (previous or {}).get("images", []) if e.get("label") not in redrawn]
        manifest = {
            "task_id": job.task_id,
            "round": job.round,
            "client_id": job.client_id,
            "images": sorted(kept + entries, key=lambda entry: entry["label"]),
        }
        self.store.put(key, json.dumps(manifest, indent=2).encode(), "application/json")
        return key

    def list_explanations(self, request: pb.ListExplanationsRequest) -> pb.ListExplanationsResponse:
        if request.task_id:
            validate_id("task_id", request.task_id)
        if request.client_id:
            validate_id("client_id", request.client_id)
        has_round = request.HasField("round")
        if request.task_id and has_round and request.client_id:
            prefix = client_prefix(request.task_id, request.round, request.client_id) + "/"
        elif request.task_id and has_round:
            prefix = round_prefix(request.task_id, request.round) + "/"
        elif request.task_id:
            prefix = request.task_id + "/"
        else:
            prefix = ""

        response = pb.ListExplanationsResponse()
        for info in self.store.list(prefix):
            parts = info.key.split("/")
            # <task>/round-<NNN>/<client>/explanations.json
            if len(parts) != 4 or parts[3] != MANIFEST_NAME:
                continue
            round_number = parse_round_dir(parts[1])
            if round_number is None:
                continue
            if (has_round and round_number != request.round) or (request.client_id and parts[2] != request.client_id):
                continue
            manifest = read_document(self.store, info.key)
            for entry in (manifest or {}).get("images", []):
                try:
                    listed = self._listed(entry, parts[0], round_number, parts[2])
                except (KeyError, TypeError, ValueError, InvalidArgument) as error:
                    log.warning("skipping a malformed entry of %s: %r", info.key, error)
                    continue
                response.explanations.append(listed)
        return response

    def _listed(self, entry: dict, task_id: str, round_number: int, client_id: str) -> pb.StoredExplanation:
        return pb.StoredExplanation(
            key=entry["key"],
            url=self.store.url(entry["key"]),
            task_id=task_id,
            round=round_number,
            client_id=client_id,
            label=entry["label"],
            predicted_class=entry["predicted_class"],
            probability=entry["probability"],
            method=entry["method"],
            target_layer=entry["target_layer"],
            model_sha256=entry["model_sha256"],
            cam_max=entry["cam_max"],
            cam_mean=entry["cam_mean"],
            degenerate=entry["degenerate"],
            created_at=entry["created_at"],
        )

    def info(self) -> pb.GetInfoResponse:
        response = pb.GetInfoResponse(
            version=__version__,
            methods=[pb.CamMethod.Name(value) for value in METHODS if value != pb.CAM_METHOD_UNSPECIFIED],
            max_message_bytes=self.limits.max_message_bytes,
            max_batch_size=self.limits.max_batch_size,
            storage=self.store.kind,
        )
        for arch in ARCHITECTURES.values():
            conv_layers = arch.conv_layers()
            response.architectures.add(
                name=arch.name,
                input_shape=list(arch.input_shape),
                num_classes=arch.num_classes,
                default_target_layer=conv_layers[-1],
                conv_layers=conv_layers,
                default_mean=list(arch.mean),
                default_std=list(arch.std),
            )
        return response
