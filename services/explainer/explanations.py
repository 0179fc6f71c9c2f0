"""The explainer's work, free of gRPC: compute maps, pick and draw one sample per
class, store images and manifests, and read them back for listing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

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
from services.explainer.cam import METHODS, BaseCAM, CamResult, normalise, upsample
from services.explainer.cam.base import EPS
from services.explainer.inputs import ExplainJob, parse_explain_request
from services.explainer.loaded_models import ModelCache
from services.explainer.render import encode_jpeg, render_explanations

log = logging.getLogger(__name__)

IMAGE_WORKERS = 8  # pictures encoded and stored at once, across calls


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int
    max_batch_size: int
    cached_models: int


def pick_samples_per_class(labels: np.ndarray, predicted: np.ndarray, probability: np.ndarray) -> dict[int, int]:
    """For each class in ``labels``: its most confident correctly classified
    sample, else its first sample."""
    picks = {}
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        correct = members[predicted[members] == label]
        picks[int(label)] = int(correct[np.argmax(probability[correct])] if len(correct) else members[0])
    return picks


def describe_samples(
    labels: torch.Tensor, predicted: torch.Tensor, confidence: torch.Tensor, result: CamResult
) -> list[pb.SampleExplanation]:
    """Per sample: prediction, confidence, the raw map and its statistics."""
    maps = result.maps
    peaks = maps.amax(dim=(1, 2))
    means = maps.mean(dim=(1, 2))
    _, height, width = maps.shape
    columns = zip(
        labels.tolist(),
        predicted.tolist(),
        confidence.tolist(),
        result.classes.tolist(),
        peaks.tolist(),
        means.tolist(),
        maps.reshape(len(maps), -1).tolist(),
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


class ExplanationService:
    def __init__(self, store: ObjectStore, limits: Limits) -> None:
        self.store = store
        self.limits = limits
        self.models = ModelCache(limits.cached_models)
        # Calls for the same task, round and client (a resent request, say) must not
        # interleave their read-modify-write of the manifest: one lock per key stripe.
        self._manifest_locks = [threading.Lock() for _ in range(64)]
        self._image_workers = ThreadPoolExecutor(max_workers=IMAGE_WORKERS, thread_name_prefix="images")

    def close(self) -> None:
        self._image_workers.shutdown()

    def explain(self, request: pb.ExplainRequest) -> pb.ExplainResponse:
        job = parse_explain_request(request, self.store, self.models, self.limits.max_batch_size)
        with job.model.borrow() as model:
            cam = job.method(model, job.target_layer)
            result = cam.compute(job.normalised_inputs(), None if job.explain_predicted else job.labels)
        response = pb.ExplainResponse(method=cam.name, target_layer=cam.layer_name, model_sha256=job.model.sha256)
        confidence, predicted = torch.softmax(result.logits, dim=1).max(dim=1)
        response.samples.extend(describe_samples(job.labels, predicted, confidence, result))
        picks = pick_samples_per_class(job.labels.numpy(), predicted.numpy(), confidence.numpy())
        indices = list(picks.values())
        # Only the drawn samples need maps at the input size.
        heat = normalise(upsample(result.maps[indices], (job.pixels.shape[2], job.pixels.shape[3]))).numpy()
        captions = [
            f"class {label}  pred {response.samples[index].predicted_class} "
            f"({response.samples[index].probability:.1%})  {cam.name} @ {cam.layer_name}"
            for label, index in picks.items()
        ]
        pictures = render_explanations(job.pixels[indices].numpy(), heat, captions)
        with self._manifest_lock(job):
            # Encoding and storing release the GIL: the classes go in parallel
            # (uploads to S3 above all).
            outcomes = list(
                self._image_workers.map(
                    lambda label, index, picture: self._keep(job, cam, label, picture, response.samples[index]),
                    picks.keys(),
                    picks.values(),
                    pictures,
                )
            )
            if job.store:
                response.manifest_key = self._write_manifest(job, [entry for _, entry in outcomes if entry])
        response.images.extend(image for image, _ in outcomes)
        return response

    def _keep(
        self, job: ExplainJob, cam: BaseCAM, label: int, picture: np.ndarray, sample: pb.SampleExplanation
    ) -> tuple[pb.ClassImage, dict | None]:
        """Encodes one class's picture and stores it (returning its manifest entry), or attaches it to the reply."""
        jpeg = encode_jpeg(picture)
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
