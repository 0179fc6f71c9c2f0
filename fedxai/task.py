"""A task: one federated run's configuration, validated once at start.

The defaults live in ``[tool.flwr.app.config]`` of ``pyproject.toml`` (Flower's
run config, kebab-case keys); every value can be overridden on the command
line. ``TaskConfig.from_run_config`` refuses unknown keys and bad values with a
message naming them, so a typo fails before anything starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from fedxai.attacks import ATTACKS
from fedxai.errors import InvalidArgument
from fedxai.settings import DEFAULT_EXPLAINER_ADDRESS, SettingsError, parse_target
from fedxai.storage.layout import validate_client_id, validate_id

STRATEGIES = ("FedAvg",)
# Ten classes times this stays well under the explainer's default batch limit (1024).
MAX_SAMPLES_PER_CLASS = 64
OPTIMIZERS = ("sgd", "adam")
PARTITIONINGS = ("iid", "dirichlet")
# How the models travel between the aggregator and the trainers: in Flower's messages, or
# through the run's store, the messages naming them (key and SHA-256). A read or a write of
# the store replaces Flower's transfers of the model, in ~20 parts, through the SuperLink
# and the SuperNode, and their waits.
MODEL_TRANSFERS = ("message", "store")
# Run-config names of the CAM methods, as proto enum names.
CAM_METHODS = {
    "grad-cam": "CAM_METHOD_GRAD_CAM",
    "grad-cam++": "CAM_METHOD_GRAD_CAM_PLUS_PLUS",
    "hirescam": "CAM_METHOD_HIRES_CAM",
    "xgrad-cam": "CAM_METHOD_XGRAD_CAM",
    "layercam": "CAM_METHOD_LAYER_CAM",
    # Every method scored; each class's picture shows the most faithful one that passes the sanity check.
    "auto": "CAM_METHOD_AUTO",
}


# (settings, the condition each value must meet, how to say it)
_BOUNDS: tuple[tuple[tuple[str, ...], Callable[[float], bool], str], ...] = (
    (
        (
            "num-server-rounds",
            "local-epochs",
            "batch-size",
            "samples-per-class",
            "probe-per-class",
            "max-explained-clients",
        ),
        lambda v: v >= 1,
        "must be at least 1",
    ),
    (
        ("min-train-nodes", "min-evaluate-nodes", "max-samples", "attack-client", "resume-after-round"),
        lambda v: v >= 0,
        "must not be negative",
    ),
    (("fraction-train", "fraction-evaluate"), lambda v: 0.0 <= v <= 1.0, "must lie in [0, 1]"),
    (("validation-fraction", "test-fraction"), lambda v: 0.0 < v < 1.0, "must lie strictly between 0 and 1"),
    (("fraction-explain",), lambda v: 0.0 < v <= 1.0, "must lie in (0, 1]"),
    (("learning-rate", "dirichlet-alpha", "explainer-timeout", "flag-threshold"), lambda v: v > 0, "must be positive"),
)


@dataclass(frozen=True)
class TaskConfig:
    """Every setting, required: the defaults are written once, in pyproject.toml."""

    task_name: str
    # Empty: the aggregator names the run when it starts (see fedxai.storage.layout).
    run_id: str
    xai_enabled: bool
    strategy: str
    num_server_rounds: int
    local_epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str
    fraction_train: float
    min_train_nodes: int
    fraction_evaluate: float
    min_evaluate_nodes: int
    model_transfer: str
    cam_method: str
    samples_per_class: int
    # Of the clients that evaluate, this share, at most ``max_explained_clients`` of
    # them, drawn anew every round, send their explanations.
    fraction_explain: float
    max_explained_clients: int
    explainer_address: str
    explainer_timeout: float
    explainer_ca_file: str
    architecture: str
    # A data source (fedxai.datasets) and the folder it reads; empty: its default place.
    dataset: str
    data_dir: str
    max_samples: int
    partitioning: str
    dirichlet_alpha: float
    validation_fraction: float
    test_fraction: float
    seed: int
    # The aggregator explains the global model and every client's update on a probe set.
    explain_federation: bool
    probe_dir: str
    probe_per_class: int
    probe_cam_method: str
    flag_threshold: float
    exclude_flagged: bool
    attack: str
    attack_client: int
    # Continue run ``run_id`` from its global model of this round (0: a new run);
    # ``fedxai run --resume`` sets it.
    resume_after_round: int

    @staticmethod
    def key(field_name: str) -> str:
        return field_name.replace("_", "-")

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> TaskConfig:
        known = {cls.key(f.name): f for f in fields(cls)}
        unknown = sorted(set(run_config) - set(known))
        if unknown:
            raise SettingsError(f"unknown task setting {unknown[0]!r} (known: {', '.join(sorted(known))})")
        missing = sorted(set(known) - set(run_config))
        if missing:
            raise SettingsError(f"task setting {missing[0]!r} is missing (the defaults are in pyproject.toml)")
        values = {}
        for key, value in run_config.items():
            expected = known[key].type
            values[known[key].name] = _coerce(key, value, expected)
        # Written once, in fedxai.settings, for the explainer and its callers.
        values["explainer_address"] = values["explainer_address"] or DEFAULT_EXPLAINER_ADDRESS
        config = cls(**values)
        config.validate()
        return config

    def to_run_config(self) -> dict[str, Any]:
        return {self.key(name): value for name, value in dataclasses.asdict(self).items()}

    def validate(self) -> None:
        validate_id_setting("task-name", self.task_name)
        if self.run_id:
            validate_id_setting("run-id", self.run_id)
        _choice("strategy", self.strategy, STRATEGIES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("partitioning", self.partitioning, PARTITIONINGS)
        _choice("model-transfer", self.model_transfer, MODEL_TRANSFERS)
        _choice("cam-method", self.cam_method, tuple(CAM_METHODS))
        _choice("attack", self.attack, ATTACKS)
        # Maps compared across clients must come from one method, not auto's choice per map.
        _choice("probe-cam-method", self.probe_cam_method, tuple(m for m in CAM_METHODS if m != "auto"))
        for names, holds, requirement in _BOUNDS:
            for name in names:
                if not holds(getattr(self, name.replace("-", "_"))):
                    raise SettingsError(f"{name} {requirement}")
        parse_target("explainer-address", self.explainer_address)
        if self.resume_after_round and not self.run_id:
            raise SettingsError("resume-after-round needs the run-id of the run to continue")
        if self.resume_after_round >= self.num_server_rounds:
            raise SettingsError(
                f"resume-after-round {self.resume_after_round}: the run has only {self.num_server_rounds} rounds "
                "(raise num-server-rounds to train it further)"
            )
        for name in ("samples-per-class", "probe-per-class"):
            if getattr(self, name.replace("-", "_")) > MAX_SAMPLES_PER_CLASS:
                raise SettingsError(f"{name} must be at most {MAX_SAMPLES_PER_CLASS}")
        from fedxai.datasets import data_sources
        from fedxai.models import architectures  # torch is imported only when a task is checked

        _choice("architecture", self.architecture, tuple(architectures()))
        _choice("dataset", self.dataset, tuple(data_sources()))


def validate_id_setting(name: str, value: str, *, client: bool = False) -> None:
    try:
        (validate_client_id if client else validate_id)(name, value)
    except InvalidArgument as error:
        raise SettingsError(str(error)) from None


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SettingsError(f"{name}={value!r} is not one of {', '.join(allowed)}")


def _coerce(key: str, value: Any, expected: Any) -> Any:
    """Checks a TOML value against the field's type; ints are fine where floats are expected."""
    if expected == "bool":
        if isinstance(value, bool):
            return value
    elif expected == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif expected == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif expected == "str" and isinstance(value, str):
        return value
    raise SettingsError(f"{key}={value!r} must be of type {expected}")
