"""The whole system through `fedxai run`: real Flower SuperLink and SuperNodes,
a real Explainer, real MNIST; small enough for CI."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import MNIST_DIR, free_port
from tests.helpers import FEDXAI, decode_jpeg

pytestmark = pytest.mark.slow

RUN_TIMEOUT = 600


def fedxai_run(tmp_path: Path, *args: str) -> list[str]:
    return [
        FEDXAI, "run", "--clients", "2", "--rounds", "2", "--data-dir", str(MNIST_DIR),
        "--output-dir", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work"),
        "--set", "max-samples=2000", *args,
    ]  # fmt: skip


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("FEDXAI_", "FLWR_"))}


def flower_processes(work: Path) -> list[int]:
    """Processes started for the run in ``work``: they all carry its FLWR_HOME."""
    from services.cli.processes import processes_with

    return sorted(processes_with("FLWR_HOME", str(work / "flwr")))


def wait_until_gone(work: Path, timeout: float = 15.0) -> list[str]:
    """The command lines of the run's processes still there after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (left := flower_processes(work)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return [command_line(pid).replace(b"\0", b" ").decode(errors="replace") for pid in left]


def stop(run: subprocess.Popen) -> None:
    """Stops a run the test left going (it failed first) as Ctrl-C does, so that
    the run stops its own processes too."""
    if run.poll() is None:
        run.send_signal(signal.SIGINT)
        try:
            run.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            run.kill()
            run.communicate()


def delivery(xai: dict) -> dict:
    """A round's delivery counts, without the quality counts beside them."""
    return {key: xai[key] for key in ("sent", "stored", "queued", "rejected")}


def run_dir(tmp_path: Path) -> Path:
    """The folder of the one run of task xaitest in the test's store."""
    (found,) = (tmp_path / "out" / "xaitest" / "runs").iterdir()
    return found


def metrics(tmp_path: Path) -> dict:
    return json.loads((run_dir(tmp_path) / "metrics.json").read_text())


def fedxai_status(tmp_path: Path, explainer: str) -> subprocess.CompletedProcess[str]:
    command = [
        FEDXAI, "status", "--explainer-address", explainer, "--work-dir", str(tmp_path / "work"),
        "--output-dir", str(tmp_path / "out"),
    ]  # fmt: skip
    return subprocess.run(command, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120)


# First of the federations: after the others, in a full `make test`, its Ctrl-C went unanswered
# and the run finished (exit 0); alone and in any smaller set it passes. Why is not known yet.
def test_status_during_a_run_and_ctrl_c_stops_every_process(tmp_path):
    explainer = f"127.0.0.1:{free_port()}"
    command = fedxai_run(tmp_path, "--explainer-address", explainer)
    # More rounds than it takes to ask for the status: Ctrl-C must come mid-run (a round takes 15 s).
    command[command.index("--rounds") + 1] = "10"
    run = subprocess.Popen(
        command, cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # As in a terminal: Ctrl-C's default action, whatever a shell that runs the tests in
        # the background set (it ignores SIGINT there, and Python then never interrupts).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        assert run.stdout is not None
        for line in run.stdout:
            if "supernodes started" in line:
                break
        deadline = time.monotonic() + 120  # until the aggregator has recorded the run
        while not list((tmp_path / "out").glob("xaitest/runs/*/metrics.json")) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert flower_processes(tmp_path / "work"), "the run should have Flower processes by now"
        status = fedxai_status(tmp_path, explainer)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "ok   explainer: SERVING" in status.stdout
        assert "ok   superlink: answering; 2 of 2 SuperNodes online" in status.stdout
        assert f"ok   store: the folder {tmp_path / 'out'}" in status.stdout
        assert re.search(r"^  xaitest run \d{8}-\d{6}-[0-9a-f]{4}: running, round \d+/10", status.stdout, re.M)
        run.send_signal(signal.SIGINT)
        output = run.communicate(timeout=60)[0]
    finally:
        stop(run)
    assert run.returncode == 130, output
    assert "interrupted" in output
    assert wait_until_gone(tmp_path / "work") == []
    # Everything is down now, and status says so with its exit code.
    status = fedxai_status(tmp_path, explainer)
    assert status.returncode == 1
    assert "DOWN explainer: UNAVAILABLE" in status.stdout and "DOWN superlink: not answering" in status.stdout
    assert (run_dir(tmp_path) / "logs" / "supernode-1.log").is_file(), "an interrupted run keeps its logs too"


def test_two_rounds_two_clients_with_explanations_every_round(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    result = subprocess.run(
        fedxai_run(tmp_path, "--explainer-address", address),
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "round 1/2  global accuracy" in result.stdout
    assert "round 2/2  global accuracy" in result.stdout
    out = run_dir(tmp_path)
    assert f"done: run {out.name}, 2 rounds" in result.stdout
    assert f"FedXAI: task xaitest, run {out.name}, 2 clients" in result.stdout
    # Every process's log is kept with the run's results.
    logs = sorted(path.name for path in (out / "logs").iterdir())
    assert logs == [
        "explainer.log", "flwr-run.log", "superexec.log", "superlink.log", "supernode-0.log", "supernode-1.log"
    ]  # fmt: skip
    assert "explainer serving on" in (out / "logs" / "explainer.log").read_text()
    # The SuperLink left its ServerApp to `fedxai superexec` (Flower's SuperExec, through the relay).
    assert "Starting Flower SuperExec" in (out / "logs" / "superexec.log").read_text()
    for node in ("supernode-0", "supernode-1"):
        # Each message's ClientApp was forked warm by `fedxai trainer`, and never by Flower's
        # own `flwr-clientapp` launcher: a message a round (round 2's evaluates round 1's
        # model first), then one that evaluates round 2's; each once its objects were in.
        node_log = (out / "logs" / f"{node}.log").read_text()
        assert len(re.findall(r"task \d+: ClientApp in process \d+", node_log)) == 3, node_log
        assert node_log.count("Received successfully") == 3
        assert "Start `flwr-clientapp` process" not in node_log
        assert "exited with status" not in node_log, "no ClientApp failed"
        assert "did not say it holds the message" not in node_log
    for round_dir in ("round-001", "round-002"):
        assert (out / round_dir / "global_model.safetensors").is_file()
        for client in ("client-0", "client-1"):
            manifest = json.loads((out / round_dir / client / "explanations.json").read_text())
            labels = [entry["label"] for entry in manifest["images"]]
            assert labels == list(range(10)), "every class in the samples has its image"
            for label in labels:
                picture = decode_jpeg((out / round_dir / client / f"gradcam_class_{label}.jpg").read_bytes())
                assert picture.shape[1] > 3 * picture.shape[0] / 2  # three panels side by side

    # `fedxai run`'s trainers share its store, so the models went through it: round 1's read the
    # initial model's checkpoint, and every trained model was read back once, then deleted.
    assert (out / "round-000" / "global_model.safetensors").is_file()
    assert not list(out.glob("round-*/updates/*/model.safetensors"))

    document = metrics(tmp_path)
    assert (document["status"], document["run_id"], document["reason"]) == ("finished", out.name, None)
    assert document["started_at"] <= document["finished_at"] and document["config"]["run-id"] == out.name
    assert document["config"]["model-transfer"] == "store"
    accuracy = [entry["global"]["accuracy"] for entry in document["rounds"]]
    assert [entry["round"] for entry in document["rounds"]] == [0, 1, 2]
    # Every round's global model has learned. On 800 samples a client, round 2's may sit a
    # point or two below round 1's; its training started from round 1's model, so its loss is lower.
    assert accuracy[0] < 0.2 and min(accuracy[1:]) > 0.6, accuracy
    first, second = (document["rounds"][r]["clients"] for r in (1, 2))
    assert all(second[c]["train"]["train-loss"] < first[c]["train"]["train-loss"] for c in first), (first, second)
    assert [entry["evaluated_in_round"] for entry in document["rounds"][1:]] == [2, 2]
    for entry in document["rounds"][1:]:
        assert set(entry["clients"]) == {"client-0", "client-1"}
        assert all(set(record) == {"train", "evaluate"} for record in entry["clients"].values())
        assert delivery(entry["xai"]) == {"sent": 2, "stored": 20, "queued": 0, "rejected": 0}
        assert entry["explaining"] == {
            "clients": 2, "of": 2, "fraction_explain": 1.0, "max_explained_clients": 10, "updates": 2, "updates_of": 2,
        }  # fmt: skip
        assert 0 < entry["server_seconds"] < entry["seconds"]
        # How good the stored explanations are, as the trainers counted it from the replies.
        images = {
            client: json.loads((out / f"round-{entry['round']:03d}" / client / "explanations.json").read_text())
            for client in ("client-0", "client-1")
        }
        # Scored after the trainers' replies, before the explainer stopped.
        for manifest in images.values():
            assert set(manifest["sanity"]["methods"]) == {"Grad-CAM", "Grad-CAM++", "HiResCAM", "XGrad-CAM", "LayerCAM"}
            assert all(len(image["faithfulness"]) == 5 and "sanity_passed" in image for image in manifest["images"])
        for flag, count in (("degenerate", "blank"), ("weak", "weak")):
            assert entry["xai"][count] == sum(image[flag] for m in images.values() for image in m["images"])
        assert 0 < entry["evaluate"]["eval-accuracy"] <= 1
        assert entry["checkpoint"] == f"xaitest/runs/{out.name}/round-{entry['round']:03d}/global_model.safetensors"
        checkpoint = (tmp_path / "out" / entry["checkpoint"]).read_bytes()
        assert entry["checkpoint_sha256"] == hashlib.sha256(checkpoint).hexdigest()
        # The trainers named the checkpoint of the model they evaluated, rather than sending it.
        for client in ("client-0", "client-1"):
            manifest = json.loads((out / f"round-{entry['round']:03d}" / client / "explanations.json").read_text())
            assert {image["model_sha256"] for image in manifest["images"]} == {entry["checkpoint_sha256"]}
        # The aggregator explained the global model and each update on its probe set.
        round_dir = out / f"round-{entry['round']:03d}"
        global_manifest = json.loads((round_dir / "global" / "explanations.json").read_text())
        assert {image["model_sha256"] for image in global_manifest["images"]} == {entry["checkpoint_sha256"]}
        assert "sanity" in global_manifest, "the global model's pictures are scored"
        for client in ("client-0", "client-1"):
            update = json.loads((round_dir / "updates" / client / "explanations.json").read_text())
            assert [image["label"] for image in update["images"]] == list(range(10))
            assert update["images"][0]["model_sha256"] != entry["checkpoint_sha256"]
        comparison = entry["comparison"]
        assert comparison["method"] == "HiResCAM" and comparison["flagged"] == []
        for client in ("client-0", "client-1"):
            figures = comparison["clients"][client]
            assert set(figures["distance_to_global"]) == set(figures["distance_to_clients"]) == set(map(str, range(10)))
            assert "z_score" not in figures, "two clients are too few to call one an outlier"
        assert set(comparison["weights"]) == {"client-0", "client-1"}
    assert "drift" in document["rounds"][2]["comparison"]["global"]
    assert document["probe"]["images"] == 80 and document["probe"]["queued"] == 0
    assert wait_until_gone(tmp_path / "work") == []


def test_a_label_flipping_client_is_flagged_and_left_out(tmp_path):
    """On Flower's simulation engine (Ray), with fraction-explain=0.5: two of the three
    clients explain each round, and the flagging, on the aggregator's probe set, still
    sees all three."""
    command = fedxai_run(
        tmp_path, "--explainer-address", f"127.0.0.1:{free_port()}", "--simulation",
        "--set", "attack=label-flip", "--set", "attack-client=2", "--set", "exclude-flagged=true",
        "--set", "fraction-explain=0.5",
    )  # fmt: skip
    command[command.index("--clients") + 1] = "3"
    command[command.index("max-samples=2000")] = "max-samples=0"
    result = subprocess.run(
        command, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "superlink started; it simulates 3 clients (1 CPU, 0 GPU each)" in result.stdout
    assert "client-2 flagged: its explanations of class" in result.stdout
    document = metrics(tmp_path)
    for entry in document["rounds"][2:]:  # from round 2, as trained models differ
        comparison = entry["comparison"]
        assert comparison["flagged"] == ["client-2"], comparison
        assert set(comparison["clients"]["client-2"]["flag_classes"]) & {1, 7}
        assert entry["excluded"] == ["client-2"]
        assert entry["exclusion"] == "left out of the average: client-2"
    out = run_dir(tmp_path)
    for entry in document["rounds"][1:]:
        assert not any(entry["comparison"]["clients"][c]["flagged"] for c in ("client-0", "client-1"))
        assert (entry["explaining"]["clients"], entry["explaining"]["of"]) == (2, 3)
        assert delivery(entry["xai"]) == {"sent": 2, "stored": 20, "queued": 0, "rejected": 0}
        explained = {client for client, record in entry["clients"].items() if record["evaluate"]["xai-sent"] == 1}
        on_disk = {path.name for path in (out / f"round-{entry['round']:03d}").glob("client-*")}
        assert on_disk == explained and len(explained) == 2, (on_disk, explained)
    assert "images stored 20 by 2 of 3 clients" in result.stdout
    assert wait_until_gone(tmp_path / "work") == [], "Ray's processes stop with the run"
    assert sorted(p.name for p in (out / "round-002" / "updates").iterdir()) == ["client-0", "client-1", "client-2"]


def wait_for_line(path: Path, pattern: str, run: subprocess.Popen, count: int = 1) -> re.Match[str]:
    """The ``count``-th match of ``pattern`` in the log at ``path``, once it is written."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        found = list(re.finditer(pattern, path.read_text(errors="replace") if path.exists() else ""))
        if len(found) >= count:
            return found[count - 1]
        if run.poll() is not None:
            pytest.fail(f"the run ended (rc={run.returncode}) before {pattern!r} was logged in {path.name}")
        time.sleep(0.02)
    pytest.fail(f"{pattern!r} was not logged in {path.name}")


def command_line(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # it exited meanwhile
        return b""


def parent_of(pid: int) -> int:
    # "pid (comm) state ppid ...": comm may hold spaces, so split after its ')'.
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def flower_process(work: Path, command: str, *markers: str) -> int:
    """The one process of the run in ``work`` running ``command`` with ``markers`` in its arguments."""
    (pid,) = [
        pid for pid in flower_processes(work) if all(part.encode() in command_line(pid) for part in (command, *markers))
    ]
    return pid


def test_chaos_explainer_superlink_and_a_trainer_killed_mid_run_lose_nothing(tmp_path):
    """In round 1 the explainer is killed (SIGKILL) while it explains, and restarted;
    after round 1 the SuperLink is killed, and `fedxai run --resume` continues the run;
    in round 2, client-1's ClientApp is killed while it trains. The run finishes, and
    every explanation that a trained or evaluated model calls for is stored, complete."""
    from fedxai.storage import LocalStore
    from services.cli.processes import descendants
    from tests.helpers import unlisted_pictures

    address = f"127.0.0.1:{free_port()}"
    work = tmp_path / "work"
    explainer_log = tmp_path / "explainer.log"

    def start_explainer() -> subprocess.Popen:
        with explainer_log.open("ab") as log:
            return subprocess.Popen(
                [FEDXAI, "explainer", "--address", address],
                env={**clean_env(), "FEDXAI_OUTPUT_DIR": str(tmp_path / "out")},
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def start_run(attempt: str, *args: str) -> subprocess.Popen:
        with (tmp_path / f"{attempt}.log").open("w") as log:
            return subprocess.Popen(
                fedxai_run(tmp_path, "--explainer-address", address, "--external-explainer", *args),
                cwd=tmp_path, env=clean_env(), stdout=log, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip

    def round_1_recorded() -> bool:
        found = list((tmp_path / "out").glob("xaitest/runs/*/metrics.json"))
        return bool(found) and len(json.loads(found[0].read_text())["rounds"]) > 1

    explainer = start_explainer()
    run = start_run("first")
    try:
        killed_call = wait_for_line(explainer_log, r"explaining \d+ samples for (\S+)", run)[1]
        explainer.kill()
        explainer.wait()
        explainer = start_explainer()

        deadline = time.monotonic() + RUN_TIMEOUT
        while not round_1_recorded():
            assert time.monotonic() < deadline and run.poll() is None, "round 1 was not recorded"
            time.sleep(0.2)
        os.kill(flower_process(work, "flower-superlink"), signal.SIGKILL)
        assert run.wait(timeout=60) == 1
        first = (tmp_path / "first.log").read_text()
        assert "fedxai: run failed: superlink exited during the run" in first, first
        assert wait_until_gone(work) == [], "the first attempt stopped what it started"

        run_id = run_dir(tmp_path).name
        (work / "logs" / "supernode-1.log").unlink()
        run = start_run("resumed", "--resume", run_id)
        wait_for_line(work / "logs" / "supernode-1.log", r"client-1: round 2, training on", run)
        # `fedxai trainer` forks a ClientApp process per message, under its own command line.
        line = [
            pid
            for pid in flower_processes(work)
            if b"trainer" in command_line(pid) and b"partition-id=1 " in command_line(pid)
        ]
        (trainer,) = [pid for pid in line if parent_of(pid) not in line]
        clientapps = [pid for pid in descendants({trainer}) if pid in line]
        assert clientapps, "client-1 trains in a ClientApp process of its trainer"
        for pid in clientapps:
            os.kill(pid, signal.SIGKILL)
        run.wait(timeout=RUN_TIMEOUT)
    finally:
        stop(run)
        explainer.terminate()
        explainer.wait(timeout=30)
    output = (tmp_path / "resumed.log").read_text()
    assert run.returncode == 0, output
    assert f"run {run_id}, 2 clients, 2 rounds (continuing after round 1)" in output
    # Round 1 was recorded before its clients' evaluation, which the resumed run's first
    # message carried: it is reported now, and client-1's was lost with its ClientApp (its
    # new node said who it is only later: the record names it, below).
    assert "round 1/2  global accuracy" in output and "round 2/2  global accuracy" in output
    assert "client-1 did not train: ClientApp stopped responding." in output

    document = metrics(tmp_path)
    assert document["status"] == "finished" and [entry["round"] for entry in document["rounds"]] == [0, 1, 2]
    assert [entry["after_round"] for entry in document["resumed"]] == [1]
    round_1, round_2 = document["rounds"][1:]
    assert round_1["clients"]["client-1"] == {
        "train": round_1["clients"]["client-1"]["train"],
        "failed": {"evaluate": "ClientApp stopped responding."},
    }, "client-1 trained in round 1, then died evaluating its global model in the resumed run"
    assert set(round_1["clients"]["client-0"]) == {"train", "evaluate"}
    assert (round_1["evaluated_in_round"], round_2["evaluated_in_round"]) == (2, 2)
    assert round_2["clients"]["client-1"] == {
        "evaluate": round_2["clients"]["client-1"]["evaluate"],
        "failed": {"train": "ClientApp stopped responding."},
    }, "client-1 evaluated the round-2 model it could not train"
    # The call the explainer died in was sent again, and explained by the new process.
    assert f"explained {killed_call}: 10 pictures" in explainer_log.read_text()
    out = run_dir(tmp_path)
    expected = {
        "round-001": ["client-0", "client-1", "global", "updates/client-0", "updates/client-1"],
        "round-002": ["client-0", "client-1", "global", "updates/client-0"],
    }
    for round_dir, folders in expected.items():
        assert sorted(p.name for p in (out / round_dir / "updates").iterdir()) == [
            f.removeprefix("updates/") for f in folders if f.startswith("updates/")
        ]
        for folder in folders:
            manifest = json.loads((out / round_dir / folder / "explanations.json").read_text())
            assert [image["label"] for image in manifest["images"]] == list(range(10)), (round_dir, folder)
            for image in manifest["images"]:
                decode_jpeg((tmp_path / "out" / image["key"]).read_bytes())
    assert unlisted_pictures(LocalStore(tmp_path / "out")) == []
    # The aggregator compared each update it had explained, once delivered.
    assert set(round_1["comparison"]["clients"]) == {"client-0", "client-1"}
    assert set(round_2["comparison"]["clients"]) == {"client-0"}
    assert all("distance_to_global" in figures for figures in round_1["comparison"]["clients"].values())
    assert list(work.rglob("*.pb")) == [], "no request is left in an outbox"


def test_refusals_before_anything_starts(tmp_path):
    def refused(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            fedxai_run(tmp_path, *args), cwd=tmp_path, env=clean_env(),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = refused("--explainer-address", address)
    assert result.returncode == 2
    assert f"explainer-address {address} is in use" in result.stderr

    # It starts one explainer; replicas are for a federation whose explainers run already.
    result = refused("--explainer-address", "ipv4:127.0.0.1:50051,127.0.0.1:50052")
    assert result.returncode == 2
    assert "fedxai run starts one explainer, at a HOST:PORT; add --external-explainer" in result.stderr
    result = refused("--client-cpus", "2")
    assert result.returncode == 2 and "resources of simulated clients: add --simulation" in result.stderr
    result = refused("--set", "fraction-explain=0")
    assert (result.returncode, result.stderr) == (2, "fedxai: error: fraction-explain must lie in (0, 1]\n")

    result = refused("--data-dir", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert f"data-dir {tmp_path / 'nowhere'}: no MNIST IDX files" in result.stderr

    # A dataset whose classes are not the architecture's outputs: eleven folders for mnist_cnn.
    for label in range(11):
        (tmp_path / "eleven" / f"class-{label:02d}").mkdir(parents=True)
        assert cv2.imwrite(str(tmp_path / "eleven" / f"class-{label:02d}" / "a.png"), np.zeros((20, 20), np.uint8))
    result = refused("--set", "dataset=image-folder", "--data-dir", str(tmp_path / "eleven"))
    assert (result.returncode, result.stderr) == (
        2, "fedxai: error: dataset image-folder has 11 classes; architecture mnist_cnn has 10 outputs\n"
    )  # fmt: skip

    result = refused("--set", "local-epoch=2")
    assert result.returncode == 2
    assert "unknown task setting 'local-epoch' (did you mean 'local-epochs'?)" in result.stderr

    taken = tmp_path / "out" / "xaitest" / "runs" / "taken" / "metrics.json"
    taken.parent.mkdir(parents=True)
    taken.write_text('{"status": "finished"}')
    result = refused("--set", "run-id=taken")
    assert result.returncode == 2
    assert "run-id 'taken': task xaitest has a run of that id already" in result.stderr
    assert taken.read_text() == '{"status": "finished"}'

    # --resume: a run that is not there, one with no global model stored, one with no round left.
    for run, message in (
        ("nosuch", "--resume nosuch: task xaitest has no such run"),
        ("taken", "--resume taken: the run stored no global model yet; start a new run instead"),
        ("done", "resume-after-round 2: the run has only 2 rounds (raise num-server-rounds to train it further)"),
        ("../taken", "'../taken' is not a valid id"),
    ):
        if run == "done":
            rounds = [{"round": r, "global": {}, "checkpoint": f"r{r}", "checkpoint_sha256": ""} for r in (1, 2)]
            document = {"status": "finished", "config": {"num-server-rounds": 2}, "rounds": rounds}
            (tmp_path / "out" / "xaitest" / "runs" / "done").mkdir()
            (tmp_path / "out" / "xaitest" / "runs" / "done" / "metrics.json").write_text(json.dumps(document))
        result = refused("--resume", run)
        assert result.returncode == 2 and message in result.stderr, (run, result.stderr)
    assert taken.read_text() == '{"status": "finished"}'

    result = refused("--rounds", "0")
    assert (result.returncode, result.stderr) == (2, "fedxai: error: num-server-rounds must be at least 1\n")

    result = refused("--round", "3")
    assert result.returncode == 2 and result.stderr.startswith("usage: fedxai run ")
    assert "fedxai run: error: unrecognized arguments: --round 3" in result.stderr
    assert not (tmp_path / "work").exists(), "nothing may start for a refused run"


def test_dry_run_shows_every_process_and_starts_none(tmp_path):
    env = {
        **clean_env(),
        "FEDXAI_S3_ENDPOINT": "127.0.0.1:9",
        "FEDXAI_S3_ACCESS_KEY": "me",
        "FEDXAI_S3_SECRET_KEY": "s3cr3t-value",
    }
    result = subprocess.run(
        [*fedxai_run(tmp_path, "--explainer-address", "127.0.0.1:50999"), "--dry-run"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    processes = re.findall(r"^([a-z0-9-]+):$", out, re.M)
    assert processes == ["explainer", "superlink", "superexec", "supernode-0", "supernode-1", "flwr-run"]
    assert re.search(r"^  command: \S+ -m services.cli explainer --address 127.0.0.1:50999$", out, re.M)
    # The SuperLink leaves its ServerApps to `fedxai superexec`, which reaches its Runtime API.
    link = re.search(
        r"^  command: flower-superlink --insecure .* --port (\d+) --disable-runtime-dependency-installation "
        r"--isolation process$",
        out,
        re.M,
    )
    assert link, out
    superexec = rf"^  command: \S+ -m services.cli superexec -- --insecure --runtime-api-address 127.0.0.1:{link[1]}$"
    assert re.search(superexec, out, re.M)
    assert "partition-id=1 num-partitions=2" in out and "flwr run " in out
    assert "env FEDXAI_S3_SECRET_KEY=****" in out and "s3cr3t-value" not in out
    assert "env FEDXAI_S3_ENDPOINT=127.0.0.1:9" in out
    assert "num-server-rounds = 2" in out and re.search(r'^run-id = "\d{8}-\d{6}-[0-9a-f]{4}"$', out, re.M)
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists(), "nothing started, nothing written"

    # On the simulation engine: the SuperLink simulates the clients, and no SuperNode starts.
    result = subprocess.run(
        [*fedxai_run(tmp_path, "--simulation", "--client-cpus", "2", "--client-gpus", "0.5"), "--dry-run"],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert re.findall(r"^([a-z0-9-]+):$", result.stdout, re.M) == ["explainer", "superlink", "flwr-run"]
    assert re.search(r"^  command: flower-superlink --insecure .* --simulation$", result.stdout, re.M)
    assert (
        "--federation-config 'num-supernodes=2 client-resources-num-cpus=2 client-resources-num-gpus=0.5'"
        in result.stdout
    )


def test_runs_on_s3_storage(tmp_path, nanio_endpoint):
    from minio import Minio

    from tests.conftest import NANIO_ACCESS_KEY, NANIO_SECRET_KEY

    env = {
        **clean_env(),
        "FEDXAI_S3_ENDPOINT": nanio_endpoint,
        "FEDXAI_S3_ACCESS_KEY": NANIO_ACCESS_KEY,
        "FEDXAI_S3_SECRET_KEY": NANIO_SECRET_KEY,
        "FEDXAI_S3_BUCKET": "fedxai-run",
    }
    command = fedxai_run(tmp_path, "--explainer-address", f"127.0.0.1:{free_port()}")
    command[command.index("--rounds") + 1] = "1"
    client = Minio(nanio_endpoint, access_key=NANIO_ACCESS_KEY, secret_key=NANIO_SECRET_KEY, secure=False)

    def keys() -> set[str]:
        listed = client.list_objects(bucket_name="fedxai-run", prefix="xaitest/", recursive=True)
        return {o.object_name for o in listed}

    def document(run: str) -> dict:
        response = client.get_object(bucket_name="fedxai-run", object_name=f"xaitest/runs/{run}/metrics.json")
        try:
            return json.loads(response.read())
        finally:
            response.close()
            response.release_conn()

    runs = []
    # The same task twice into one bucket, the second without explanations: two runs, apart.
    for extra in ([], ["--no-xai"]):
        result = subprocess.run(
            [*command, *extra], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "storage s3://fedxai-run" in result.stdout
        (run,) = re.findall(r"^done: run (\S+), 1 round,", result.stdout, re.M)
        runs.append(run)
        if not extra:
            first_keys = keys()
    assert not (tmp_path / "out").exists(), "nothing goes to the local folder"

    first, second = runs
    assert first < second, "run ids sort by start time"
    for client_id in ("client-0", "client-1"):
        assert {f"xaitest/runs/{first}/round-001/{client_id}/gradcam_class_{c}.jpg" for c in range(10)} <= keys()
    assert f"xaitest/runs/{first}/round-001/global_model.safetensors" in keys()
    assert (document(first)["status"], document(first)["rounds"][1]["xai"]["stored"]) == ("finished", 20)
    second_keys = keys() - first_keys
    assert all(key.startswith(f"xaitest/runs/{second}/") for key in second_keys), "the second run touched nothing else"
    assert not any("gradcam_class_" in key for key in second_keys)
    assert document(second)["config"]["xai-enabled"] is False and document(first)["config"]["xai-enabled"] is True
    assert f"xaitest/runs/{second}/logs/supernode-0.log" in keys()
