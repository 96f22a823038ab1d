"""The provider's stated limits, and how any input it echoes is cut.

Any pod author on a node controls the Mount attributes (a pod's volumeAttributes overlay the
SecretProviderClass parameters), so every size, count and depth a request can choose is bounded
here and checked before the work it would cause. docs/provider.md ("Limits") says why each number
was chosen and what upstream does with the same input.
"""

from __future__ import annotations

# A SecretProviderClass is one etcd object (at most ~1.5 MiB), so no valid `objects` text is
# larger than that; 1,000 objects is ten times the largest SecretProviderClass we have seen.
MAX_OBJECTS = 1000
MAX_OBJECTS_TEXT = 1536 * 1024
# Files in one Mount answer: every object's files, every version of a history object. The
# driver's default receive limit (4 MiB) is reached long before this with real secrets.
MAX_FILES = 10_000
# Versions read from Key Vault for one `objectVersionHistory` object (its list is paged by 25).
MAX_LISTED_VERSIONS = 10_000
# Upstream parses objectVersionHistory as a Go int32; we accept the same range, and the work
# is bounded by the versions that exist (MAX_LISTED_VERSIONS) and MAX_FILES, never by N.
MAX_VERSION_HISTORY = 2**31 - 1
# Attributes: parameters, pod info and service-account tokens (a few KiB each).
MAX_ATTRIBUTES = 256
MAX_ATTRIBUTE_VALUE = 64 * 1024
# The attributes and secrets JSON texts as a whole; the gRPC receive limit (4 MiB) is above.
MAX_REQUEST_TEXT = 3 * 1024 * 1024
# A file path: each component at most NAME_MAX bytes, the whole path short enough to sit under
# kubelet's pod directory and the driver's timestamped data directory within PATH_MAX.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 1024
# An AzureStackCloud environment file (a few hundred bytes in practice).
MAX_ENV_FILE = 64 * 1024

# One HTTP answer from Key Vault or an identity service (http_transport.py): its headers, and its
# body read whole. Key Vault keeps a secret of at most 25 KB and pages lists by 25; a token
# answer is a few KiB. The driver's gRPC receive limit (4 MiB) bounds a whole Mount answer.
MAX_HTTP_HEAD = 64 * 1024
MAX_HTTP_BODY = 4 * 1024 * 1024

# Distinct vaults one mount reads (the SPC's `keyvaultName` and the objects' own): each is a
# Key Vault client of its own, and the client cache holds 64.
MAX_VAULTS_PER_MOUNT = 10
# JSON keys (`jmesPath`): paths per object, the length of one path, and the JSON document read
# (Key Vault keeps a secret of at most 25 KB; its nesting is bounded before any path is read).
MAX_JSON_KEYS = 64
MAX_JSON_PATH = 256
MAX_JSON_TEXT = 32 * 1024
MAX_JSON_DEPTH = 64
# Selections (`objectNamePattern`, `objectTags`): objects one entry may match, and the names a
# listing may read (Key Vault pages lists by 25: 400 requests); Key Vault's own tag limits.
MAX_SELECTED = 100
MAX_LISTED_OBJECTS = 10_000
MAX_PATTERN = 127
MAX_TAGS = 15
MAX_TAG_NAME = 512
MAX_TAG_VALUE = 256

# Echoed input: a short prefix and the length, never the whole value.
ECHO_CHARS = 40
# A gRPC status message travels as a header; keep it far below the 8 KiB metadata limit.
MAX_MESSAGE = 2048


def shown(value: str, limit: int = ECHO_CHARS) -> str:
    """`value` quoted for an error message: whole when short, else a prefix and its length."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value)} chars)"


def cut(value: str, limit: int = ECHO_CHARS) -> str:
    """`value` unquoted, cut like `shown` (for names already in a quoted context)."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}… ({len(value)} chars)"


def capped(message: str, limit: int = MAX_MESSAGE) -> str:
    """A message cut to `limit` characters (the last resort; inputs are cut where quoted)."""
    if len(message) <= limit:
        return message
    return message[: limit - 24] + f"… ({len(message)} chars)"
