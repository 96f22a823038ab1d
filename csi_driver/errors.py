"""Domain errors. The gRPC boundary (servicers.py) maps each DriverError class to one code.

`error_type` is the `node_publish_error_total{error_type}` / `rotation_reconcile_error_total`
label, upstream's reasons where upstream has one. Messages never carry secret material: they
are shown in pod events.
"""

from __future__ import annotations

FAILED_TO_MOUNT = "FailedToMount"
FAILED_TO_ENSURE_MOUNT_POINT = "FailedToEnsureMountPoint"
SPC_NOT_FOUND = "SecretProviderClassNotFound"
GRPC_PROVIDER_ERROR = "GRPCProviderError"
FILE_WRITE_ERROR = "FileWriteError"
POD_VOLUME_NOT_FOUND = "PodVolumeNotFound"
POD_LIST_FAILED = "PodListFailed"
SECRET_REF_NOT_FOUND = "NodePublishSecretRefNotFound"
TOKEN_REQUEST_FAILED = "ServiceAccountTokenRequestFailed"
SPCPS_UPDATE_FAILED = "SecretProviderClassPodStatusUpdateFailed"


class LabelledError(Exception):
    """An error with what the caller sees (`message`) and its metric label (`error_type`)."""

    def __init__(self, message: str, error_type: str) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type


class DriverError(LabelledError):
    """A CSI call failed; the subclass says which gRPC code."""

    def __init__(self, message: str, error_type: str = FAILED_TO_MOUNT) -> None:
        super().__init__(message, error_type)


class InvalidRequest(DriverError):
    """A request argument is missing or wrong (gRPC InvalidArgument)."""


class OperationPending(DriverError):
    """Another operation on the same target path is in flight (gRPC Aborted)."""


class TargetPathError(DriverError):
    """The target path cannot be prepared or cleaned up (gRPC Internal)."""


class PublishFailed(DriverError):
    """The volume could not be published; upstream returns these untyped (gRPC Unknown)."""


class ProviderError(LabelledError):
    """A provider call failed; wrapped into PublishFailed or RotationError by the caller."""

    def __init__(self, message: str, error_type: str = GRPC_PROVIDER_ERROR) -> None:
        super().__init__(message, error_type)


class ProviderUnavailable(ProviderError):
    """No provider answers on the socket (absent, not serving yet, gone mid-call): a publish
    waits for it (provider_wait.py); the message is upstream's."""


class RotationError(LabelledError):
    """One mount could not be refreshed; its content is kept and it is retried with backoff."""


class KubeError(Exception):
    """The API server could not answer (unreachable, not configured, forbidden, not found)."""


def spc_unavailable(namespace: str, name: str, e: KubeError) -> str:
    """Upstream's words for a SecretProviderClass that could not be read (publish, rotation and
    standalone all say it so)."""
    return f"failed to get secretproviderclass {namespace}/{name}, error: {e}"
