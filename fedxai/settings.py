"""Typed settings, built once at start-up from the environment and flags.

Nothing else in the code base reads ``os.environ``: entry points call
``StorageSettings.from_env`` and pass the result down.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_BUCKET = "fedxai"
DEFAULT_OUTPUT_DIR = "outputs"
DEFAULT_EXPLAINER_ADDRESS = "127.0.0.1:50051"
MIB = 1024 * 1024
MAX_URL_EXPIRY = 7 * 24 * 3600  # S3's longest presigned URL
# The largest gRPC message the explainer and its callers accept by default.
DEFAULT_MAX_MESSAGE_BYTES = 64 * MIB


# A caller's bearer token for the explainer, in a file (see `fedxai credentials`).
TOKEN_FILE_VARIABLE = "FEDXAI_EXPLAINER_TOKEN_FILE"
# The folder of the trainers' state folders (``<it>/<client-id>``), for trainers whose
# node config names none (the clients of Flower's simulation engine have no node config
# of their own); without it, ``~/.cache/fedxai/<client-id>``.
TRAINER_STATE_DIR_VARIABLE = "FEDXAI_TRAINER_STATE_DIR"
# Set to 1 by `fedxai superexec` for the ServerApps it launches, which reach the SuperLink
# through its relay (services/relay.py): they may ask for replies more often.
RUNTIME_RELAY_VARIABLE = "FEDXAI_RUNTIME_RELAY"


class SettingsError(ValueError):
    """A setting is missing or has a bad value; the message names it."""


def read_secret(name: str, path: str) -> str:
    """The first line of a file holding a token or password, which must not be empty."""
    try:
        secret = Path(path).read_text().strip()
    except OSError as error:
        raise SettingsError(f"{name}={path}: cannot read it ({error.strerror})") from None
    if not secret or "\n" in secret:
        raise SettingsError(f"{name}={path}: expected one line with the secret")
    return secret


def explainer_token(env: Mapping[str, str]) -> str:
    """The token this process presents to the explainer; "" when it presents none."""
    path = env.get(TOKEN_FILE_VARIABLE, "").strip()
    return read_secret(TOKEN_FILE_VARIABLE, path) if path else ""


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (use true or false)")


def _parse_seconds(name: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise SettingsError(f"{name}={value!r} is not a number of seconds") from None
    if not seconds > 0:
        raise SettingsError(f"{name}={value!r} must be positive")
    return seconds


def parse_address(name: str, raw: str) -> tuple[str, int]:
    """Splits HOST:PORT (IPv6 hosts in brackets) and checks the port."""
    host, sep, port = raw.rpartition(":")
    if not sep or not host:
        raise SettingsError(f"{name}={raw!r} is not HOST:PORT")
    try:
        port_number = int(port)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} has a non-numeric port") from None
    if not 0 <= port_number <= 65535:
        raise SettingsError(f"{name}={raw!r} has a port out of range")
    return host, port_number


# gRPC name schemes a caller's target may start with (a plain HOST:PORT resolves by DNS).
TARGET_SCHEMES = ("dns:", "ipv4:", "ipv6:")


def parse_target(name: str, raw: str) -> list[tuple[str, int]]:
    """The addresses a gRPC target names: HOST:PORT, ``dns:[//server/]HOST:PORT``, or
    a list of replicas, ``ipv4:a:port,b:port`` or ``ipv6:[a]:port,[b]:port``."""
    rest = raw.partition(":")[2]
    if raw.startswith(("ipv4:", "ipv6:")):
        return [parse_address(name, part) for part in rest.split(",")]
    if raw.startswith("dns:"):
        if rest.startswith("//"):  # dns://server/HOST:PORT names the DNS server to ask
            rest = rest[2:].partition("/")[2]
        return [parse_address(name, rest)]
    return [parse_address(name, raw)]


@dataclass(frozen=True)
class S3Settings:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str = DEFAULT_BUCKET
    secure: bool = False
    region: str = "us-east-1"
    # The endpoint people reach, used to sign URLs (e.g. localhost:9000 when
    # the services talk to minio:9000 inside a compose network).
    public_endpoint: str = ""
    # Seconds a request may wait for the server's answer: a hung store is UNAVAILABLE by then.
    timeout: float = 8.0
    # Seconds a presigned URL works: long enough to fetch, short enough that a leaked
    # listing soon opens nothing.
    url_expiry: float = 3600.0

    def __repr__(self) -> str:  # keeps the secret out of logs
        return (
            f"S3Settings(endpoint={self.endpoint!r}, bucket={self.bucket!r}, "
            f"secure={self.secure}, region={self.region!r}, "
            f"public_endpoint={self.public_endpoint!r})"
        )


@dataclass(frozen=True)
class StorageSettings:
    """Where explanations go: S3/MinIO when an endpoint is set, else a folder."""

    s3: S3Settings | None = None
    output_dir: Path = Path(DEFAULT_OUTPUT_DIR)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> StorageSettings:
        endpoint = env.get("FEDXAI_S3_ENDPOINT", "").strip()
        if not endpoint:
            return cls(output_dir=Path(env.get("FEDXAI_OUTPUT_DIR") or DEFAULT_OUTPUT_DIR))
        if "://" in endpoint:
            raise SettingsError(
                f"FEDXAI_S3_ENDPOINT={endpoint!r} must be HOST:PORT without a scheme "
                "(set FEDXAI_S3_SECURE=true for https)"
            )
        missing = [k for k in ("FEDXAI_S3_ACCESS_KEY", "FEDXAI_S3_SECRET_KEY") if not env.get(k)]
        if missing:
            raise SettingsError(f"FEDXAI_S3_ENDPOINT is set but {', '.join(missing)} is not")
        expiry = env.get("FEDXAI_S3_URL_EXPIRY") or str(S3Settings.url_expiry)
        url_expiry = _parse_seconds("FEDXAI_S3_URL_EXPIRY", expiry)
        if url_expiry > MAX_URL_EXPIRY:
            raise SettingsError(f"FEDXAI_S3_URL_EXPIRY={url_expiry:g} is over S3's limit of {MAX_URL_EXPIRY} seconds")
        bucket = env.get("FEDXAI_S3_BUCKET") or DEFAULT_BUCKET
        if not 3 <= len(bucket) <= 63:
            raise SettingsError(f"FEDXAI_S3_BUCKET={bucket!r} must be 3 to 63 characters")
        return cls(
            s3=S3Settings(
                endpoint=endpoint,
                access_key=env["FEDXAI_S3_ACCESS_KEY"],
                secret_key=env["FEDXAI_S3_SECRET_KEY"],
                bucket=bucket,
                secure=_parse_bool("FEDXAI_S3_SECURE", env.get("FEDXAI_S3_SECURE", "false")),
                region=env.get("FEDXAI_S3_REGION") or "us-east-1",
                public_endpoint=env.get("FEDXAI_S3_PUBLIC_ENDPOINT", "").strip(),
                timeout=_parse_seconds("FEDXAI_S3_TIMEOUT", env.get("FEDXAI_S3_TIMEOUT") or str(S3Settings.timeout)),
                url_expiry=url_expiry,
            )
        )


@dataclass(frozen=True)
class ExplainerSettings:
    address: str = DEFAULT_EXPLAINER_ADDRESS
    # The largest request. Up to 4 x workers + 4 calls are received at once, each held
    # twice (bytes, parsed): at 16 MiB that is at most 640 MiB before any check runs.
    max_message_bytes: int = 16 * MIB
    # Compute holds about 1 MB a sample (mnist_cnn): 256 samples fit the default budget.
    max_batch_size: int = 256
    # What Explain calls may hold at once (see services.explainer.budget).
    memory_budget_bytes: int = 512 * MIB
    workers: int = 4
    cached_models: int = 4  # decoded models kept for reuse; 0: none
    grace_seconds: float = 5.0
    # How often the store is checked; while it does not answer, health says NOT_SERVING.
    store_check_seconds: float = 5.0
    # PEM files; both set: TLS, neither: plaintext.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # Who may call and for what (see services.explainer.auth); "": anyone may do anything,
    # which only a loopback address or an explicit allow_unauthenticated permits.
    callers_file: str = ""
    allow_unauthenticated: bool = False

    def __post_init__(self) -> None:
        host, _ = parse_address("--address", self.address)
        if not (self.callers_file or self.allow_unauthenticated or is_loopback(host)):
            raise SettingsError(
                f"--address {self.address} lets other machines call: give --callers-file "
                "(made by `fedxai credentials`), or --allow-unauthenticated to let anyone store and read"
            )
        if self.callers_file and not Path(self.callers_file).is_file():
            raise SettingsError(f"--callers-file {self.callers_file} does not exist")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise SettingsError("--tls-cert-file and --tls-key-file go together")
        for path in (self.tls_cert_file, self.tls_key_file):
            if path and not Path(path).is_file():
                raise SettingsError(f"TLS file {path} does not exist")
        for name in ("max_message_bytes", "max_batch_size", "workers", "memory_budget_bytes"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be positive, got {getattr(self, name)}")
        if self.cached_models < 0:
            raise SettingsError(f"cached_models must not be negative, got {self.cached_models}")
