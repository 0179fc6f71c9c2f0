"""The explainer under attack, as a separate `fedxai explainer` process with its
callers checked, on loopback: what it answers, how much memory it takes, whether
health keeps answering, and how fast a hung store is reported.

    python -m benchmarks.hostile_bench [--requests 10000] [--mnist-dir DIR]    (from the repository root)

1. A fuzzer in the style of a reflection fuzzer: every field of ExplainRequest,
   nested ones too, set to hostile values (empty, huge, negative, unknown enum
   values, traversal ids, random or truncated bytes, PNG bombs), one to three at a
   time, on valid requests of which some are sent unchanged so that compute and
   storage are reached; with a writer's, a reader's or no token. Every status
   code is counted: none may be INTERNAL or UNKNOWN.
2. Memory mixes: 4 calls at once with 32 MB of safetensors holding 400,000 tensors,
   20 M labels, 16 M normalisation floats, then 24 requests of 60 MiB at once, then
   8 valid calls of the largest batch at once. Peak RSS is the process's VmHWM.
3. A CPU attack (2, then 8 callers, in processes of their own, sending PNGs that
   inflate to 1 GiB) while health is checked every 50 ms: its latency percentiles.
4. A store that accepts connections and never answers (nanio frozen with SIGSTOP):
   how long until UNAVAILABLE and NOT_SERVING; then the store killed while 8
   callers store and restarted: how many pictures no manifest lists.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import multiprocessing
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedxai.channels import open_channel
from fedxai.mnist import load_split
from fedxai.models import architectures
from fedxai.settings import MIB, StorageSettings
from fedxai.storage.s3 import S3Store
from fedxai.tensors import encode_state_dict
from fedxai.v1 import explainer_pb2 as pb
from fedxai.v1 import explainer_pb2_grpc as pb_grpc
from services.cli.credentials import make_credentials
from tests.helpers import explain_request, inflating_png, png, safetensors_with_header, unlisted_pictures

REPO_ROOT = Path(__file__).resolve().parents[1]
FEDXAI = str(Path(sys.executable).with_name("fedxai"))
OPTIONS = (("grpc.max_send_message_length", 256 * MIB), ("grpc.max_receive_message_length", 256 * MIB))
SERVICE = "fedxai.v1.Explainer"


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Explainer:
    """A `fedxai explainer` process, its callers' tokens and its memory figures."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.credentials = work / "credentials"
        if not self.credentials.exists():
            make_credentials(self.credentials, ["client-0"])
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        callers = str(self.credentials / "callers.toml")
        command = [FEDXAI, "explainer", "--address", self.address, "--callers-file", callers]
        with open(work / "explainer.log", "ab") as log:
            self.process = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 60
        while self.health() != health_pb2.HealthCheckResponse.SERVING:
            assert self.process.poll() is None and time.monotonic() < deadline, "the explainer did not start"
            time.sleep(0.2)

    def token(self, name: str) -> str:
        return (self.credentials / f"{name}.token").read_text().strip()

    def stub(self, token: str = "") -> tuple[grpc.Channel, pb_grpc.ExplainerStub]:
        channel = open_channel(self.address, token=token, options=OPTIONS)
        return channel, pb_grpc.ExplainerStub(channel)

    def health(self, timeout: float = 2.0) -> int:
        with grpc.insecure_channel(self.address) as channel:
            try:
                request = health_pb2.HealthCheckRequest(service=SERVICE)
                return health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout).status
            except grpc.RpcError:
                return -1

    def memory(self) -> tuple[float, float]:
        """(current RSS, peak RSS) in MiB."""
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines())
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


# ---------------------------------------------------------------- the fuzzer

STRINGS = ["", "../../etc", "a" * 100_000, "\x00", "é/ü", "CON", ".", "x" * 64, "client-0", "global", "updates"]
INTS = [0, -1, 1, 2**31 - 1, -(2**31), 2**32 - 1, 2**63 - 1, 7, 10_000_000]


def hostile_value(field: FieldDescriptor, rng: random.Random, bombs: list[bytes]) -> object:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return rng.choice(STRINGS)
    if kind == FieldDescriptor.TYPE_BYTES:
        choice = rng.randrange(4)
        if choice == 0:
            return b""
        if choice == 1:
            return rng.randbytes(rng.choice([1, 8, 100, 4096, 65536]))
        return rng.choice(bombs)
    if kind == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if kind == FieldDescriptor.TYPE_ENUM:
        return rng.choice([0, 1, 2, 3, 6, 7, 99, -5])
    if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return rng.choice([0.0, -1.0, 1e38, float("nan"), float("inf"), 1e-45])
    value = rng.choice(INTS)
    if kind in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return value % 2**32
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return value % 2**64
    if kind in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32):
        return max(-(2**31), min(2**31 - 1, value))
    return value


def fields_of(message: Message, prefix: str = "") -> list[tuple[Message, FieldDescriptor]]:
    found = []
    for field in message.DESCRIPTOR.fields:
        found.append((message, field))
        if field.type == FieldDescriptor.TYPE_MESSAGE and not field.is_repeated:
            found += fields_of(getattr(message, field.name), f"{prefix}{field.name}.")
    return found


def mutate(request: pb.ExplainRequest, rng: random.Random, bombs: list[bytes]) -> None:
    for _ in range(rng.randint(1, 3)):
        message, field = rng.choice(fields_of(request))
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.is_repeated:
                continue
            message.ClearField(field.name)
            continue
        if field.is_repeated:
            values = getattr(message, field.name)
            del values[:]
            count = rng.choice([0, 1, 3, 1000, 100_000])
            if field.type in (FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_STRING):
                count = min(count, 300)
            values.extend(hostile_value(field, rng, bombs) for _ in range(count))
        else:
            try:
                setattr(message, field.name, hostile_value(field, rng, bombs))
            except (ValueError, TypeError):  # a value protobuf itself refuses for this field
                continue


def fuzz(explainer: Explainer, valid: Callable[[int], pb.ExplainRequest], count: int, bombs: list[bytes]) -> None:
    tokens = [explainer.token("operator")] * 18 + [explainer.token("reader"), ""]
    codes: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    channels = {token: explainer.stub(token) for token in set(tokens)}

    def one(index: int) -> None:
        rng = random.Random(index)
        request = valid(index)
        if rng.random() >= 0.1:  # one in ten goes unchanged: compute and storage are reached
            mutate(request, rng, bombs)
        try:
            channels[rng.choice(tokens)][1].Explain(request, timeout=60)
            code = "OK"
        except grpc.RpcError as error:
            code = error.code().name
            if code in ("INTERNAL", "UNKNOWN"):
                out(f"  request {index}: {code}: {error.details()}")
        except ValueError as error:  # the client refused to serialise it
            code = f"not sent ({error.__class__.__name__})"
        with lock:
            codes[code] += 1

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))
    for channel, _ in channels.values():
        channel.close()
    seconds = time.monotonic() - started
    out(f"fuzzer: {count} requests in {seconds:.0f} s, 8 callers")
    for code, number in codes.most_common():
        out(f"  {code:<22} {number}")
    internal = codes["INTERNAL"] + codes["UNKNOWN"]
    healthy = explainer.health() == health_pb2.HealthCheckResponse.SERVING
    out(f"  INTERNAL or UNKNOWN: {internal}; health afterwards: {'SERVING' if healthy else 'NOT SERVING'}")


# ---------------------------------------------------------------- memory


def at_once(explainer: Explainer, token: str, requests: list[pb.ExplainRequest]) -> collections.Counter[str]:
    codes: collections.Counter[str] = collections.Counter()
    channel, stub = explainer.stub(token)

    def one(request: pb.ExplainRequest) -> str:
        try:
            stub.Explain(request, timeout=300)
            return "OK"
        except grpc.RpcError as error:
            return error.code().name

    with channel, ThreadPoolExecutor(len(requests)) as pool:
        codes.update(pool.map(one, requests))
    return codes


def memory_mixes(explainer: Explainer, valid: Callable[[int], pb.ExplainRequest], images: np.ndarray) -> None:
    """The issue's mixes, each sized to fill the explainer's request limit (larger ones
    are refused before they are read), then one over it and valid calls of its largest batch."""
    token = explainer.token("operator")
    channel, stub = explainer.stub(token)
    with channel:
        info = stub.GetInfo(pb.GetInfoRequest(), timeout=10)
    room = int(info.max_message_bytes * 0.9) - valid(0).ByteSize()
    tensors = valid(0)
    count = room // 80
    header = (
        b"{"
        + b",".join(
            f'"t{i}":{{"dtype":"F32","shape":[1],"data_offsets":[{4 * i},{4 * i + 4}]}}'.encode() for i in range(count)
        )
        + b"}"
    )
    tensors.inline_model.safetensors = safetensors_with_header(header[: room - 4 * count]) + b"\0" * 4 * count
    labels = valid(1)
    labels.labels.extend([0] * room)
    floats = valid(2)
    floats.normalization.mean.extend([0.5] * (room // 4))
    big = valid(3)
    big.tensor.data = big.tensor.data + b"\0" * room
    over = valid(3)
    over.tensor.data = over.tensor.data + b"\0" * (60 * MIB)
    largest = explain_request(
        images[: info.max_batch_size], np.arange(info.max_batch_size) % 10, valid(0).inline_model.safetensors
    )
    limit = f"{info.max_message_bytes / MIB:.0f} MiB"
    mixes = {
        f"4 x safetensors of {count:,} tensors ({limit})": [tensors] * 4,
        f"4 x {room / 1e6:.0f} M labels ({limit})": [labels] * 4,
        f"4 x {room / 4e6:.1f} M normalisation floats ({limit})": [floats] * 4,
        f"24 x requests of {limit}": [big] * 24,
        "24 x requests of 60 MiB (over the limit)": [over] * 24,
        f"8 x {info.max_batch_size}-sample valid calls": [largest] * 8,
    }
    out("memory: peak RSS of the explainer process (VmHWM) after each mix")
    for name, requests in mixes.items():
        started = time.monotonic()
        codes = at_once(explainer, token, requests)
        rss, peak = explainer.memory()
        answer = ", ".join(f"{code} {n}" for code, n in codes.most_common())
        out(f"  {name:<48} {answer:<26} {time.monotonic() - started:5.1f} s  RSS {rss:5.0f} MiB, peak {peak:5.0f} MiB")


# ---------------------------------------------------------------- CPU attack and a hung store


def attack(address: str, token: str, request: bytes, seconds: float, callers: int) -> None:
    """One attacking process: ``callers`` threads sending ``request`` until ``seconds`` pass."""
    bomb = pb.ExplainRequest.FromString(request)
    deadline = time.monotonic() + seconds

    def caller() -> None:
        with open_channel(address, token=token, options=OPTIONS) as channel:
            stub = pb_grpc.ExplainerStub(channel)
            while time.monotonic() < deadline:
                with contextlib.suppress(grpc.RpcError):  # refused, as it should be
                    stub.Explain(bomb, timeout=5)

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_attack(
    explainer: Explainer, valid: Callable[[int], pb.ExplainRequest], seconds: float, processes: int, callers: int
) -> None:
    bomb = valid(0)
    bomb.ClearField("tensor")
    bomb.images.images.extend([inflating_png(28, 28, 1 << 30)] * 8)
    del bomb.labels[:]
    bomb.labels.extend([0] * 8)
    # The attackers run in processes of their own: this one only measures.
    spawn = multiprocessing.get_context("spawn")
    arguments = (explainer.address, explainer.token("operator"), bomb.SerializeToString(), seconds + 5, callers)
    attackers = [spawn.Process(target=attack, args=arguments) for _ in range(processes)]
    for process in attackers:
        process.start()
    time.sleep(5)  # the attackers start and reach full speed
    latencies = []
    started_cpu, started = cpu_seconds(explainer.process.pid), time.monotonic()
    deadline = started + seconds
    with grpc.insecure_channel(explainer.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            sent = time.monotonic()
            health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
            latencies.append((time.monotonic() - sent) * 1000)
            time.sleep(0.05)
    share = (cpu_seconds(explainer.process.pid) - started_cpu) / (time.monotonic() - started)
    for process in attackers:
        process.join()
    quantiles = statistics.quantiles(latencies, n=100)
    out(
        f"  {processes * callers} callers: {len(latencies)} checks, p50 {quantiles[49]:.1f} ms, "
        f"p99 {quantiles[98]:.1f} ms, max {max(latencies):.1f} ms; the explainer used {share:.2f} cores"
    )


class S3Server:
    """nanio (an S3 server that checks signatures) on loopback, to stop, freeze and restart."""

    ACCESS_KEY, SECRET_KEY = "fedxai-bench", "fedxai-bench-secret"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.process = self._start()

    def _start(self) -> subprocess.Popen:
        nanio = Path(sys.executable).with_name("nanio")
        env = {**os.environ, "NANIO_ACCESS_KEY": self.ACCESS_KEY, "NANIO_SECRET_KEY": self.SECRET_KEY}
        arguments = ["--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(self.data_dir)]
        quiet = ["--log-level", "warning", "--no-access-log"]
        process = subprocess.Popen(
            [str(nanio), "serve", *arguments, *quiet], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(100):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return process
            time.sleep(0.1)
        raise RuntimeError("nanio did not start")

    def env(self) -> dict[str, str]:
        return {
            "FEDXAI_S3_ENDPOINT": f"127.0.0.1:{self.port}",
            "FEDXAI_S3_ACCESS_KEY": self.ACCESS_KEY,
            "FEDXAI_S3_SECRET_KEY": self.SECRET_KEY,
            "FEDXAI_S3_BUCKET": "fedxai-bench",
        }

    def store(self) -> S3Store:
        return S3Store(StorageSettings.from_env(self.env()).s3)  # type: ignore[arg-type]

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def restart(self) -> None:
        self.process = self._start()


def wait_for_health(explainer: Explainer, status: int, within: float = 30.0) -> float:
    started = time.monotonic()
    while explainer.health() != status and time.monotonic() - started < within:
        time.sleep(0.05)
    return time.monotonic() - started


def store_faults(work: Path, valid: Callable[[int], pb.ExplainRequest]) -> None:
    s3 = S3Server(work / "s3")
    explainer = Explainer(work, s3.env())
    try:
        token = explainer.token("operator")
        channel, stub = explainer.stub(token)
        with channel:
            stub.Explain(valid(0), timeout=60)
            # Frozen: the kernel still accepts connections, nothing ever answers.
            s3.process.send_signal(signal.SIGSTOP)
            started = time.monotonic()
            try:
                stub.Explain(valid(1), timeout=120)
                code = "OK"
            except grpc.RpcError as error:
                code = error.code().name
            answered = time.monotonic() - started
            not_serving = wait_for_health(explainer, health_pb2.HealthCheckResponse.NOT_SERVING)
            s3.process.send_signal(signal.SIGCONT)
            serving = wait_for_health(explainer, health_pb2.HealthCheckResponse.SERVING)
            out(
                f"hung store: a storing call answered {code} after {answered:.1f} s; health NOT_SERVING "
                f"{answered + not_serving:.1f} s after the hang began, SERVING again {serving:.1f} s after it ended"
            )

            # Killed while 8 callers store, back 5 s later: every picture is listed by a manifest.
            stop = threading.Event()
            codes: collections.Counter[str] = collections.Counter()

            def store_again(caller: int) -> None:
                index = caller
                while not stop.is_set():
                    request = valid(index)
                    request.round = 100 + index  # a folder of its own: nothing to overwrite
                    try:
                        stub.Explain(request, timeout=60)
                        codes["OK"] += 1
                    except grpc.RpcError as error:
                        codes[error.code().name] += 1
                    index += 8

            callers = [threading.Thread(target=store_again, args=(n,)) for n in range(8)]
            for thread in callers:
                thread.start()
            time.sleep(3)
            s3.kill()
            time.sleep(5)
            s3.restart()
            wait_for_health(explainer, health_pb2.HealthCheckResponse.SERVING)
            time.sleep(3)
            stop.set()
            for thread in callers:
                thread.join()
            time.sleep(2)  # the explainer removes what it could not while the store was away
            answers = ", ".join(f"{code} {n}" for code, n in codes.most_common())
            out(
                f"S3 killed mid-run and restarted: calls {answers}; pictures no manifest lists: "
                f"{len(unlisted_pictures(s3.store()))}"
            )
    finally:
        explainer.stop()
        s3.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--attack-seconds", type=float, default=20.0)
    parser.add_argument("--mnist-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "mnist")
    args = parser.parse_args()
    images, labels = load_split(args.mnist_dir, "test")
    weights = encode_state_dict(architectures()["mnist_cnn"].factory().state_dict(), {})
    bombs = [inflating_png(28, 28, 1 << 30), png(images[0]), weights[:1000], inflating_png(20000, 20000, 16)]

    def valid(index: int) -> pb.ExplainRequest:
        first = (index * 16) % 9000
        batch = slice(first, first + 16)
        request = explain_request(images[batch], labels[batch], weights, round=index % 5 + 1, scoring=pb.SCORING_SKIP)
        request.client_id = "client-0"
        return request

    with tempfile.TemporaryDirectory(prefix="fedxai-hostile-") as temp:
        work = Path(temp)
        explainer = Explainer(work, {"FEDXAI_OUTPUT_DIR": str(work / "store")})
        try:
            out(f"explainer pid {explainer.process.pid}, RSS at start {explainer.memory()[0]:.0f} MiB")
            fuzz(explainer, valid, args.requests, bombs)
            memory_mixes(explainer, valid, images)
            out(f"health under a CPU attack: callers sending 8 PNG bombs a call, {args.attack_seconds:.0f} s each")
            # As the issue found it (2 callers), then enough callers to saturate this machine.
            cpu_attack(explainer, valid, args.attack_seconds, processes=1, callers=2)
            cpu_attack(explainer, valid, args.attack_seconds, processes=2, callers=4)
            stored = sum(1 for _ in (work / "store").rglob("*.jpg"))
            out(f"store: {stored} pictures written by the valid calls")
        finally:
            explainer.stop()
        store_faults(work, valid)


if __name__ == "__main__":
    main()
