"""Relay benchmark: what the trainer's relay (services/relay.py) adds to a
Fleet API request, measured side by side with the same request sent straight to the server.

    python benchmarks/relay_bench.py [--requests 200]

The server is a Fleet API stand-in on loopback that answers a pull of an object at once
(Nagle's algorithm off, as the SuperLink's own server has it), so what differs is the relay's
hop alone. A message is pulled, and its reply pushed, in about 20 objects of a few hundred
bytes and one model of 4.8 MB; the benchmark times one request after another on one
connection, as the SuperNode sends them, and prints the median milliseconds of each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
from flwr.proto.message_pb2 import PullObjectRequest, PullObjectResponse
from flwr.proto.node_pb2 import Node

from services.cli.progress import say
from services.relay import FLEET_HELD, OBJECT_PATH, Relay, SuperLinkFlags

SIZES = {"small object (300 B)": 300, "model (4.8 MB)": 4_800_000}


class _ObjectServer(ThreadingHTTPServer):
    daemon_threads = True
    answer = b""


class _ObjectHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _ObjectServer

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "application/protobuf")
        self.send_header("Content-Length", str(len(self.server.answer)))
        self.end_headers()
        self.wfile.write(self.server.answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


def median_ms(port: int, requests: int) -> float:
    body = PullObjectRequest(node=Node(node_id=7), run_id=1, object_id="object").SerializeToString()
    headers = {"Content-Type": "application/protobuf"}
    times = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for _ in range(requests):
            started = time.perf_counter()
            client.post(OBJECT_PATH, content=body, headers=headers).raise_for_status()
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests of each size, each way")
    args = parser.parse_args()
    server = _ObjectServer(("127.0.0.1", 0), _ObjectHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    flags = SuperLinkFlags.parse(["--insecure", "--superlink", f"127.0.0.1:{server.server_address[1]}"])
    relay = Relay(flags, FLEET_HELD)
    relay.start()
    try:
        say(sys.stdout, f"{'request':<22} | straight ms | through the relay ms | ratio")
        for name, size in SIZES.items():
            content = os.urandom(size)
            server.answer = PullObjectResponse(
                object_found=True, object_available=True, object_content=content
            ).SerializeToString()
            # Taking turns, so that a noisy moment weighs on both alike.
            straight, relayed = [], []
            for _ in range(4):
                straight.append(median_ms(server.server_address[1], args.requests // 4))
                relayed.append(median_ms(relay.port, args.requests // 4))
            direct, through = statistics.median(straight), statistics.median(relayed)
            say(sys.stdout, f"{name:<22} | {direct:11.2f} | {through:20.2f} | {through / direct:.2f}x")
    finally:
        relay.close()
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main()
