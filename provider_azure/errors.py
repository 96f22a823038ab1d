"""Domain errors: one type, a kind that the transport maps to one gRPC code.

Messages name the parameter or object and the rule, and never carry secret material.
"""

from __future__ import annotations

import enum


class Kind(enum.Enum):
    INVALID_ARGUMENT = "InvalidArgument"
    NOT_FOUND = "NotFound"
    PERMISSION_DENIED = "PermissionDenied"
    UNAUTHENTICATED = "Unauthenticated"
    UNAVAILABLE = "Unavailable"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    FAILED_PRECONDITION = "FailedPrecondition"
    UNIMPLEMENTED = "Unimplemented"
    INTERNAL = "Internal"


class ProviderError(Exception):
    """Anything a mount can fail with; `kind` says which gRPC code it becomes."""

    def __init__(
        self, kind: Kind, message: str, *, request_error: bool = False, reason: str = ""
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        # A parameter name or a stage, always a literal from the code, never input: the
        # bounded `grpc_message` / `error` metric label (the message itself may quote input).
        self.reason = reason
        # Upstream returns request-decoding errors without the "failed to mount objects" prefix.
        self.request_error = request_error

    def __str__(self) -> str:
        return self.message

    @property
    def label(self) -> str:
        """What metrics record instead of the message: the kind and, if known, the reason."""
        return f"{self.kind.value}: {self.reason}" if self.reason else self.kind.value


def invalid(message: str, reason: str = "") -> ProviderError:
    return ProviderError(Kind.INVALID_ARGUMENT, message, reason=reason)


def object_context(object_type: str, object_name: str, object_version: str) -> str:
    """Upstream's wrap prefix, kept so that users' greps still match."""
    return (
        f"failed to get objectType:{object_type}, objectName:{object_name}, "
        f"objectVersion:{object_version}"
    )
