"""The `fedxai` command as a person meets it, as real processes: the explainer
starts, serves, stops on a signal, and refuses bad configuration with a clear
message before serving; help, refusals and `fedxai status` against real servers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedxai.settings import ExplainerSettings
from fedxai.storage import LocalStore
from fedxai.storage.layout import metrics_key
from services.explainer.server import create_server
from tests.conftest import NANIO_ACCESS_KEY, free_port, wait_for_port
from tests.helpers import FEDXAI, RUN


def clean_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDXAI_")}
    return {**env, **overrides}


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serves_then_stops_gracefully_on_a_signal(tmp_path, stop_signal):
    port = free_port()
    process = subprocess.Popen(
        [FEDXAI, "explainer", "--address", f"127.0.0.1:{port}"],
        env=clean_env(FEDXAI_OUTPUT_DIR=str(tmp_path / "out")),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_port(port, process, timeout=60)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert (tmp_path / "out").is_dir(), "the output folder is created at start"
        process.send_signal(stop_signal)
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, output
    assert f"serving on 127.0.0.1:{port} (plaintext), storage: the folder {tmp_path / 'out'}" in output
    assert "explainer stopped" in output


def run_fedxai(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FEDXAI, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_bad_boolean_setting_is_named():
    env = clean_env(
        FEDXAI_S3_ENDPOINT="127.0.0.1:9",
        FEDXAI_S3_ACCESS_KEY="a",
        FEDXAI_S3_SECRET_KEY="b",
        FEDXAI_S3_SECURE="maybe",
    )
    result = run_fedxai("explainer", "--address", "127.0.0.1:0", env=env)
    assert result.returncode == 2
    assert "FEDXAI_S3_SECURE='maybe' is not a boolean" in result.stderr


def test_missing_secret_is_named():
    result = run_fedxai("explainer", env=clean_env(FEDXAI_S3_ENDPOINT="127.0.0.1:9", FEDXAI_S3_ACCESS_KEY="a"))
    assert result.returncode == 2
    assert "FEDXAI_S3_SECRET_KEY is not" in result.stderr


def test_wrong_s3_credentials_stop_the_start(nanio_endpoint):
    env = clean_env(
        FEDXAI_S3_ENDPOINT=nanio_endpoint,
        FEDXAI_S3_ACCESS_KEY=NANIO_ACCESS_KEY,
        FEDXAI_S3_SECRET_KEY="wrong-secret",
    )
    result = run_fedxai("explainer", "--address", "127.0.0.1:0", env=env)
    assert result.returncode == 1
    assert "storage error" in result.stderr and "refused" in result.stderr
    assert "wrong-secret" not in result.stderr


def test_port_in_use_is_reported(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_fedxai(
            "explainer", "--address", f"127.0.0.1:{port}", env=clean_env(FEDXAI_OUTPUT_DIR=str(tmp_path))
        )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_download_mnist_leaves_a_filled_folder_alone(tmp_path):
    from tests.conftest import MNIST_DIR

    result = run_fedxai("download-mnist", str(MNIST_DIR), env=clean_env())
    assert result.returncode == 0, result.stderr
    assert f"MNIST IDX files already in {MNIST_DIR}" in result.stdout


@pytest.mark.parametrize("command", [["credentials", "{tmp}", "--trainer", "client-0"], ["download-mnist", "{mnist}"]])
def test_the_light_commands_never_import_torch(tmp_path, command):
    """Compose gives them 256 MB, which importing torch alone would overrun."""
    from tests.conftest import MNIST_DIR

    arguments = [part.format(tmp=tmp_path, mnist=MNIST_DIR) for part in command]
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "services.cli", *arguments],
        env=clean_env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "fedxai.datasets" in imported or command[0] == "credentials"
    assert not {name for name in imported if name.split(".")[0] in ("torch", "torchvision")}


def test_help_is_plain_text_and_shows_the_defaults(tmp_path):
    top = run_fedxai("--help", env=clean_env()).stdout
    assert "``" not in top and "FedXAI: federated learning with Flower" in top
    for command in ("explainer", "run", "aggregator", "health", "status", "monitor", "download-mnist"):
        assert f"    {command} " in top
    explainer = run_fedxai("explainer", "--help", env=clean_env()).stdout
    assert "--max-message-mib MAX_MESSAGE_MIB\n                        largest request (default: 16)" in explainer
    health = run_fedxai("health", "--help", env=clean_env()).stdout
    assert "seconds to wait for the answer (default: 3.0)" in health
    download = run_fedxai("download-mnist", "--help", env=clean_env()).stdout
    assert "folder for the IDX files" in download
    # Every command that reads or writes the store takes the same flag.
    for command in ("explainer", "run", "aggregator", "status", "monitor"):
        assert "--output-dir OUTPUT_DIR" in run_fedxai(command, "--help", env=clean_env()).stdout, command


def test_an_unknown_flag_is_refused_with_the_commands_usage(tmp_path):
    result = run_fedxai("monitor", "--adress", "127.0.0.1:1", env=clean_env())
    assert result.returncode == 2
    assert result.stderr.startswith("usage: fedxai monitor ")
    assert "fedxai monitor: error: unrecognized arguments: --adress 127.0.0.1:1" in result.stderr


def test_an_explainer_refuses_a_port_another_explainer_holds(tmp_path):
    first = create_server(ExplainerSettings(address="127.0.0.1:0"), LocalStore(tmp_path / "store"))
    try:
        result = run_fedxai(
            "explainer",
            "--address",
            f"127.0.0.1:{first.port}",
            "--output-dir",
            str(tmp_path / "store"),
            env=clean_env(),
        )
    finally:
        first.stop(grace=None)
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{first.port} (in use, or not this host's address)" in result.stderr


def test_status_says_what_is_down_and_exits_1(tmp_path):
    explainer = create_server(ExplainerSettings(address="127.0.0.1:0"), LocalStore(tmp_path / "store"))
    store = LocalStore(tmp_path / "store")
    store.check()
    now = datetime.now(UTC).isoformat(timespec="seconds")
    running = {"status": "running", "num_rounds": 3, "updated_at": now, "rounds": [{"round": 0}, {"round": 1}]}
    store.put(metrics_key("xaitest", RUN), json.dumps(running).encode(), "application/json")
    finished = {**running, "status": "finished"}
    store.put(metrics_key("xaitest", "20261129-000000-0000"), json.dumps(finished).encode(), "application/json")
    try:
        result = run_fedxai(
            "status", "--explainer-address", f"127.0.0.1:{explainer.port}", "--work-dir", str(tmp_path / "work"),
            "--output-dir", str(tmp_path / "store"), env=clean_env(),
        )  # fmt: skip
    finally:
        explainer.stop(grace=None)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "ok   explainer: SERVING"
    assert lines[1].startswith(f"DOWN superlink: no SuperLink connection in {tmp_path / 'work' / 'flwr'}")
    assert lines[2] == f"ok   store: the folder {tmp_path / 'store'}"
    assert lines[3:] == ["runs going on:", f"  xaitest run {RUN}: running, round 1/3, last update {now}"]
    assert not (tmp_path / "work").exists(), "status creates nothing"


def test_status_on_a_missing_store_creates_none(tmp_path):
    port = free_port()
    result = run_fedxai(
        "status", "--explainer-address", f"127.0.0.1:{port}", "--timeout", "0.5", "--work-dir", str(tmp_path / "w"),
        "--output-dir", str(tmp_path / "nowhere"), env=clean_env(),
    )  # fmt: skip
    assert result.returncode == 1
    assert "DOWN explainer: UNAVAILABLE" in result.stdout
    assert f"DOWN store: output folder {tmp_path / 'nowhere'} does not exist" in result.stdout
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("rounds", ["0", "-1"])
def test_zero_or_negative_rounds_are_refused(tmp_path, rounds):
    result = run_fedxai("run", "--rounds", rounds, "--dry-run", "--work-dir", str(tmp_path / "w"), env=clean_env())
    assert result.returncode == 2
    assert result.stderr == "fedxai: error: num-server-rounds must be at least 1\n"


def test_status_says_why_the_superlink_does_not_answer(tmp_path):
    flwr_home = tmp_path / "work" / "flwr"
    flwr_home.mkdir(parents=True)
    connection = (
        f'[superlink]\ndefault = "fedxai-local"\n[superlink.fedxai-local]\naddress = "127.0.0.1:{free_port()}"\n'
    )
    (flwr_home / "config.toml").write_text(connection + "insecure = true\n")
    (tmp_path / "store").mkdir()
    result = run_fedxai(
        "status", "--explainer-address", f"127.0.0.1:{free_port()}", "--timeout", "0.5",
        "--work-dir", str(tmp_path / "work"), "--output-dir", str(tmp_path / "store"), env=clean_env(),
    )  # fmt: skip
    assert result.returncode == 1
    assert "DOWN superlink: not answering (Connection to the SuperLink is unavailable." in result.stdout


def test_stopping_a_run_stops_what_its_dead_children_left_behind(tmp_path):
    """A child that dies leaves its own children to init, in sessions of their own, as a
    SuperLink killed mid-run leaves its app processes: stopping finds them by their mark."""
    from services.cli.processes import Children, Process, marked_processes

    children = Children(tmp_path, {"PATH": os.environ["PATH"]})
    pid_file = tmp_path / "orphan.pid"
    # The shell starts a sleeper in a new session, writes its pid and exits at once.
    children.start(Process("parent", ["sh", "-c", f"setsid sleep 300 & echo $! > {pid_file}"], {}))
    children.processes["parent"].wait(timeout=10)
    while not pid_file.exists() or not pid_file.read_text().strip():
        time.sleep(0.01)
    orphan = int(pid_file.read_text())
    # The pid is written at fork: wait until the orphan has become `sleep`, its environment
    # set up (read mid-exec, /proc shows an empty one).
    deadline = time.monotonic() + 10
    while not (
        Path(f"/proc/{orphan}/cmdline").read_bytes().startswith(b"sleep\0")
        and Path(f"/proc/{orphan}/environ").read_bytes()
    ):
        assert time.monotonic() < deadline, "the orphan never started sleeping"
        time.sleep(0.01)
    assert marked_processes(children.mark) == {orphan}, "the orphan carries the mark"
    children.stop_all()
    assert marked_processes(children.mark) == set()
    try:  # gone, or dead and not yet reaped by init
        state = Path(f"/proc/{orphan}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z"), state


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--isolation", "subprocess"], "sets up the ClientApps' runtime itself; leave out --isolation\n"),
        (["--ssl-certfile=cert.pem"], "leave out --ssl-certfile=cert.pem\n"),
        (["--host", "0.0.0.0"], "--host 0.0.0.0: the Runtime API hands out tasks and their tokens without TLS"),
        (["--port", "http"], "--port 'http' is not a port number\n"),
    ],
)
def test_trainer_refuses_runtime_flags_it_cannot_follow(flags, message):
    result = run_fedxai("trainer", "--", "--insecure", *flags, env=clean_env())
    assert result.returncode == 2
    assert result.stderr.startswith("fedxai: error: ") and message in result.stderr


def test_superexec_needs_the_superlinks_runtime_api_address():
    result = run_fedxai("superexec", "--", "--insecure", env=clean_env())
    assert result.returncode == 2
    assert result.stderr == "fedxai: error: --runtime-api-address HOST:PORT, the SuperLink's Runtime API, is required\n"


def waiting_trainer(port: int) -> tuple[subprocess.Popen, set[int]]:
    """A trainer whose SuperNode waits for a SuperLink that is not there; and the SuperNode,
    once its Runtime API listens on ``port``."""
    from services.cli.processes import descendants

    trainer = subprocess.Popen(
        [FEDXAI, "trainer", "--", "--insecure", "--superlink", f"127.0.0.1:{free_port()}", "--port", str(port)],
        env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_port(port, timeout=60)
    except TimeoutError:
        trainer.kill()
        raise
    return trainer, descendants({trainer.pid})


def still_there(pids: set[int], timeout: float = 0.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := [pid for pid in pids if Path(f"/proc/{pid}").exists()]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_a_trainer_and_its_supernode_stop_together(tmp_path):
    result = run_fedxai("trainer", "--", "--no-such-flag", env=clean_env())
    assert result.returncode == 2, "flower-supernode's usage error, passed on"
    assert "unrecognized arguments: --no-such-flag" in result.stderr
    port = free_port()

    # Told to stop, the trainer stops its SuperNode and reaps it.
    trainer, supernodes = waiting_trainer(port)
    assert supernodes, "the SuperNode runs as the trainer's child"
    trainer.send_signal(signal.SIGTERM)
    _, stderr = trainer.communicate(timeout=30)
    assert trainer.returncode == 130, stderr
    assert still_there(supernodes) == []

    # Killed outright, it takes its SuperNode with it (the kernel sends it SIGTERM).
    trainer, supernodes = waiting_trainer(port)
    trainer.kill()
    trainer.communicate(timeout=10)
    assert still_there(supernodes, timeout=15) == [], "the orphaned SuperNode stopped"

    # A SuperNode that dies ends its trainer, with the status a shell would report.
    trainer, supernodes = waiting_trainer(port)
    time.sleep(1)  # the trainer asks the SuperNode for tasks by now
    for pid in supernodes:
        os.kill(pid, signal.SIGKILL)
    try:
        assert trainer.wait(timeout=15) == 128 + signal.SIGKILL
    finally:
        trainer.kill()
        trainer.communicate()
