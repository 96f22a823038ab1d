"""Status conditions with the Sync Controller's types and reasons (its controller's, which its
end-to-end tests check), set as apimachinery's SetStatusCondition does: the transition time
moves only when the status does."""

from __future__ import annotations

import datetime
from typing import Any

CREATE = "SecretCreated"
UPDATE = "SecretUpdated"

SYNC_STARTING = "SyncStarting"
NO_UPDATE_YET = "NoUpdatesAttemptedYet"
CREATE_SUCCESSFUL = "CreateSuccessful"
UP_TO_DATE = "SecretUpToDate"
PROVIDER_ERROR = "ProviderError"
INVALID_LABEL = "InvalidClusterSecretLabelError"
INVALID_ANNOTATION = "InvalidClusterSecretAnnotationError"
SYNC_ERROR = "ControllerSyncError"
PATCH_ERROR = "ControllerPatchError"
SPC_ERROR = "SecretProviderClassMisconfigured"
FETCH_FAILED = "RemoteSecretStoreFetchFailed"

CREATED_MESSAGE = "Secret created successfully."
UPDATED_MESSAGE = "Secret contains last observed values."
MAX_MESSAGE = 32768


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]],
    kind: str,
    status: str,
    reason: str,
    message: str,
    generation: int,
) -> list[dict[str, Any]]:
    """A new list with condition `kind` set; the others kept in place."""
    old = next((c for c in conditions if c.get("type") == kind), None)
    new = {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "observedGeneration": generation,
        "lastTransitionTime": (
            old["lastTransitionTime"]
            if old is not None and old.get("status") == status and old.get("lastTransitionTime")
            else now()
        ),
    }
    if old is None:
        return [*conditions, new]
    return [new if c is old else c for c in conditions]


def initial(generation: int) -> list[dict[str, Any]]:
    """Both conditions Unknown before the first attempt, as the Sync Controller starts."""
    out = set_condition([], CREATE, "Unknown", SYNC_STARTING, "", generation)
    return set_condition(out, UPDATE, "Unknown", NO_UPDATE_YET, "", generation)
