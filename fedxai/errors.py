"""Domain errors shared by the services.

Each error carries the request field it is about, so the gRPC layer can
answer with a message that names it. The mapping to gRPC status codes lives in
one table in ``services.explainer.servicer``.
"""


class FedxaiError(Exception):
    """Base class of the errors a caller can act on."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class InvalidArgument(FedxaiError):
    """The request is malformed; retrying it unchanged will fail again."""


class NotFound(FedxaiError):
    """Something the request refers to does not exist."""


class FailedPrecondition(FedxaiError):
    """What the request refers to is not in the state it expects (a checkpoint changed)."""


class ResourceExhausted(FedxaiError):
    """The request is over a configured size limit."""


class Abandoned(FedxaiError):
    """The caller cancelled, or its deadline passed: the work stopped, nothing was stored."""


class StoreError(Exception):
    """The object store failed; the message says how, without secrets."""


class StoreUnavailable(StoreError):
    """The object store cannot be reached; worth retrying later."""


class StoreMisconfigured(StoreError):
    """The object store refused us (credentials, permissions, bucket)."""


class ObjectNotFound(StoreError):
    """No object at the key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no object at {key!r}")
        self.key = key
