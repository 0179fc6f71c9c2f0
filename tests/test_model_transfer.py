"""model-transfer=store, as `fedxai run` sets it: the aggregator checkpoints the global
model and names it in its messages, the trainer reads it back from the store, checked
against its SHA-256, and puts the model it trained where the aggregator reads it, once.
Each side here on a real store (a folder, and S3 on loopback), with what can go wrong;
whole runs in test_federation.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedxai.data import Dataset
from fedxai.models import architectures
from fedxai.settings import SettingsError, StorageSettings
from fedxai.storage import ObjectStore, open_store
from fedxai.storage.layout import update_model_key
from fedxai.tensors import encode_state_dict
from services.aggregator.recorder import RunRecorder, models_from_store
from services.cli.federation import storage_environment
from services.trainer.client_app import global_model, put_update
from tests.conftest import s3_settings
from tests.helpers import RUN, task_config
from tests.test_storage import new_bucket

TASK = task_config(model_transfer="store")
ROUND = 2


@pytest.fixture(params=["local", "s3"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[ObjectStore, dict[str, str]]]:
    """The run's store, and the environment that gives the trainers the same one."""
    if request.param == "local":
        settings = StorageSettings(output_dir=tmp_path / "store")
    else:
        settings = StorageSettings(s3=s3_settings(request.getfixturevalue("nanio_endpoint"), new_bucket()))
    store = open_store(settings)
    store.check()
    yield store, storage_environment(settings)


def a_model(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return architectures()["mnist_cnn"].factory().state_dict()


def same(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> bool:
    return left.keys() == right.keys() and all(torch.equal(left[name], right[name]) for name in left)


def named_global_model(store: ObjectStore, mnist: tuple, model: dict[str, torch.Tensor]) -> RecordDict:
    """A training message's content as the aggregator sends it: the checkpoint its
    recorder stored, by key and SHA-256, in place of the arrays."""
    images, labels = mnist
    arch = architectures()[TASK.architecture]
    recorder = RunRecorder(store, TASK, arch, Dataset(images[:20, None] / 255.0, labels[:20]))
    key, sha256 = recorder.checkpoint(ROUND - 1, ArrayRecord(model))
    config = {"server-round": ROUND, "model-key": key, "model-sha256": sha256, "run-id": RUN}
    return RecordDict({"config": ConfigRecord(config)})


def reply(client_id: str, node: int, content: dict[str, Any]) -> SimpleNamespace:
    """A trainer's reply as the aggregator reads it (Flower builds real ones only inside a run)."""
    records = RecordDict({"client": ConfigRecord({"client-id": client_id}), **content})
    return SimpleNamespace(content=records, metadata=SimpleNamespace(src_node_id=node), has_error=lambda: False)


def trainer_store(env: dict[str, str]) -> ObjectStore:
    """The store a trainer with environment ``env`` opens."""
    return open_store(StorageSettings.from_env(env))


def test_the_trainer_reads_the_global_model_the_aggregator_names(shared, mnist):
    store, env = shared
    sent = a_model(1)
    assert same(global_model(named_global_model(store, mnist, sent)["config"], trainer_store(env)), sent)


def test_a_trainer_on_another_store_is_told_what_to_set(shared, mnist, tmp_path):
    store, _ = shared
    content = named_global_model(store, mnist, a_model(1))
    with pytest.raises(SettingsError) as raised:
        global_model(content["config"], trainer_store({"FEDXAI_OUTPUT_DIR": str(tmp_path / "elsewhere")}))
    message = str(raised.value)
    assert message.startswith(f"model-transfer=store: {content['config']['model-key']} is not in the folder ")
    assert "A trainer must use the aggregator's store (FEDXAI_OUTPUT_DIR or FEDXAI_S3_*)" in message
    assert message.endswith("else run with model-transfer=message")


def test_a_global_model_replaced_in_the_store_is_not_trained_on(shared, mnist):
    store, env = shared
    content = named_global_model(store, mnist, a_model(1))
    store.put(str(content["config"]["model-key"]), encode_state_dict(a_model(2), {}), "application/octet-stream")
    with pytest.raises(SettingsError, match=r"is not the model the message names \(SHA-256 differs\)"):
        global_model(content["config"], trainer_store(env))


def test_the_trained_model_goes_back_through_the_store_once(shared, mnist):
    store, env = shared
    config = named_global_model(store, mnist, a_model(1))["config"]
    trained = a_model(3)
    update = put_update(config, TASK.task_name, "client-0", trained, trainer_store(env))
    key = update_model_key(TASK.task_name, RUN, ROUND, "client-0")
    assert update["key"] == key and store.exists(key)

    received, failed = models_from_store(store, TASK, ROUND, [reply("client-0", 11, {"update": update})])
    assert failed == {}
    assert same(received[0].content.array_records["arrays"].to_torch_state_dict(), trained)
    assert not store.exists(key)  # averaged now: the store does not keep every client's model of every round


def test_replies_that_carry_their_model_are_kept_as_they_are(shared):
    store, _ = shared
    carried = reply("client-0", 11, {"arrays": ArrayRecord(a_model(3))})
    assert models_from_store(store, TASK, ROUND, [carried]) == ([carried], {})


@pytest.mark.parametrize(
    ("client_id", "spoil", "reason"),
    [
        ("client-1", "replace", "is not the model the message names (SHA-256 differs)"),
        ("client-1", "delete", "is not in "),
        ("client-1", "name client-0's", "its reply names 'xaitest/runs/"),
        ("../client-0", "none", "client-id: '../client-0' is not a valid id"),
    ],
)
def test_a_model_that_cannot_be_read_leaves_its_client_out_with_the_reason(shared, mnist, client_id, spoil, reason):
    store, env = shared
    config = named_global_model(store, mnist, a_model(1))["config"]
    honest = put_update(config, TASK.task_name, "client-0", a_model(3), trainer_store(env))
    own = update_model_key(TASK.task_name, RUN, ROUND, "client-1")
    update = put_update(config, TASK.task_name, "client-1", a_model(4), trainer_store(env))
    if spoil == "replace":
        store.put(own, encode_state_dict(a_model(5), {}), "application/octet-stream")
    elif spoil == "delete":
        store.delete(own)
    elif spoil == "name client-0's":
        update = ConfigRecord({**update, "key": honest["key"]})

    replies = [reply("client-0", 11, {"update": honest}), reply(client_id, 12, {"update": update})]
    received, failed = models_from_store(store, TASK, ROUND, replies)
    assert [r.content["client"]["client-id"] for r in received] == ["client-0"]
    assert list(failed) == [12] and failed[12].startswith("its trained model: ") and reason in failed[12]
