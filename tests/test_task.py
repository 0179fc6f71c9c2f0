"""The task configuration: defaults from pyproject.toml, overrides, and refusals that name the setting."""

from __future__ import annotations

import pytest

from fedxai.settings import DEFAULT_EXPLAINER_ADDRESS, SettingsError
from fedxai.task import TaskConfig
from services.cli.tasks import build_task, parse_overrides, task_defaults
from tests.conftest import REPO_ROOT


def test_pyproject_defaults_are_the_guide_task():
    task = build_task(REPO_ROOT, {}, clients=2)
    assert (task.task_name, task.xai_enabled, task.strategy) == ("xaitest", True, "FedAvg")
    # pyproject.toml holds every default, and the only ones: the dataclass has none.
    defaults = task_defaults(REPO_ROOT)
    assert set(defaults) == set(TaskConfig.from_run_config(defaults).to_run_config())
    with pytest.raises(SettingsError, match="task setting 'xai-enabled' is missing"):
        TaskConfig.from_run_config({k: v for k, v in defaults.items() if k != "xai-enabled"})
    # The explainer's address is written once, beside the explainer's own settings.
    assert defaults["explainer-address"] == "" and task.explainer_address == DEFAULT_EXPLAINER_ADDRESS
    assert task.run_id == "", "fedxai run and the aggregator name runs"


def test_overrides_apply_and_fewer_clients_lower_the_minimum():
    task = build_task(REPO_ROOT, parse_overrides(["num-server-rounds=5", "cam-method=layercam"]), clients=1)
    assert task.num_server_rounds == 5 and task.cam_method == "layercam"
    assert task.min_train_nodes == task.min_evaluate_nodes == 1


def test_override_values_are_toml_with_bare_words_as_strings():
    assert parse_overrides(["a=1", "b=0.5", "c=true", 'd="x y"', "e=grad-cam++"]) == {
        "a": 1,
        "b": 0.5,
        "c": True,
        "d": "x y",
        "e": "grad-cam++",
    }
    with pytest.raises(SettingsError, match="'novalue' is not KEY=VALUE"):
        parse_overrides(["novalue"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num-rounds": 3}, "unknown task setting 'num-rounds' (did you mean 'num-server-rounds'?)"),
        ({"zzz": 3}, "unknown task setting 'zzz' (known: architecture, attack, "),
        ({"run-id": "a/b"}, "run-id: 'a/b' is not a valid id"),
        ({"local-epochs": "two"}, "local-epochs='two' must be of type int"),
        ({"xai-enabled": 1}, "xai-enabled=1 must be of type bool"),
        ({"strategy": "FedProx"}, "strategy='FedProx' is not one of FedAvg"),
        ({"cam-method": "scorecam"}, "cam-method='scorecam' is not one of"),
        ({"fraction-train": 1.5}, "fraction-train must lie in [0, 1]"),
        ({"learning-rate": 0}, "learning-rate must be positive"),
        ({"num-server-rounds": 0}, "num-server-rounds must be at least 1"),
        ({"task-name": "../x"}, "task-name: '../x' is not a valid id"),
        ({"explainer-address": "nohost"}, "explainer-address='nohost' is not HOST:PORT"),
        ({"architecture": "vgg"}, "architecture='vgg' is not one of"),
        ({"dataset": "cifar100"}, "dataset='cifar100' is not one of mnist, fashion-mnist, image-folder"),
        ({"samples-per-class": 65}, "samples-per-class must be at most 64"),
        ({"model-transfer": "s3"}, "model-transfer='s3' is not one of message, store"),
    ],
)
def test_bad_settings_are_refused_with_their_name(overrides, message):
    with pytest.raises(SettingsError) as raised:
        build_task(REPO_ROOT, overrides, clients=2)
    assert message in str(raised.value)


def test_ints_are_accepted_for_floats():
    settings = {**task_defaults(REPO_ROOT), "learning-rate": 1}
    assert TaskConfig.from_run_config(settings).learning_rate == 1.0
