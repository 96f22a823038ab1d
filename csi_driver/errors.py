"""Domain errors. The gRPC boundary (servicers.py) maps each class to one status code.

`error_type` is the `node_publish_error_total{error_type}` label, upstream's reasons.
Messages never carry secret material: they are shown in pod events.
"""

from __future__ import annotations

FAILED_TO_MOUNT = "FailedToMount"
FAILED_TO_ENSURE_MOUNT_POINT = "FailedToEnsureMountPoint"
SPC_NOT_FOUND = "SecretProviderClassNotFound"
GRPC_PROVIDER_ERROR = "GRPCProviderError"
FILE_WRITE_ERROR = "FileWriteError"


class DriverError(Exception):
    """Base class; `message` is what the caller sees."""

    def __init__(self, message: str, error_type: str = FAILED_TO_MOUNT) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type


class InvalidRequest(DriverError):
    """A request argument is missing or wrong (gRPC InvalidArgument)."""


class OperationPending(DriverError):
    """Another operation on the same target path is in flight (gRPC Aborted)."""


class TargetPathError(DriverError):
    """The target path cannot be prepared or cleaned up (gRPC Internal)."""


class PublishFailed(DriverError):
    """The volume could not be published; upstream returns these untyped (gRPC Unknown)."""


class ProviderError(Exception):
    """A provider call failed; wrapped into PublishFailed by the node service."""

    def __init__(self, message: str, error_type: str = GRPC_PROVIDER_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type


class KubeError(Exception):
    """The API server could not answer (unreachable, not configured, forbidden, not found)."""
