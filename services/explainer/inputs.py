"""Turns an ExplainRequest into a checked job, or an error naming the bad field.

Everything a request carries is validated here, before any compute: the
servicer then only deals with well-formed jobs.
"""

from __future__ import annotations

import enum
import io
import re
import zlib
from dataclasses import dataclass

import cv2
import numpy as np
import PIL.Image
import torch

from fedxai.errors import FailedPrecondition, InvalidArgument, NotFound, ObjectNotFound, ResourceExhausted
from fedxai.models import Architecture, build_model, get_architecture
from fedxai.storage import ObjectStore
from fedxai.storage.layout import Folder, validate_client_id, validate_id, validate_key
from fedxai.tensors import decode_state_dict, safetensors_metadata, sha256_hex, tensor_from_proto
from fedxai.v1 import explainer_pb2 as pb
from services.explainer.cam import METHODS, BaseCAM
from services.explainer.loaded_models import LoadedModel, ModelCache

_SHA256 = re.compile(r"[0-9a-f]{64}")


class Scoring(enum.Enum):
    NOW = pb.SCORING_IN_REPLY
    AFTER_REPLY = pb.SCORING_AFTER_REPLY
    SKIP = pb.SCORING_SKIP


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
# Captions are a single line over the picture.
MAX_CLASS_NAME = 40
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # samples per pixel of each PNG colour type
MIN_STD, MAX_NORMALISATION = 1e-6, 1e6

# The layout's name of each subject (see Folder).
SUBJECTS = {
    pb.SUBJECT_UNSPECIFIED: "client",
    pb.SUBJECT_CLIENT_EVALUATION: "client",
    pb.SUBJECT_GLOBAL_MODEL: "global",
    pb.SUBJECT_CLIENT_UPDATE: "update",
}
SUBJECT_VALUES = {
    "client": pb.SUBJECT_CLIENT_EVALUATION,
    "global": pb.SUBJECT_GLOBAL_MODEL,
    "update": pb.SUBJECT_CLIENT_UPDATE,
}


@dataclass(frozen=True)
class ExplainJob:
    folder: Folder  # where it is stored, when it is
    model: LoadedModel
    pixels: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    labels: torch.Tensor  # (N,) int64
    class_names: tuple[str, ...]  # one per class of the architecture, in label order
    mean: torch.Tensor  # (C,)
    std: torch.Tensor  # (C,)
    method: type[BaseCAM] | None  # None: CAM_METHOD_AUTO
    target_layer: str
    explain_predicted: bool
    store: bool
    scoring: Scoring  # faithfulness scores and the sanity check

    def normalised_inputs(self) -> torch.Tensor:
        return (self.pixels - self.mean[None, :, None, None]) / self.std[None, :, None, None]


def parse_explain_request(
    request: pb.ExplainRequest, store: ObjectStore, models: ModelCache, max_batch_size: int
) -> ExplainJob:
    # Ids become storage keys; they only matter when something is stored.
    if request.store or request.task_id:
        validate_id("task_id", request.task_id)
    if request.run_id:
        validate_id("run_id", request.run_id)
    subject = SUBJECTS.get(request.subject)
    if subject is None:
        raise InvalidArgument("subject", f"unknown subject {request.subject}")
    if subject == "global":
        if request.client_id:
            raise InvalidArgument("client_id", "must be empty for SUBJECT_GLOBAL_MODEL")
    elif request.store or request.client_id:
        validate_client_id("client_id", request.client_id)
    method = METHODS.get(request.method)
    if method is None and request.method != pb.CAM_METHOD_AUTO:
        raise InvalidArgument("method", f"unknown CAM method {request.method}")
    if request.scoring not in (pb.SCORING_UNSPECIFIED, *(scoring.value for scoring in Scoring)):
        raise InvalidArgument("scoring", f"unknown scoring mode {request.scoring}")
    scoring = Scoring.NOW if request.scoring == pb.SCORING_UNSPECIFIED else Scoring(request.scoring)
    if method is None and scoring != Scoring.NOW:
        raise InvalidArgument("scoring", "CAM_METHOD_AUTO chooses by the scores: they must come in the reply")
    if scoring == Scoring.AFTER_REPLY and not request.store:
        raise InvalidArgument("scoring", "SCORING_AFTER_REPLY needs store: the scores go to the stored manifest")
    if request.target not in (
        pb.TARGET_CLASS_UNSPECIFIED,
        pb.TARGET_CLASS_TRUE_LABEL,
        pb.TARGET_CLASS_PREDICTED,
    ):
        raise InvalidArgument("target", f"unknown target class mode {request.target}")

    model = _model(request, store, models)
    pixels = _samples(request, model.architecture, max_batch_size)
    labels = _labels(request, len(pixels), model.architecture.num_classes)
    class_names = _class_names(request, model.architecture)
    mean, std = _normalisation(request.normalization, model.architecture)
    return ExplainJob(
        folder=Folder(request.task_id, request.run_id, request.round, subject, request.client_id),
        model=model,
        pixels=pixels,
        labels=labels,
        class_names=class_names,
        mean=mean,
        std=std,
        method=method,
        target_layer=request.target_layer,
        explain_predicted=request.target == pb.TARGET_CLASS_PREDICTED,
        store=request.store,
        scoring=scoring,
    )


def _model(request: pb.ExplainRequest, store: ObjectStore, models: ModelCache) -> LoadedModel:
    """The request's model, inline or from storage, decoded once per distinct content."""
    which = request.WhichOneof("model")
    if which == "inline_model":
        inline = request.inline_model
        architecture = get_architecture(inline.architecture, "inline_model.architecture")
        return _load(models, architecture, inline.safetensors, "inline_model.safetensors")
    if which != "model_ref":
        raise InvalidArgument("model", "set inline_model or model_ref")
    ref = request.model_ref
    key = validate_key("model_ref.key", ref.key)
    named = get_architecture(ref.architecture, "model_ref.architecture") if ref.architecture else None
    if ref.sha256:
        if not _SHA256.fullmatch(ref.sha256):
            raise InvalidArgument("model_ref.sha256", "is not 64 lowercase hex digits")
        known = models.get(ref.sha256, ref.architecture)
        if known is not None:
            return known
    try:
        data = store.get(key)
    except ObjectNotFound:
        raise NotFound("model_ref.key", f"no checkpoint at {key!r} in {store.kind} storage") from None
    if named is None:
        name = safetensors_metadata(data, "model_ref.key").get("architecture", "")
        if not name:
            raise InvalidArgument("model_ref.architecture", "not given, and the checkpoint's metadata names none")
        named = get_architecture(name, "model_ref.architecture")
    return _load(models, named, data, "model_ref.key", ref.sha256)


def _load(models: ModelCache, architecture: Architecture, data: bytes, field: str, expected: str = "") -> LoadedModel:
    sha256 = sha256_hex(data)
    if expected and sha256 != expected:
        raise FailedPrecondition("model_ref.sha256", f"the checkpoint's SHA-256 is {sha256}, not {expected}")
    known = models.get(sha256, architecture.name)
    if known is not None:
        return known
    state = decode_state_dict(data, field)
    return models.add(LoadedModel(sha256, architecture, state, build_model(architecture, state, field)))


def _class_names(request: pb.ExplainRequest, architecture: Architecture) -> tuple[str, ...]:
    names = tuple(request.class_names)
    if not names:
        return tuple(architecture.class_name(label) for label in range(architecture.num_classes))
    if len(names) != architecture.num_classes:
        raise InvalidArgument(
            "class_names", f"{len(names)} names for the {architecture.num_classes} classes of {architecture.name}"
        )
    for index, name in enumerate(names):
        if not name.strip() or len(name) > MAX_CLASS_NAME or not name.isprintable():
            raise InvalidArgument(
                f"class_names[{index}]", f"must be 1 to {MAX_CLASS_NAME} printable characters, not all spaces"
            )
    return names


def _check_batch_size(field: str, count: int, max_batch_size: int) -> None:
    if count == 0:
        raise InvalidArgument(field, "empty batch")
    if count > max_batch_size:
        raise ResourceExhausted(field, f"batch of {count} samples is over the limit of {max_batch_size}")


def _samples(request: pb.ExplainRequest, architecture: Architecture, max_batch_size: int) -> torch.Tensor:
    channels, height, width = architecture.input_shape
    which = request.WhichOneof("samples")
    if which == "tensor":
        shape = list(request.tensor.shape)
        if len(shape) != 4:
            raise InvalidArgument("tensor.shape", f"{shape} is not 4-D NCHW")
        _check_batch_size("tensor.shape", shape[0], max_batch_size)
        if shape[1:] != [channels, height, width]:
            raise InvalidArgument(
                "tensor.shape",
                f"{shape} does not match {architecture.name} input [N, {channels}, {height}, {width}]",
            )
        array = tensor_from_proto(request.tensor, "tensor")
        if array.dtype == np.uint8:
            return torch.from_numpy(array.astype(np.float32) / 255.0)
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise InvalidArgument(
                "tensor.data",
                f"float32 pixels must lie in [0, 1] (the server applies the normalisation); "
                f"found [{low:.3g}, {high:.3g}]",
            )
        return torch.from_numpy(array.copy())
    if which == "images":
        encoded = request.images.images
        _check_batch_size("images.images", len(encoded), max_batch_size)
        return torch.from_numpy(np.stack([_decode_image(i, data, architecture) for i, data in enumerate(encoded)]))
    raise InvalidArgument("samples", "set tensor or images")


def _decode_image(index: int, data: bytes, architecture: Architecture) -> np.ndarray:
    """One PNG/JPEG as (C, H, W) float32 in [0, 1]; grey or RGB to match the model."""
    field = f"images.images[{index}]"
    channels, height, width = architecture.input_shape
    if not data.startswith((PNG_SIGNATURE, JPEG_SIGNATURE)):
        raise InvalidArgument(field, "is neither PNG nor JPEG, the formats the explainer decodes")
    # The header first: a small file can declare a huge image, which is never decoded.
    try:
        with PIL.Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as header:
            size = header.size
    except PIL.Image.DecompressionBombError:
        raise InvalidArgument(field, f"declares an image far larger than {width}x{height}") from None
    except (PIL.UnidentifiedImageError, OSError, ValueError):
        raise InvalidArgument(field, "not a decodable PNG or JPEG image") from None
    if size != (width, height):
        raise InvalidArgument(field, f"is {size[0]}x{size[1]}, {architecture.name} takes {width}x{height}")
    if data.startswith(PNG_SIGNATURE):
        _check_png_inflation(data, field, width, height)
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    if image is None or image.shape[:2] != (height, width):
        raise InvalidArgument(field, "not a decodable PNG or JPEG image")
    image = image[None] if channels == 1 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)
    return image.astype(np.float32) / 255.0


def _check_png_inflation(data: bytes, field: str, width: int, height: int) -> None:
    """A PNG's pixel data may inflate to gigabytes behind a 28x28 header: inflate
    no more than the declared pixels take, and refuse the image if there is more."""
    chunks, position = [], len(PNG_SIGNATURE)
    bits_per_pixel = 32
    while position + 8 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        if kind == b"IHDR" and len(body) >= 10:
            bit_depth, colour_type = body[8], body[9]
            bits_per_pixel = bit_depth * _PNG_SAMPLES.get(colour_type, 4)
        elif kind == b"IDAT":
            chunks.append(body)
        elif kind == b"IEND":
            break
        position += 12 + length
    # Each row: a filter byte and its pixels; Adam7 interlacing adds at most a row per pass.
    row = 1 + (width * bits_per_pixel + 7) // 8
    limit = (height + 7) * row
    inflater = zlib.decompressobj()
    try:
        inflated = inflater.decompress(b"".join(chunks), limit + 1)
    except zlib.error:
        raise InvalidArgument(field, "not a decodable PNG or JPEG image") from None
    if len(inflated) > limit or inflater.unconsumed_tail:
        raise InvalidArgument(field, f"its pixel data inflates beyond the {width}x{height} image it declares")


def _labels(request: pb.ExplainRequest, count: int, num_classes: int) -> torch.Tensor:
    # Counted before anything is converted: 20 million labels must cost nothing.
    if len(request.labels) != count:
        raise InvalidArgument("labels", f"{len(request.labels)} labels for {count} samples")
    labels = list(request.labels)
    bad = [label for label in labels if not 0 <= label < num_classes]
    if bad:
        raise InvalidArgument("labels", f"{bad[0]} is outside [0, {num_classes})")
    return torch.tensor(labels, dtype=torch.int64)


def _normalisation(message: pb.Normalization, architecture: Architecture) -> tuple[torch.Tensor, torch.Tensor]:
    channels = architecture.channels
    for name in ("mean", "std"):  # counted before anything is converted
        given = len(getattr(message, name))
        if given not in (0, 1, channels):
            raise InvalidArgument(f"normalization.{name}", f"has {given} values; give 1 or {channels}")
    mean = list(message.mean) or list(architecture.mean)
    std = list(message.std) or list(architecture.std)
    for name, values in (("mean", mean), ("std", std)):
        if not all(np.isfinite(values)):
            raise InvalidArgument(f"normalization.{name}", "contains NaN or Inf")
    # Beyond these, normalised pixels overflow float32 in the first layers.
    if not all(MIN_STD <= value <= MAX_NORMALISATION for value in std):
        raise InvalidArgument("normalization.std", f"values must lie in [{MIN_STD:g}, {MAX_NORMALISATION:g}]")
    if not all(abs(value) <= MAX_NORMALISATION for value in mean):
        raise InvalidArgument(
            "normalization.mean", f"values must lie in [-{MAX_NORMALISATION:g}, {MAX_NORMALISATION:g}]"
        )
    return (
        torch.tensor(mean, dtype=torch.float32).expand(channels).clone(),
        torch.tensor(std, dtype=torch.float32).expand(channels).clone(),
    )
