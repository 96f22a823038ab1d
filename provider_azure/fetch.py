"""One mount: resolve versions, fetch every object concurrently (bounded), convert, lay out files.

Output order, paths, modes, bytes and object versions are upstream's: objects in the order of
the `objects` array; for a certificate-backed secret with separate files, `.crt`, `.key`, then
the combined file; `objectVersionHistory: N` (N > 1) gives `name/0..name/N`, newest first.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from . import certificates, jsonkeys
from .content import content_bytes
from .errors import Kind, ProviderError, invalid, object_context
from .keyvault import CertificateValue, KeyValue, ObjectInfo, SecretValue, VersionInfo
from .limits import MAX_FILES, MAX_SELECTED
from .objects import KeyVaultObject, ObjectFormat, ObjectType
from .parameters import MountParameters
from .paths import Layout
from .vaults import same_vault

CERT_TYPE_PEM = "application/x-pem-file"
CERT_TYPE_PFX = "application/x-pkcs12"


class Vault(Protocol):
    vault_name: str

    async def get_secret(self, name: str, version: str) -> SecretValue: ...
    async def get_key(self, name: str, version: str) -> KeyValue: ...
    async def get_certificate(self, name: str, version: str) -> CertificateValue: ...
    async def list_versions(self, object_type: str, name: str) -> list[VersionInfo]: ...
    async def list_objects(self, object_type: str) -> list[ObjectInfo]: ...


@dataclass(frozen=True)
class File:
    path: str
    mode: int
    contents: bytes = b""

    def __repr__(self) -> str:  # never print contents
        return f"File(path={self.path!r}, mode={self.mode:o}, size={len(self.contents)})"


@dataclass(frozen=True)
class ObjectVersion:
    id: str
    version: str


@dataclass(frozen=True)
class MountResult:
    files: tuple[File, ...]
    object_versions: tuple[ObjectVersion, ...]


@dataclass(frozen=True)
class ContentOptions:
    construct_pem_chain: bool = True
    write_cert_and_key_in_separate_files: bool = False


# (object_type, object_name, error, seconds)
RequestObserver = Callable[[str, str, str, float], None]


def _no_observer(object_type: str, object_name: str, error: str, seconds: float) -> None:
    return None


@dataclass(frozen=True)
class _Piece:
    suffix: str
    content: str
    version: str


class Fetcher:
    """Fetches and converts one mount's objects; pure apart from the Vault it is given."""

    def __init__(
        self,
        options: ContentOptions,
        *,
        concurrency: int = 16,
        observe: RequestObserver = _no_observer,
    ) -> None:
        self.options = options
        self.concurrency = concurrency
        self.observe = observe
        # Fetches in flight, shared by concurrent mounts of the same (client, object, version):
        # many pods on one SecretProviderClass cost one Key Vault GET per object, not one each.
        # Only while in flight: a finished fetch is never reused, so content is never stale.
        self._inflight: dict[_Key, asyncio.Future[list[_Piece]]] = {}

    async def mount(
        self, params: MountParameters, vault: Vault, others: Mapping[str, Vault] | None = None
    ) -> MountResult:
        """`vault` is the SPC's; `others` the objects' own vaults, by lower-case name."""
        fetched = await _MountFetch(self, params.vault_name, vault, others or {}).run(
            params.objects
        )
        result = _lay_out(params, fetched)
        if not result.files:  # only selections, none matching: the driver would refuse it
            raise ProviderError(
                Kind.NOT_FOUND,
                "no object matches the selections ("
                + ", ".join(obj.label() for obj in params.objects[:3])
                + "): an empty volume is refused",
                reason="objectNamePattern",
            )
        return result

    def _forget(self, key: _Key, done: asyncio.Future[Any]) -> None:
        if self._inflight.get(key) is done:
            del self._inflight[key]
        if not done.cancelled():
            done.exception()  # retrieved: no "exception was never retrieved" noise

    async def _timed(self, obj: KeyVaultObject, coro: Awaitable[Any]) -> Any:
        start = time.perf_counter()
        error = ""
        try:
            return await coro
        except ProviderError as exc:
            error = exc.label
            raise
        finally:
            self.observe(obj.type.value, obj.name, error, time.perf_counter() - start)

    async def _content(self, vault: Vault, obj: KeyVaultObject, version: str) -> list[_Piece]:
        context = object_context(obj.type, obj.name, obj.version)
        try:
            if obj.type is ObjectType.SECRET:
                return self._secret(await vault.get_secret(obj.name, version), obj)
            if obj.type is ObjectType.KEY:
                key = await vault.get_key(obj.name, version)
                pem = certificates.public_key_pem(
                    key.kty, n=key.n, e=key.e, crv=key.crv, x=key.x, y=key.y
                )
                return [_Piece("", pem.decode(), key.version)]
            cert = await vault.get_certificate(obj.name, version)
            return [_Piece("", certificates.certificate_pem(cert.cer).decode(), cert.version)]
        except certificates.ConversionError as exc:
            raise ProviderError(Kind.INTERNAL, f"{context}: {exc}") from None

    def _secret(self, secret: SecretValue, obj: KeyVaultObject) -> list[_Piece]:
        content = secret.value
        pieces: list[_Piece] = []
        if secret.kid:
            if secret.content_type == CERT_TYPE_PEM:
                pass
            elif secret.content_type == CERT_TYPE_PFX:
                if obj.format is not ObjectFormat.PFX:
                    content = certificates.pkcs12_to_pem(content, self.options.construct_pem_chain)
            else:
                raise certificates.ConversionError(
                    f"failed to get certificate. unknown content type '{secret.content_type}'"
                )
            if self.options.write_cert_and_key_in_separate_files:
                cert, key = certificates.split_cert_and_key(content)
                pieces.append(_Piece(".crt", cert.decode(), secret.version))
                pieces.append(_Piece(".key", key.decode(), secret.version))
        pieces.append(_Piece("", content, secret.version))
        return pieces


# (object, base path, version id, pieces): one file or one history version of one object.
_Fetched = tuple[KeyVaultObject, str, str, list[_Piece]]
_Key = tuple[int, str, str, str, str, str]


class _MountFetch:
    """One mount's fetches: bounded concurrency, each (object, version) fetched once, and a
    fetch already in flight for another mount through the same client shared, not repeated."""

    def __init__(
        self, fetcher: Fetcher, default_name: str, vault: Vault, others: Mapping[str, Vault]
    ) -> None:
        self.fetcher = fetcher
        self.default_name = default_name
        self.vault = vault
        self.others = others
        self.semaphore = asyncio.Semaphore(fetcher.concurrency)
        self.memo: dict[_Key, asyncio.Future[list[_Piece]]] = {}

    async def run(self, objects: tuple[KeyVaultObject, ...]) -> list[list[_Fetched]]:
        tasks = [asyncio.ensure_future(self.one(obj)) for obj in objects]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            for pending in self.memo.values():
                pending.cancel()
            raise

    async def bounded(self, coro: Awaitable[Any]) -> Any:
        async with self.semaphore:
            return await coro

    def vault_of(self, obj: KeyVaultObject) -> Vault:
        if not obj.vault or same_vault(obj.vault, self.default_name):
            return self.vault
        return self.others[obj.vault.lower()]

    def fetch(self, obj: KeyVaultObject, version: str) -> asyncio.Future[list[_Piece]]:
        vault = self.vault_of(obj)
        # The client is per (identity, vault); the vault's name is in the key all the same.
        key = (
            id(vault),
            vault.vault_name.lower(),
            obj.type.value,
            obj.name,
            version,
            obj.format.value,
        )
        task = self.memo.get(key)
        if task is None:
            inflight = self.fetcher._inflight
            shared = inflight.get(key)
            if shared is None:
                content = self.fetcher._content(vault, obj, version)
                shared = asyncio.ensure_future(self.bounded(self.fetcher._timed(obj, content)))
                inflight[key] = shared
                shared.add_done_callback(functools.partial(self.fetcher._forget, key))
            # A mount that gives up (deadline) must not cancel the others' fetch.
            task = asyncio.ensure_future(asyncio.shield(shared))
            self.memo[key] = task
        return task

    async def select(self, obj: KeyVaultObject) -> list[KeyVaultObject]:
        """The objects a selection matches now, by name, each a named object of its own."""
        assert obj.selection is not None
        listing = self.vault_of(obj).list_objects(obj.type.value)
        try:
            found: list[ObjectInfo] = await self.bounded(self.fetcher._timed(obj, listing))
        except ProviderError as exc:
            detail = exc.message.removeprefix(object_context(obj.type, "", "") + ": ")
            raise ProviderError(
                exc.kind,
                f"{obj.label()}: listing the {obj.type}s of Key Vault "
                f"{self.vault_of(obj).vault_name} failed: {detail}",
                reason=exc.reason,
            ) from None
        names = sorted(
            (i.name for i in found if i.enabled and obj.selection.matches(i.name, i.tags)),
            key=str.lower,
        )
        if len(names) > MAX_SELECTED:
            raise ProviderError(
                Kind.FAILED_PRECONDITION,
                f"{obj.label()}: {len(names)} objects match, at most {MAX_SELECTED}: narrow "
                "objectNamePattern or objectTags, or split the entry",
                reason="objectNamePattern",
            )
        return [dataclasses.replace(obj, name=name, selection=None) for name in names]

    async def one(self, obj: KeyVaultObject) -> list[_Fetched]:
        if obj.selection is not None:
            matched = await asyncio.gather(*(self.one(o) for o in await self.select(obj)))
            return [item for per_object in matched for item in per_object]
        uid = obj.version_id(self.default_name)
        if obj.single_version:
            return [(obj, obj.file_name, uid, await self.fetch(obj, obj.requested_version))]
        listing = self.vault_of(obj).list_versions(obj.type.value, obj.name)
        versions = await self.bounded(self.fetcher._timed(obj, listing))
        chosen = latest_versions(obj, versions)
        pieces = await asyncio.gather(*(self.fetch(obj, v) for _, v in chosen))
        return [
            (obj, f"{obj.file_name}/{i}", f"{uid}/{i}", p)
            for (i, _), p in zip(chosen, pieces, strict=True)
        ]


def _lay_out(params: MountParameters, fetched: list[list[_Fetched]]) -> MountResult:
    """Files and versions in upstream's order; clashes and the file count checked as laid out.
    An object's JSON keys (ours) follow its own file, in the order of its `jmesPath`."""
    files: list[File] = []
    versions: list[ObjectVersion] = []
    layout = Layout()

    def add(obj: KeyVaultObject, path: str, mode: int, contents: bytes, ov: ObjectVersion) -> None:
        if len(files) >= MAX_FILES:
            raise invalid(
                f"this mount writes more than {MAX_FILES} files (objects and their "
                "versions): split the SecretProviderClass",
                "files",
            )
        layout.claim_file(path, obj)
        files.append(File(path, mode, contents))
        versions.append(ov)

    for obj, base, uid, pieces in (item for per_object in fetched for item in per_object):
        mode = obj.file_permission if obj.file_permission is not None else params.default_mode
        for piece in pieces:
            add(
                obj,
                base + piece.suffix,
                mode,
                _converted(obj, piece),
                ObjectVersion(uid, piece.version),
            )
        if obj.json_keys:
            own = ObjectVersion(uid, pieces[-1].version)
            for alias, data in jsonkeys.extract(obj.label(), pieces[-1].content, obj.json_keys):
                add(obj, alias, mode, data, own)
    return MountResult(tuple(files), tuple(versions))


def _converted(obj: KeyVaultObject, piece: _Piece) -> bytes:
    try:
        return content_bytes(piece.content, obj.type, obj.encoding)
    except certificates.ConversionError as exc:
        raise invalid(f"{object_context(obj.type, obj.name, obj.version)}: {exc}") from None


def latest_versions(obj: KeyVaultObject, versions: list[VersionInfo]) -> list[tuple[int, str]]:
    """Newest first from the pinned version (or the latest): indexes 0..N, as upstream lays out."""
    ordered = sorted(versions, key=lambda v: v.created, reverse=True)
    found = obj.requested_version == ""
    chosen: list[tuple[int, str]] = []
    for info in ordered:
        found = found or info.version == obj.version
        if found:
            chosen.append((len(chosen), info.version))
            if len(chosen) > obj.version_history:
                break
    if not chosen:
        where = f" from version {obj.version}" if obj.version else ""
        raise ProviderError(
            Kind.NOT_FOUND,
            f"{object_context(obj.type, obj.name, obj.version)}: no enabled versions{where}",
        )
    return chosen
