"""Architectures and datasets from installed packages (entry points in
`fedxai.architectures` and `fedxai.datasets`): the example plugin in examples/ is
installed with the project; broken ones stop a command at its start with a message that
names the plugin and what is wrong. A federated run learns Fashion-MNIST with the
plugin's 3-channel net and names the classes in what it stores."""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from fedxai.datasets import FASHION_MNIST
from fedxai.models import architectures
from fedxai.storage import LocalStore
from fedxai.tensors import encode_state_dict, tensor_to_proto
from fedxai.v1 import explainer_pb2 as pb
from services.explainer.cam import target_layers
from services.monitor.app import create_app
from tests.conftest import free_port
from tests.helpers import FEDXAI, RUN, decode_jpeg, serving
from tests.test_monitor import CHROMIUM, dump_dom

PLUGIN = "tiny_rgb_net"


def test_the_example_plugin_is_in_the_registry_with_its_own_layers():
    arch = architectures()[PLUGIN]
    assert arch.provided_by == "fedxai-example-plugin 0.1.0"
    assert (arch.input_shape, arch.class_name(1), arch.class_name(9)) == ((3, 28, 28), "Trouser", "Ankle boot")
    # Its layers are not named conv*: the last convolution is features.3, explained after its ReLU.
    layers = target_layers(arch)
    assert layers.default == "features.4" and layers.resolve("features.3") == "features.4"


def test_get_info_lists_the_plugin_with_its_layers_and_class_names(stub):
    info = {arch.name: arch for arch in stub.GetInfo(pb.GetInfoRequest(), timeout=10).architectures}
    plugin = info[PLUGIN]
    assert list(plugin.input_shape) == [3, 28, 28] and plugin.provided_by == "fedxai-example-plugin 0.1.0"
    assert plugin.default_target_layer == "features.4" and "features.4" in plugin.target_layers
    assert plugin.class_names[:2] == ["T-shirt/top", "Trouser"] and len(plugin.class_names) == 10
    assert list(info["mnist_cnn"].class_names) == [str(label) for label in range(10)]
    assert info["mnist_cnn"].provided_by == ""


def test_explain_with_the_trained_plugin_model_stores_readable_pictures(stub, local_store, mnist):
    """Grey digits made into 3 channels, the plugin's net trained on them for two epochs:
    the explainer loads it by its plugin name and stores a picture per class."""
    images, labels = mnist
    arch = architectures()[PLUGIN]
    x = torch.from_numpy(images[:3000]).float()[:, None].repeat(1, 3, 1, 1) / 255.0
    normalised = (x - torch.tensor(arch.mean)[:, None, None]) / torch.tensor(arch.std)[:, None, None]
    y = torch.from_numpy(labels[:3000]).long()
    torch.manual_seed(0)
    model = arch.factory()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(2):
        for start in range(0, 2500, 32):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(normalised[start : start + 32]), y[start : start + 32])
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        accuracy = (model.eval()(normalised[2500:]).argmax(1) == y[2500:]).float().mean().item()
    assert accuracy > 0.8, accuracy

    held_out = np.repeat(images[2500:2600, None], 3, axis=1)
    request = pb.ExplainRequest(
        task_id="xaitest", run_id=RUN, round=1, client_id="client-0", store=True,
        inline_model=pb.InlineModel(architecture=PLUGIN, safetensors=encode_state_dict(model.state_dict(), {})),
        tensor=tensor_to_proto(np.ascontiguousarray(held_out)), labels=[int(v) for v in labels[2500:2600]],
    )  # fmt: skip
    response = stub.Explain(request, timeout=120)
    assert sum(sample.degenerate for sample in response.samples) < len(response.samples) // 4
    (manifest_key,) = [o.key for o in local_store.list("xaitest/") if o.key.endswith("explanations.json")]
    manifest = json.loads(local_store.get(manifest_key))
    assert sorted(image["label"] for image in manifest["images"]) == list(range(10))
    for image in manifest["images"]:
        picture = decode_jpeg(local_store.get(image["key"]))
        assert picture.shape[1] > 2 * picture.shape[0] / 2 and picture.std() > 10  # panels, not a flat picture


BROKEN = {
    "import-error": ('raise ImportError("needs timm")', "cannot be imported: ImportError: needs timm"),
    "not-an-architecture": ("ARCH = 42", "is a int, not a fedxai.models.Architecture"),
    "wrong-output": (
        """
        from torch import nn
        from fedxai.models import Architecture
        def five_classes():
            return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5))
        ARCH = Architecture("broken_net", five_classes, (1, 28, 28), 10, (0.5,), (0.5,))
        """,
        "its output for one input is (1, 5), expected (1, 10)",
    ),
    "bad-default-layer": (
        """
        from fedxai.models import MnistCnn, Architecture
        ARCH = Architecture("broken_net", MnistCnn, (1, 28, 28), 10, (0.5,), (0.5,), target_layer="nope")
        """,
        "architecture 'broken_net' (broken-plugin 0.1): target_layer: no targetable layer 'nope'",
    ),
}


def install_broken_plugin(where: Path, source: str, group: str = "fedxai.architectures") -> dict[str, str]:
    """A distribution on PYTHONPATH whose entry point `broken_net` in ``group`` loads broken_plugin:ARCH."""
    (where / "broken_plugin.py").write_text(textwrap.dedent(source))
    info = where / "broken_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{group}]\nbroken_net = broken_plugin:ARCH\n")
    return {"PYTHONPATH": str(where), "PATH": "/usr/bin:/bin"}


@pytest.mark.parametrize("case", list(BROKEN))
def test_the_explainer_refuses_a_broken_plugin_at_its_start(tmp_path, case):
    source, message = BROKEN[case]
    env = install_broken_plugin(tmp_path, source)
    result = subprocess.run(
        [FEDXAI, "explainer", "--address", "127.0.0.1:0", "--output-dir", str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("fedxai: error: ") and message in result.stderr, result.stderr
    if case != "bad-default-layer":  # the registry itself refuses these; the explainer the layer
        assert "architecture plugin 'broken_net' (broken_plugin:ARCH)" in result.stderr


@pytest.mark.parametrize(
    "command", [["run", "--dry-run"], ["trainer", "--", "--insecure", "--superlink", "127.0.0.1:9"]], ids=str
)
def test_run_and_trainer_refuse_a_broken_plugin_before_starting_anything(tmp_path, command):
    env = install_broken_plugin(tmp_path, BROKEN["import-error"][0])
    result = subprocess.run(
        [FEDXAI, *command, *(["--work-dir", str(tmp_path / "w")] if command[0] == "run" else [])],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "architecture plugin 'broken_net' (broken_plugin:ARCH) cannot be imported" in result.stderr
    assert not (tmp_path / "w" / "logs").exists(), "nothing was started"


@pytest.mark.parametrize(
    "command", [["run", "--dry-run"], ["trainer", "--", "--insecure", "--superlink", "127.0.0.1:9"]], ids=str
)
def test_run_and_trainer_refuse_a_broken_dataset_plugin_before_starting_anything(tmp_path, command):
    env = install_broken_plugin(tmp_path, "ARCH = 'images'", group="fedxai.datasets")
    result = subprocess.run(
        [FEDXAI, *command, *(["--work-dir", str(tmp_path / "w")] if command[0] == "run" else [])],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert (
        "fedxai: error: dataset plugin 'broken_net' (broken_plugin:ARCH) is a str, not a fedxai.datasets.DataSource"
    ) in result.stderr
    assert not (tmp_path / "w" / "logs").exists(), "nothing was started"


@pytest.mark.slow
@pytest.mark.skipif(
    not Path(FASHION_MNIST.installed_dirs[0]).is_dir(), reason="Debian's dataset-fashion-mnist is installed by .ci/run"
)
def test_two_rounds_of_fashion_mnist_with_the_plugin_net_store_class_named_heatmaps(tmp_path):
    """The grey images made into the plugin net's 3 channels; every picture, manifest and
    the monitoring page name the classes ("Trouser"); file names keep the label."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEDXAI_", "FLWR_"))}
    result = subprocess.run(
        [
            FEDXAI, "run", "--clients", "2", "--rounds", "2", "--output-dir", str(tmp_path / "out"),
            "--work-dir", str(tmp_path / "work"), "--explainer-address", f"127.0.0.1:{free_port()}",
            "--set", "dataset=fashion-mnist", "--set", f"architecture={PLUGIN}", "--set", "max-samples=2000",
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{PLUGIN} on fashion-mnist" in result.stdout
    (run,) = re.findall(r"^done: run (\S+), 2 rounds", result.stdout, re.M)
    out = tmp_path / "out" / "xaitest" / "runs" / run
    document = json.loads((out / "metrics.json").read_text())
    names = list(FASHION_MNIST.class_names)
    assert document["status"] == "finished" and document["class_names"] == names
    accuracy = [entry["global"]["accuracy"] for entry in document["rounds"]]
    assert accuracy[0] < accuracy[1] < accuracy[2] and accuracy[2] > 0.45, accuracy
    for round_dir in ("round-001", "round-002"):
        for folder in ("client-0", "client-1", "global"):
            manifest = json.loads((out / round_dir / folder / "explanations.json").read_text())
            assert [entry["label"] for entry in manifest["images"]] == list(range(10))
            assert [entry["class_name"] for entry in manifest["images"]] == names
            assert all(entry["predicted_class_name"] == names[entry["predicted_class"]] for entry in manifest["images"])
            assert sum(entry["degenerate"] for entry in manifest["images"]) <= 3, "most maps show something"
            for label in range(10):
                picture = decode_jpeg((out / round_dir / folder / f"gradcam_class_{label}.jpg").read_bytes())
                assert picture.shape[1] > 3 * picture.shape[0] / 2 and picture.std() > 10

    with serving(create_app(LocalStore(tmp_path / "out"))) as url:
        with urllib.request.urlopen(f"{url}/api/tasks/xaitest/runs/{run}/rounds/2", timeout=30) as response:
            gallery = json.load(response)["gallery"]["client-0"]
        assert [image["class_name"] for image in gallery] == names
        if CHROMIUM is not None:
            dom = dump_dom(f"{url}/tasks/xaitest/runs/{run}", tmp_path / "profile")
            captions = [dom.text(i) for i in dom.nodes("figcaption")]
            assert any(caption.startswith("Trouser: predicted ") for caption in captions), captions
            assert f"{PLUGIN} on fashion-mnist" in [dom.text(i) for i in dom.nodes("dd")]
