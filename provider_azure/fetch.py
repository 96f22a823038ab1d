"""One mount: resolve versions, fetch every object concurrently (bounded), convert, lay out files.

Output order, paths, modes, bytes and object versions are upstream's: objects in the order of
the `objects` array; for a certificate-backed secret with separate files, `.crt`, `.key`, then
the combined file; `objectVersionHistory: N` (N > 1) gives `name/0..name/N`, newest first.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from . import certificates
from .content import content_bytes
from .errors import Kind, ProviderError, invalid, object_context
from .keyvault import CertificateValue, KeyValue, SecretValue, VersionInfo
from .limits import MAX_FILES
from .parameters import KeyVaultObject, MountParameters, ObjectFormat, ObjectType
from .paths import Layout

CERT_TYPE_PEM = "application/x-pem-file"
CERT_TYPE_PFX = "application/x-pkcs12"


class Vault(Protocol):
    vault_name: str

    async def get_secret(self, name: str, version: str) -> SecretValue: ...
    async def get_key(self, name: str, version: str) -> KeyValue: ...
    async def get_certificate(self, name: str, version: str) -> CertificateValue: ...
    async def list_versions(self, object_type: str, name: str) -> list[VersionInfo]: ...


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
        self._inflight: dict[tuple[int, str, str, str, str], asyncio.Future[list[_Piece]]] = {}

    async def mount(self, params: MountParameters, vault: Vault) -> MountResult:
        semaphore = asyncio.Semaphore(self.concurrency)
        memo: dict[tuple[int, str, str, str, str], asyncio.Future[list[_Piece]]] = {}

        async def bounded(coro: Awaitable[Any]) -> Any:
            async with semaphore:
                return await coro

        def fetch(obj: KeyVaultObject, version: str) -> asyncio.Future[list[_Piece]]:
            key = (id(vault), obj.type.value, obj.name, version, obj.format.value)
            task = memo.get(key)
            if task is None:
                shared = self._inflight.get(key)
                if shared is None:
                    shared = asyncio.ensure_future(
                        bounded(self._timed(obj, self._content(vault, obj, version)))
                    )
                    self._inflight[key] = shared
                    shared.add_done_callback(functools.partial(self._forget, key))
                # A mount that gives up (deadline) must not cancel the others' fetch.
                task = asyncio.ensure_future(asyncio.shield(shared))
                memo[key] = task
            return task

        async def one(obj: KeyVaultObject) -> list[tuple[KeyVaultObject, str, str, list[_Piece]]]:
            if obj.single_version:
                return [(obj, obj.file_name, obj.uid, await fetch(obj, obj.requested_version))]
            versions = await bounded(
                self._timed(obj, vault.list_versions(obj.type.value, obj.name))
            )
            chosen = latest_versions(obj, versions)
            pieces = await asyncio.gather(*(fetch(obj, v) for _, v in chosen))
            return [
                (obj, f"{obj.file_name}/{i}", f"{obj.uid}/{i}", p)
                for (i, _), p in zip(chosen, pieces, strict=True)
            ]

        tasks = [asyncio.ensure_future(one(obj)) for obj in params.objects]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            for pending in memo.values():
                pending.cancel()
            raise

        files: list[File] = []
        versions: list[ObjectVersion] = []
        layout = Layout()
        for per_object in results:
            for obj, base, uid, pieces in per_object:
                mode = (
                    obj.file_permission if obj.file_permission is not None else params.default_mode
                )
                for piece in pieces:
                    path = base + piece.suffix
                    if len(files) >= MAX_FILES:
                        raise invalid(
                            f"this mount writes more than {MAX_FILES} files (objects and their "
                            "versions): split the SecretProviderClass",
                            "files",
                        )
                    layout.claim_file(path, obj)
                    try:
                        data = content_bytes(piece.content, obj.type, obj.encoding)
                    except certificates.ConversionError as exc:
                        raise invalid(
                            f"{object_context(obj.type, obj.name, obj.version)}: {exc}"
                        ) from None
                    files.append(File(path, mode, data))
                    versions.append(ObjectVersion(uid, piece.version))
        return MountResult(tuple(files), tuple(versions))

    def _forget(self, key: tuple[int, str, str, str, str], done: asyncio.Future[Any]) -> None:
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
