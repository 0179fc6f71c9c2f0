"""Builds and runs the explainer's gRPC server: Explainer, health, reflection."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import grpc
import torch.fx
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fedxai.errors import InvalidArgument
from fedxai.models import architectures
from fedxai.plugins import PluginError
from fedxai.settings import DEFAULT_MAX_MESSAGE_BYTES, ExplainerSettings, SettingsError
from fedxai.storage import ObjectStore
from fedxai.v1 import explainer_pb2 as pb
from fedxai.v1 import explainer_pb2_grpc as pb_grpc
from services.explainer.auth import CallerCheck, Callers
from services.explainer.budget import MemoryBudget, bytes_per_sample
from services.explainer.cam import target_layers
from services.explainer.explanations import ExplanationService, Limits
from services.explainer.memory import keep_freed_memory, trim_when_idle
from services.explainer.servicer import ExplainerServicer

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Explainer"].full_name
RESERVED_THREADS = 4  # for health checks, GetInfo and reflection


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    service: ExplanationService
    callers: Callers | None  # None: every caller may do everything

    def stop(self, grace: float | None) -> None:
        """Reports NOT_SERVING, then lets in-flight calls finish within ``grace`` seconds."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.service.close()


def create_server(settings: ExplainerSettings, store: ObjectStore) -> RunningServer:
    """A started server bound to ``settings.address`` (port 0 picks a free one)."""
    limits = Limits(
        max_message_bytes=settings.max_message_bytes,
        max_batch_size=settings.max_batch_size,
        cached_models=settings.cached_models,
    )
    # Explain and ListExplanations take at most `calls` threads; the rest answer
    # health checks and GetInfo at once, however busy the explainer is.
    calls = 4 * settings.workers
    # Every architecture traced and measured before the first call: tracing patches
    # torch's module calls process-wide, and a forward pass running meanwhile fails.
    # A plugin whose model cannot be traced, or whose default layer is not targetable, stops the start.
    for arch in architectures().values():
        try:
            target_layers(arch)
        except (InvalidArgument, torch.fx.proxy.TraceError) as error:
            raise PluginError(f"architecture {arch.name!r} ({arch.provided_by or 'built in'}): {error}") from error
        bytes_per_sample(arch)
    callers = None
    if settings.callers_file:
        path = Path(settings.callers_file)
        callers = Callers.parse(path.read_text(), str(path))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=calls + RESERVED_THREADS, thread_name_prefix="explainer"),
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            # Replies (a long ListExplanations) may be larger than any request needs to be.
            ("grpc.max_send_message_length", max(settings.max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES)),
            # gRPC shares a port with any process that listens on it already: refuse instead.
            ("grpc.so_reuseport", 0),
        ],
        # Beyond this, calls are refused (RESOURCE_EXHAUSTED) instead of queueing large messages in memory.
        maximum_concurrent_rpcs=calls + RESERVED_THREADS,
        interceptors=[CallerCheck(callers)] if callers else None,
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    def report_store(available: bool) -> None:
        # Without its store the explainer cannot keep anything: not serving.
        status = health_pb2.HealthCheckResponse.SERVING if available else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            health_servicer.set(name, status)

    report_store(True)
    service = ExplanationService(store, limits, settings.store_check_seconds, report_store)
    budget = MemoryBudget(settings.memory_budget_bytes, on_idle=trim_when_idle)
    pb_grpc.add_ExplainerServicer_to_server(ExplainerServicer(service, calls, budget), server)

    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    try:
        if settings.tls_cert_file:
            credentials = grpc.ssl_server_credentials(
                [(Path(settings.tls_key_file).read_bytes(), Path(settings.tls_cert_file).read_bytes())]
            )
            port = server.add_secure_port(settings.address, credentials)
        else:
            port = server.add_insecure_port(settings.address)
    except RuntimeError:
        raise SettingsError(f"cannot listen on {settings.address} (in use, or not this host's address)") from None
    server.start()
    service.start()
    return RunningServer(server, port, health_servicer, service, callers)


def serve(settings: ExplainerSettings, store: ObjectStore) -> None:
    """Serves until SIGTERM or SIGINT, then shuts down gracefully."""
    if not keep_freed_memory():
        log.info("allocator left at its defaults (the C library is not glibc)")
    running = create_server(settings, store)
    host = settings.address.rpartition(":")[0]
    security = "TLS" if settings.tls_cert_file else "plaintext"
    log.info("explainer serving on %s:%d (%s), storage: %s", host, running.port, security, store.describe())
    if running.callers is None:
        log.warning(
            "no authentication: any process that reaches %s:%d may store and read explanations "
            "(for development on one machine; see `fedxai credentials`)",
            host,
            running.port,
        )
    else:
        log.info("%d callers known from %s", len(running.callers), settings.callers_file)

    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop_requested.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop_requested.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        running.stop(settings.grace_seconds)
        log.info("explainer stopped")
