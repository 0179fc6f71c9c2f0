"""The task configuration: defaults from pyproject.toml, overrides, and refusals that name the setting."""

from __future__ import annotations

import pytest

from fedxai.launcher import build_task, parse_overrides, task_defaults
from fedxai.settings import SettingsError
from fedxai.task import TaskConfig
from tests.conftest import REPO_ROOT


def test_pyproject_defaults_are_the_guide_task():
    task = build_task(REPO_ROOT, {}, clients=2)
    assert (task.task_name, task.xai_enabled, task.strategy) == ("xaitest", True, "FedAvg")
    # Every field has its default in pyproject.toml, and they agree with the dataclass.
    assert task_defaults(REPO_ROOT) == TaskConfig().to_run_config()


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
        ({"num-rounds": 3}, "unknown task setting 'num-rounds'"),
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
        ({"architecture": "cifar10_cnn"}, "architecture='cifar10_cnn' is not one of mnist_cnn"),
        ({"samples-per-class": 65}, "samples-per-class must be at most 64"),
    ],
)
def test_bad_settings_are_refused_with_their_name(overrides, message):
    with pytest.raises(SettingsError) as raised:
        build_task(REPO_ROOT, overrides, clients=2)
    assert message in str(raised.value)


def test_ints_are_accepted_for_floats():
    assert TaskConfig.from_run_config({"learning-rate": 1}).learning_rate == 1.0
