"""Standalone mode's inputs: a SecretProviderClass manifest and nodePublishSecretRef data read
from files (or the environment), checked as the API server and a publish would check them,
and the target directory standalone mode takes over."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Mapping
from typing import Any

import yaml

from . import mounter
from .errors import KubeError
from .kube import GROUP, SecretProviderClassSpec

SECRET_ENV = "SECRETS_STORE_NODE_PUBLISH_SECRET"
API_VERSIONS = (f"{GROUP}/v1", f"{GROUP}/v1alpha1")


class StandaloneError(Exception):
    """Bad input (SPC file, secrets, target, provider socket): one clear line, exit code 1."""


def _spc_document(path: str) -> dict[str, Any]:
    """The one SecretProviderClass object of a manifest file."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise StandaloneError(f"SecretProviderClass file {path}: not found") from None
    except OSError as e:
        raise StandaloneError(f"SecretProviderClass file {path}: {e.strerror}") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise StandaloneError(f"SecretProviderClass file {path}: not valid YAML: {e}") from None
    if not docs:
        raise StandaloneError(f"SecretProviderClass file {path}: empty")
    spcs = [d for d in docs if isinstance(d, dict) and d.get("kind") == "SecretProviderClass"]
    if not spcs:
        kinds = ", ".join(
            repr(d.get("kind")) if isinstance(d, dict) else type(d).__name__ for d in docs
        )
        raise StandaloneError(
            f"SecretProviderClass file {path}: no object of kind SecretProviderClass "
            f"(found {kinds})"
        )
    if len(spcs) > 1:
        raise StandaloneError(
            f"SecretProviderClass file {path}: {len(spcs)} SecretProviderClasses; give one per file"
        )
    doc: dict[str, Any] = spcs[0]
    return doc


def load_spc(path: str) -> SecretProviderClassSpec:
    """The SecretProviderClass in a manifest file, checked as the API server and a publish
    would check it."""
    doc = _spc_document(path)
    if doc.get("apiVersion") not in API_VERSIONS:
        raise StandaloneError(
            f"SecretProviderClass file {path}: apiVersion {doc.get('apiVersion')!r}, "
            f"want {API_VERSIONS[0]}"
        )
    meta = doc.get("metadata") or {}
    name = str(meta.get("name") or "") if isinstance(meta, dict) else ""
    if not name:
        raise StandaloneError(f"SecretProviderClass file {path}: metadata.name is not set")
    namespace = str(meta.get("namespace") or "default")
    spec = doc.get("spec") or {}
    if not isinstance(spec, dict):
        raise StandaloneError(f"SecretProviderClass file {path}: spec is not a mapping")
    provider = spec.get("provider")
    if not provider:
        raise StandaloneError(f"provider not set in {namespace}/{name} ({path})")
    params = spec.get("parameters") or {}
    if not isinstance(params, dict):
        raise StandaloneError(f"SecretProviderClass file {path}: spec.parameters is not a mapping")
    if not params:
        raise StandaloneError(f"parameters not set in {namespace}/{name} ({path})")
    for key, value in params.items():
        if not isinstance(value, str):
            raise StandaloneError(
                f"SecretProviderClass file {path}: spec.parameters.{key} must be a string "
                f"(quote it), got {type(value).__name__}"
            )
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise StandaloneError(
            f"SecretProviderClass file {path}: metadata.annotations is not a mapping"
        )
    return SecretProviderClassSpec(
        namespace=namespace,
        name=name,
        provider=str(provider),
        parameters={str(k): v for k, v in params.items()},
        annotations={str(k): str(v) for k, v in annotations.items()},
    )


def load_secrets(path: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """nodePublishSecretRef data: a YAML/JSON map of strings, or a Kubernetes Secret manifest
    (`data` base64, `stringData` plain); else JSON in $SECRETS_STORE_NODE_PUBLISH_SECRET."""
    env = os.environ if env is None else env
    if not path:
        text = env.get(SECRET_ENV, "")
        if not text:
            return {}
        where = f"${SECRET_ENV}"
    else:
        where = f"secrets file {path}"
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise StandaloneError(f"{where}: {e.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        raise StandaloneError(f"{where}: not valid YAML or JSON") from None  # no secret in it
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise StandaloneError(f"{where}: want a map of names to strings")
    if doc.get("kind") == "Secret":
        out: dict[str, str] = {}
        for k, v in (doc.get("data") or {}).items():
            try:
                out[str(k)] = base64.b64decode(str(v), validate=True).decode("utf-8", "replace")
            except ValueError:
                raise StandaloneError(f"{where}: data.{k} is not base64") from None
        out.update({str(k): str(v) for k, v in (doc.get("stringData") or {}).items()})
        return out
    for k, v in doc.items():
        if not isinstance(v, str):
            raise StandaloneError(f"{where}: value of {k!r} must be a string")
    return {str(k): v for k, v in doc.items()}


class FileSpcSource:
    """SpcSource over a manifest file, re-read on every get (rotation picks up edits)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.spec = load_spc(path)

    async def get(self, namespace: str, name: str) -> SecretProviderClassSpec:
        try:
            spec = await asyncio.to_thread(load_spc, self.path)
        except StandaloneError as e:
            raise KubeError(str(e)) from None
        if (spec.namespace, spec.name) != (namespace, name):
            raise KubeError(
                f"{self.path} now holds {spec.namespace}/{spec.name}, not {namespace}/{name}"
            )
        self.spec = spec
        return spec


def check_target(target: str) -> None:
    if os.path.islink(target):
        raise StandaloneError(f"target path {target} is a symlink; give the directory itself")
    if not os.path.exists(target):
        raise StandaloneError(f"target path {target} does not exist; create the directory first")
    if not os.path.isdir(target):
        raise StandaloneError(f"target path {target} is not a directory")
    if mounter.is_mount_point(target):
        raise StandaloneError(f"target path {target} is already a mount point; unmount it first")
    if os.listdir(target):
        raise StandaloneError(
            f"target path {target} is not empty; standalone mode owns the directory's "
            "contents and removes them on exit"
        )
