"""The operator docs stay true.

- docs/examples/*.yaml: every document parses; each SecretProviderClass passes the driver's
  checks (standalone's manifest check and secret sync's secretObjects check) and the provider's
  parameter parsing, with the Mount request built exactly as a publish builds it; every
  secretObjects entry names a file the provider would write; every file applies with a
  server-side dry run to the real kube-apiserver (CRDs from daemonset/); the service-principal
  example mounts for real through provider_azure against the Key Vault emulator, and so does
  the ingress TLS one (workload identity), whose file the driver's sync splits into tls.crt and
  tls.key, and the versions one (a user-assigned identity through IMDS: pinning, history,
  filePermission as its comments say).
- docs/troubleshooting.md: every message marked `<!-- msg -->` occurs in the source tree
  (`…` stands for a value filled in at run time); the sign-in, federation, role and 429 rows
  are produced for real against the emulator, the secretObjects row by the driver's sync code.
- README.md and the docs above: relative links and anchors resolve.
- docs/metrics.md: the metric tables list exactly what both daemons register: names, types and
  label names.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from lightkube import AsyncClient, codecs
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, ServiceAccount
from prometheus_client import CollectorRegistry

from csi_driver import atomic_writer
from csi_driver import metrics as driver_metrics
from csi_driver.intervals import DEFAULT_MIN_INTERVAL, spc_interval
from csi_driver.manifests import load_spc
from csi_driver.secret_objects import SyncError, build_data, parse_secret_objects
from csi_driver.volumes import FILE_PERMISSION, build_mount_request, go_json
from provider_azure import clouds
from provider_azure.auth import ClientCache
from provider_azure.errors import Kind, ProviderError
from provider_azure.fetch import ContentOptions
from provider_azure.identity import IdentityMode
from provider_azure.keyvault import ROLE_HINTS, ClientOptions
from provider_azure.metrics import Metrics as ProviderMetrics
from provider_azure.parameters import MountParameters, parse_mount
from provider_azure.provider import Provider
from provider_azure.server import MOUNT_PREFIX
from testbed.controlplane import ControlPlane, prepare_cluster
from testbed.emulator import TENANT_ID, WI_APP_CLIENT_ID, Emulator, workload_token
from testbed.peers import peer

pytestmark = pytest.mark.filterwarnings("ignore:`verify=<str>` is deprecated:DeprecationWarning")

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "docs" / "examples").glob("*.yaml"))
TROUBLESHOOTING = REPO / "docs" / "troubleshooting.md"
METRICS_DOC = REPO / "docs" / "metrics.md"
SOURCES = ("csi_driver", "provider_azure", "keyvault_emulator")
SA_TOKENS = "csi.storage.k8s.io/serviceAccount.tokens"
AUDIENCE = "api://AzureADTokenExchange"
BINDING_AUDIENCE = "api://AKSIdentityBinding"

# What each example is about: its identity mode (a typo in the parameters would change it).
IDENTITY = {
    "fsgroup.yaml": IdentityMode.WORKLOAD_IDENTITY,
    "identity-binding.yaml": IdentityMode.IDENTITY_BINDING,
    "json-keys.yaml": IdentityMode.WORKLOAD_IDENTITY,
    "object-versions.yaml": IdentityMode.MANAGED_IDENTITY,
    "rotation-interval.yaml": IdentityMode.WORKLOAD_IDENTITY,
    "select-objects.yaml": IdentityMode.MANAGED_IDENTITY,
    "service-principal.yaml": IdentityMode.SERVICE_PRINCIPAL,
    "several-vaults.yaml": IdentityMode.WORKLOAD_IDENTITY,
    "sync-env-secret.yaml": IdentityMode.WORKLOAD_IDENTITY,
    "sync-tls-ingress.yaml": IdentityMode.WORKLOAD_IDENTITY,
    "user-assigned-identity.yaml": IdentityMode.MANAGED_IDENTITY,
    "workload-identity.yaml": IdentityMode.WORKLOAD_IDENTITY,
}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _pod_specs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pod specs of the Pods and workload controllers in a file."""
    specs = []
    for d in docs:
        if d["kind"] == "Pod":
            specs.append(d["spec"])
        elif d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            specs.append(d["spec"]["template"]["spec"])
    return specs


def _csi_volumes(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        v["csi"]
        for v in spec.get("volumes") or []
        if (v.get("csi") or {}).get("driver") == "secrets-store.csi.k8s.io"
    ]


def _mount_request(
    docs: list[dict[str, Any]], spc_params: dict[str, str], spec: dict[str, Any]
) -> tuple[str, str]:
    """Attributes and secrets as kubelet and the driver build them for this pod's volume."""
    (volume,) = _csi_volumes(spec)
    context = dict(volume.get("volumeAttributes") or {})
    sa = spec.get("serviceAccountName") or "default"
    context.update(
        {
            "csi.storage.k8s.io/pod.name": "example-pod",
            "csi.storage.k8s.io/pod.namespace": "example-ns",
            "csi.storage.k8s.io/pod.uid": str(uuid.uuid4()),
            "csi.storage.k8s.io/serviceAccount.name": sa,
            "csi.storage.k8s.io/ephemeral": "true",
        }
    )
    # the CSIDriver in daemonset/ asks kubelet for these audiences (tokenRequests)
    subject = f"system:serviceaccount:example-ns:{sa}"
    context[SA_TOKENS] = json.dumps(
        {
            aud: {
                "token": workload_token(subject=subject, audience=aud),
                "expirationTimestamp": "2030-01-01T00:00:00Z",
            }
            for aud in (AUDIENCE, BINDING_AUDIENCE)
        }
    )
    secrets: dict[str, str] = {}
    ref = (volume.get("nodePublishSecretRef") or {}).get("name")
    if ref:
        (secret,) = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == ref]
        secrets = dict(secret.get("stringData") or {})
    return build_mount_request(spc_params, context, secrets)


def _written_paths(params: MountParameters) -> set[str]:
    paths = set()
    for obj in params.objects:
        paths.update(key.alias for key in obj.json_keys)
        if obj.selection is not None:
            continue  # its files are the names Key Vault lists
        if obj.single_version:
            paths.add(obj.file_name)
        else:
            paths.update(f"{obj.file_name}/{i}" for i in range(obj.version_history + 1))
    return paths


def test_every_example_is_covered() -> None:
    assert [p.name for p in EXAMPLES] == sorted(IDENTITY)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_passes_driver_and_provider_checks(path: Path) -> None:
    docs = _docs(path)
    for d in docs:
        assert d.get("apiVersion") and d.get("kind") and d["metadata"].get("name"), d
    spc = load_spc(str(path))  # the driver's manifest check (one SPC per file)
    assert spc_interval(spc, DEFAULT_MIN_INTERVAL).warning == ""  # its annotation, if any
    (spc_doc,) = [d for d in docs if d["kind"] == "SecretProviderClass"]
    secret_objects, errors = parse_secret_objects(spc_doc)
    assert errors == []
    assert len(secret_objects) == len(spc_doc["spec"].get("secretObjects") or [])

    specs = _pod_specs(docs)
    assert specs, f"{path.name}: no workload mounts the SecretProviderClass"
    for spec in specs:
        (volume,) = _csi_volumes(spec)
        assert volume["volumeAttributes"]["secretProviderClass"] == spc.name
        assert volume.get("readOnly") is True  # the driver refuses a writable volume
        attributes, secrets = _mount_request(docs, spc.parameters, spec)
        params = parse_mount(attributes, secrets, go_json(FILE_PERMISSION))
        assert params.identity.mode is IDENTITY[path.name]
        files = _written_paths(params)
        # the classic mistake: secretObjects naming the Key Vault object, not the file
        for obj in secret_objects:
            for item in obj.data:
                assert item.object_name in files, (path.name, item.object_name, files)
        for container in spec["containers"]:
            for env in container.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    keys = {
                        i.key
                        for o in secret_objects
                        if o.secret_name == ref["name"]
                        for i in o.data
                    }
                    assert ref["key"] in keys, (path.name, ref)


# ---- server-side dry run against the real kube-apiserver ---------------------------------


@pytest.fixture(scope="module")
def docs_control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """A control plane of this module's own, stopped when the module is done (the session
    fixtures of tests/kube would keep one running until the end of the suite)."""
    etcd, apiserver, kcm = peer("etcd"), peer("kube-apiserver"), peer("kube-controller-manager")
    cp = ControlPlane(tmp_path_factory.mktemp("kube-docs"), etcd, apiserver, kcm)
    try:
        cp.start()
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="module")
async def admin_client(docs_control_plane: ControlPlane) -> AsyncIterator[AsyncClient]:
    """Admin client with daemonset/'s CRDs, CSIDriver and RBAC applied."""
    client = await prepare_cluster(docs_control_plane)
    yield client
    await client.close()


@pytest.fixture(scope="module")
async def example_namespace(admin_client: AsyncClient) -> AsyncIterator[str]:
    ns = f"docs-examples-{uuid.uuid4().hex[:6]}"
    await admin_client.create(Namespace(metadata=ObjectMeta(name=ns)))
    for _ in range(200):  # kube-controller-manager creates the default ServiceAccount
        try:
            await admin_client.get(ServiceAccount, "default", namespace=ns)
            break
        except Exception:
            await asyncio.sleep(0.05)
    yield ns
    await admin_client.delete(Namespace, ns)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
async def test_example_applies_dry_run(
    path: Path, admin_client: AsyncClient, example_namespace: str
) -> None:
    docs = _docs(path)
    # Pods are admitted only if their ServiceAccount exists: create those for real first.
    for d in docs:
        if d["kind"] == "ServiceAccount":
            obj = codecs.from_dict(d)
            await admin_client.apply(obj, namespace=example_namespace, force=True)
    for d in docs:
        obj = codecs.from_dict(d)
        await admin_client.apply(obj, namespace=example_namespace, force=True, dry_run=True)


# ---- the service-principal example, mounted for real -------------------------------------

EXAMPLE_VAULT = "kv-test"  # listed in tests/netns-hosts; the example's own name is not


@pytest.fixture(scope="module")
def sp_example(emulator: Emulator) -> dict[str, Any]:
    """The emulator holds the example's objects and its service principal; a second service
    principal has no role at all."""
    docs = _docs(REPO / "docs" / "examples" / "service-principal.yaml")
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    creds = secret["stringData"]
    denied = {"clientid": str(uuid.uuid4()), "clientsecret": "docs-example-denied-secret"}
    emulator.seed(
        {
            "identities": [
                {
                    "name": "docs-example-sp",
                    "type": "servicePrincipal",
                    "clientId": creds["clientid"],
                    "clientSecret": creds["clientsecret"],
                },
                {
                    "name": "docs-example-denied",
                    "type": "servicePrincipal",
                    "clientId": denied["clientid"],
                    "clientSecret": denied["clientsecret"],
                },
            ],
            "vaults": [
                {
                    "name": EXAMPLE_VAULT,
                    "roleAssignments": [
                        {"identity": "docs-example-sp", "role": role}
                        for role in (
                            "Key Vault Secrets User",
                            "Key Vault Crypto User",
                            "Key Vault Certificate User",
                        )
                    ],
                    "secrets": [{"name": "db-password", "value": "docs-example-password"}],
                    "keys": [{"name": "signing-key", "kty": "RSA", "size": 2048}],
                    "certificates": [
                        {
                            "name": "web-cert",
                            "generate": {"subject": "CN=web.example.test", "kty": "RSA"},
                            "contentType": "application/x-pem-file",
                        }
                    ],
                }
            ],
        }
    )
    return {"docs": docs, "creds": creds, "denied": denied}


@pytest.fixture(scope="module")
async def provider() -> AsyncIterator[Provider]:
    p = Provider(
        ContentOptions(),
        clouds.PUBLIC,
        ProviderMetrics(),
        ClientCache(ClientOptions(timeout=10, retry_total=0)),
    )
    yield p
    await p.close()


def _sp_request(
    sp_example: dict[str, Any], creds: dict[str, str], **override: str
) -> tuple[str, str]:
    docs = sp_example["docs"]
    spc = next(d for d in docs if d["kind"] == "SecretProviderClass")
    params = dict(spc["spec"]["parameters"])
    params.update(keyvaultName=EXAMPLE_VAULT, tenantId=TENANT_ID, **override)
    (spec,) = _pod_specs(docs)
    attributes, _ = _mount_request(docs, params, spec)
    return attributes, go_json(creds)


async def _mount_error(provider: Provider, attributes: str, secrets: str) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await provider.mount(attributes, secrets, go_json(FILE_PERMISSION))
    return info.value


async def test_service_principal_example_mounts(
    provider: Provider, sp_example: dict[str, Any]
) -> None:
    attributes, secrets = _sp_request(sp_example, sp_example["creds"])
    result = await provider.mount(attributes, secrets, go_json(FILE_PERMISSION))
    files = {f.path: f for f in result.files}
    assert sorted(files) == ["db-password", "signing-key", "web-cert"]
    assert files["db-password"].contents == b"docs-example-password"
    assert files["signing-key"].contents.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert files["web-cert"].contents.startswith(b"-----BEGIN CERTIFICATE-----")
    assert all(f.mode == 0o644 for f in files.values())
    assert sorted(v.id for v in result.object_versions) == [
        "cert/web-cert",
        "key/signing-key",
        "secret/db-password",
    ]


async def test_troubleshooting_sign_in_and_role_rows_are_real(
    provider: Provider, sp_example: dict[str, Any]
) -> None:
    """The messages troubleshooting.md shows for a wrong client secret, a wrong client id and
    a missing role (one per objectType) are what the provider answers."""
    doc = TROUBLESHOOTING.read_text()
    creds = sp_example["creds"]

    wrong_secret = {"clientid": creds["clientid"], "clientsecret": "not-the-secret"}
    err = await _mount_error(provider, *_sp_request(sp_example, wrong_secret))
    print(f"[wrong secret] {err.kind.value}: {MOUNT_PREFIX}{err}")
    assert err.kind is Kind.UNAUTHENTICATED and "AADSTS7000215" in err.message
    assert "AADSTS7000215" in doc, "troubleshooting.md lacks the wrong-secret row"
    assert "not-the-secret" not in err.message

    wrong_id = {"clientid": str(uuid.uuid4()), "clientsecret": creds["clientsecret"]}
    err = await _mount_error(provider, *_sp_request(sp_example, wrong_id))
    print(f"[wrong client id] {err.kind.value}: {MOUNT_PREFIX}{err}")
    assert err.kind is Kind.UNAUTHENTICATED and "AADSTS700016" in err.message
    assert "AADSTS700016" in doc, "troubleshooting.md lacks the wrong-client-id row"

    rows = (("secret", "db-password"), ("key", "signing-key"), ("cert", "web-cert"))
    for object_type, name in rows:
        objects = yaml.safe_dump(
            {"array": [yaml.safe_dump({"objectName": name, "objectType": object_type})]}
        )
        err = await _mount_error(
            provider, *_sp_request(sp_example, sp_example["denied"], objects=objects)
        )
        print(f"[no role, {object_type}] {err.kind.value}: {MOUNT_PREFIX}{err}")
        assert err.kind is Kind.PERMISSION_DENIED
        assert ROLE_HINTS[object_type] in err.message
        assert ROLE_HINTS[object_type] in doc, f"troubleshooting.md lacks the {object_type} role"


async def test_troubleshooting_workload_identity_and_throttling_rows_are_real(
    provider: Provider, sp_example: dict[str, Any], emulator: Emulator
) -> None:
    """AADSTS70021 for a ServiceAccount the identity is not federated with (the workload
    identity example, as the seeded application); a 429 that outlasts the retries."""
    docs = _docs(REPO / "docs" / "examples" / "workload-identity.yaml")
    spc = next(d for d in docs if d["kind"] == "SecretProviderClass")
    params = dict(spc["spec"]["parameters"])
    # the emulator's application is federated with system:serviceaccount:default:workload only
    params.update(keyvaultName=EXAMPLE_VAULT, tenantId=TENANT_ID, clientID=WI_APP_CLIENT_ID)
    (spec,) = _pod_specs(docs)
    attributes, secrets = _mount_request(docs, params, spec)
    err = await _mount_error(provider, attributes, secrets)
    print(f"[federation] {err.kind.value}: {MOUNT_PREFIX}{err}")
    assert err.kind is Kind.UNAUTHENTICATED
    assert "AADSTS70021" in err.message
    doc = TROUBLESHOOTING.read_text()
    assert re.search(r"AADSTS70021\b", doc), "troubleshooting.md lacks the federation row"
    assert "Assertion Subject: 'system:serviceaccount:example-ns:app-sa'" in err.message

    creds = sp_example["creds"]
    objects = yaml.safe_dump(
        {"array": [yaml.safe_dump({"objectName": "db-password", "objectType": "secret"})]}
    )
    emulator.add_fault(
        service="kv", vault=EXAMPLE_VAULT, identity=creds["clientid"], status=429, count=1
    )
    try:
        err = await _mount_error(provider, *_sp_request(sp_example, creds, objects=objects))
    finally:
        emulator.clear_faults()
    print(f"[throttled] {err.kind.value}: {MOUNT_PREFIX}{err}")
    assert err.kind is Kind.UNAVAILABLE and "(429)" in err.message
    assert "throttled (429)" in doc, "troubleshooting.md lacks the throttling row"


# ---- troubleshooting.md: every marked message occurs in the source tree ------------------

_MARKED = re.compile(r"<!-- msg -->\s*`([^`]+)`")
_PRINTF = re.compile(r"%[-#0 +]*\d*(?:\.\d+)?[sdfr]")
HOLE = "\x00"  # a value filled in at run time


def _render(node: ast.expr) -> str | None:
    """A string literal's text, with a HOLE for each f-string field."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return _PRINTF.sub(HOLE, node.value)
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                parts.append(value.value)
            else:
                parts.append(HOLE)
        return "".join(parts)
    return None


def _source_strings() -> list[str]:
    """Every string literal of the product packages (implicit concatenation already joined)."""
    out = []
    for package in SOURCES:
        for path in sorted((REPO / package).rglob("*.py")):
            if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if not isinstance(node, ast.JoinedStr | ast.Constant):
                    continue
                text = _render(node)
                if text:
                    out.append(text)
    return out


def _pattern(message: str) -> re.Pattern[str]:
    """`…` in the doc matches a HOLE (or any text) in the source."""
    pieces = [re.escape(p) for p in message.split("…")]
    return re.compile(".*?".join(pieces), re.DOTALL)


@pytest.fixture(scope="module")
def source_strings() -> list[str]:
    return _source_strings()


def test_marked_messages_exist_in_the_source(source_strings: list[str]) -> None:
    text = TROUBLESHOOTING.read_text()
    messages = [" ".join(m.split()) for m in _MARKED.findall(text)]
    assert len(messages) >= 30, "fewer marked messages than expected: is the marker intact?"
    missing = [m for m in messages if not any(_pattern(m).search(s) for s in source_strings)]
    assert missing == [], f"troubleshooting.md quotes messages the code does not produce: {missing}"


def test_message_check_can_fail(source_strings: list[str]) -> None:
    """The checker is not vacuous: a reworded message, or a literal where the code has a
    field, is not found."""
    for wrong in (
        "failed to mount secret store objects for pod …/…, err: …",  # 'secret' not 'secrets'
        'provider not found: provider "azure"x',
        "access to Key Vault kv denied (403)",  # the vault is a field: text fails to match
    ):
        assert not any(_pattern(wrong).search(s) for s in source_strings), wrong


# ---- metrics.md: exactly what both daemons register ---------------------------------------

_ROW = re.compile(r"^\|\s*`([a-z_0-9]+)`\s*\|\s*(counter|histogram|gauge)\s*\|([^|]*)\|", re.M)


def _doc_table(marker: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    text = METRICS_DOC.read_text()
    start = text.index(f"<!-- metrics: {marker} -->")
    table = text[start:].split("\n\n", 1)[0]
    rows = {}
    for name, kind, labels in _ROW.findall(table):
        assert name not in rows, f"{name} listed twice"
        rows[name] = (kind, tuple(re.findall(r"`([a-z_]+)`", labels)))
    return rows


def _registered(registry: CollectorRegistry) -> dict[str, Any]:
    """Exposed name → (type, collector family name)."""
    out = {}
    for family in registry.collect():
        exposed = family.name + "_total" if family.type == "counter" else family.name
        out[exposed] = family.type
    return out


def _collectors(registry: CollectorRegistry) -> dict[str, Any]:
    by_name: dict[str, Any] = {}
    for collector in list(registry._collector_to_names):  # no public iterator
        for family in collector.collect():
            by_name[family.name] = collector
    return by_name


def _check(rows: dict[str, tuple[str, tuple[str, ...]]], registry: CollectorRegistry) -> None:
    registered = _registered(registry)
    assert sorted(rows) == sorted(registered)
    collectors = _collectors(registry)
    for name, (kind, labels) in rows.items():
        assert registered[name] == kind, name
        family = name[: -len("_total")] if kind == "counter" else name
        # prometheus-client refuses label names other than the registered ones
        collectors[family].labels(**{label: "x" for label in labels})
        with pytest.raises(ValueError):
            collectors[family].labels(**{label: "x" for label in (*labels, "extra")})


def test_driver_metrics_table_matches_registry() -> None:
    from csi_driver.events import NoEvents
    from csi_driver.mounts import MountTable
    from csi_driver.plans import KubePlans
    from csi_driver.rotation import Reconciler
    from csi_driver.spcps import NoStatus
    from csi_driver.startup_taint import StartupTaint

    registry = CollectorRegistry()
    metrics = driver_metrics.Metrics(registry)
    Reconciler(  # registers the rotation metrics beside the driver's
        mounts=MountTable(),
        providers=None,  # type: ignore[arg-type]
        spcs=None,  # type: ignore[arg-type]
        metrics=metrics,
        plans=KubePlans(None, None, "n"),  # type: ignore[arg-type]
        events=NoEvents(),
        status=NoStatus(),
        interval=60,
    )
    StartupTaint(  # registers the startup taint's gauge (--remove-startup-taint)
        None,  # type: ignore[arg-type]
        "n",
        "d",
        "unix:///x",
        None,  # type: ignore[arg-type]
        (),
        metrics,
        None,  # type: ignore[arg-type]
    )
    _check(_doc_table("driver"), registry)


def test_provider_metrics_table_matches_registry() -> None:
    _check(_doc_table("provider"), ProviderMetrics().registry)


# ---- links in the docs this file keeps true ------------------------------------------------

_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    out = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return out


@pytest.mark.parametrize(
    "doc",
    [
        "README.md",
        "daemonset/chart/README.md",
        *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")),
    ],
)
def test_relative_links_resolve(doc: str) -> None:
    path = REPO / doc
    broken = []
    for target in _LINK.findall(path.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        missing_anchor = (
            dest.exists() and anchor and dest.is_file() and anchor not in _anchors(dest.read_text())
        )
        if not dest.exists() or missing_anchor:
            broken.append(target)
    assert broken == [], f"{doc}: broken links {broken}"


# ---- the ingress TLS example: workload identity, mounted, written, split -------------------


def _write_volume(target: Path, result: Any) -> None:
    """The provider's files written by the driver's own atomic writer (as a publish does)."""
    target.mkdir()
    atomic_writer.write(
        str(target),
        {f.path: atomic_writer.FileProjection(data=f.contents, mode=f.mode) for f in result.files},
    )


async def test_tls_ingress_example_mounts_and_splits(
    provider: Provider, emulator: Emulator, tmp_path: Path
) -> None:
    """The sync-tls-ingress example, as the emulator's federated application (the identity and
    its service account stand in for the example's): the certificate's secret mounts as
    tls-app.pem and the driver's sync turns it into tls.crt / tls.key."""
    docs = _docs(REPO / "docs" / "examples" / "sync-tls-ingress.yaml")
    spc = next(d for d in docs if d["kind"] == "SecretProviderClass")
    emulator.seed(
        {
            "vaults": [
                {
                    "name": EXAMPLE_VAULT,
                    "certificates": [
                        {
                            "name": "app-cert",
                            "generate": {"subject": "CN=app.example.com", "kty": "RSA"},
                            "contentType": "application/x-pkcs12",
                        }
                    ],
                }
            ]
        }
    )
    params = dict(spc["spec"]["parameters"])
    params.update(keyvaultName=EXAMPLE_VAULT, tenantId=TENANT_ID, clientID=WI_APP_CLIENT_ID)
    (spec,) = _pod_specs(docs)
    attributes, secrets = _mount_request(docs, params, spec)
    # the token of the ServiceAccount the emulator's application is federated with
    request = json.loads(attributes)
    request[SA_TOKENS] = json.dumps(
        {AUDIENCE: {"token": workload_token(), "expirationTimestamp": "2030-01-01T00:00:00Z"}}
    )
    result = await provider.mount(json.dumps(request), secrets, go_json(FILE_PERMISSION))
    assert [f.path for f in result.files] == ["tls-app.pem"]
    target = tmp_path / "volume"
    _write_volume(target, result)

    (secret_object,), errors = parse_secret_objects(spc)
    assert errors == [] and secret_object.type == "kubernetes.io/tls"
    data = build_data(secret_object, str(target))
    assert sorted(data) == ["tls.crt", "tls.key"]
    assert data["tls.key"].startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    leaf = x509.load_pem_x509_certificate(data["tls.crt"])
    assert leaf.subject.rfc4514_string() == "CN=app.example.com"


def test_secret_objects_naming_the_key_vault_object_warns_as_documented(tmp_path: Path) -> None:
    """The troubleshooting row: the env-var example with secretObjects naming the Key Vault
    object instead of its alias reads no file, with the message troubleshooting.md quotes."""
    docs = _docs(REPO / "docs" / "examples" / "sync-env-secret.yaml")
    spc = next(d for d in docs if d["kind"] == "SecretProviderClass")
    spc["spec"]["secretObjects"][0]["data"][0]["objectName"] = "db-connection-string"
    (spec,) = _pod_specs(docs)
    params = parse_mount(*_mount_request(docs, spc["spec"]["parameters"], spec), "420")
    target = tmp_path / "volume"
    target.mkdir()
    atomic_writer.write(
        str(target),
        {
            path: atomic_writer.FileProjection(data=b"value", mode=0o644)
            for path in _written_paths(params)
        },
    )
    (wrong,), errors = parse_secret_objects(spc)
    assert errors == []
    with pytest.raises(SyncError) as info:
        build_data(wrong, str(target))
    message = str(info.value)
    assert "db-connection-string" in message
    doc = " ".join(TROUBLESHOOTING.read_text().split())
    assert message.replace("db-connection-string", "…") in doc


# ---- the versions example: a user-assigned identity through IMDS, history, pinning ---------


async def test_object_versions_example_mounts_as_its_comments_say(
    provider: Provider, emulator: Emulator
) -> None:
    """object-versions.yaml through the emulator's IMDS as a user-assigned identity of its own:
    the pinned version, objectVersionHistory: 3 as four files newest first, and the cert's
    filePermission 0440 while the others keep the default 0644."""
    docs = _docs(REPO / "docs" / "examples" / "object-versions.yaml")
    spc = next(d for d in docs if d["kind"] == "SecretProviderClass")
    pinned = "6d5f0a1e2b3c4d5e6f708192a3b4c5d6"
    assert f'objectVersion: "{pinned}"' in spc["spec"]["parameters"]["objects"]
    identity = str(uuid.uuid4())
    secret = f"api-key-{uuid.uuid4().hex[:8]}"  # the example's name, made unique per run
    emulator.seed(
        {
            "identities": [
                {"name": "docs-example-mi", "type": "userAssigned", "clientId": identity}
            ],
            "vaults": [
                {
                    "name": EXAMPLE_VAULT,
                    "roleAssignments": [
                        {"identity": "docs-example-mi", "role": "Key Vault Secrets User"},
                        {"identity": "docs-example-mi", "role": "Key Vault Certificate User"},
                    ],
                    "secrets": [{"name": secret, "versions": [{"value": "v0", "version": pinned}]}],
                    "certificates": [
                        {
                            "name": "web-cert",
                            "generate": {"subject": "CN=web.example.test", "kty": "RSA"},
                            "contentType": "application/x-pem-file",
                        }
                    ],
                }
            ],
        }
    )
    for value in ("v1", "v2", "v3"):  # Key Vault orders versions by creation time, in seconds
        await asyncio.sleep(1.05)
        emulator.set_secret(EXAMPLE_VAULT, secret, value)
    params = dict(spc["spec"]["parameters"])
    params.update(
        keyvaultName=EXAMPLE_VAULT,
        tenantId=TENANT_ID,
        userAssignedIdentityID=identity,
        objects=params["objects"].replace("objectName: api-key", f"objectName: {secret}"),
    )
    (spec,) = _pod_specs(docs)
    attributes, secrets = _mount_request(docs, params, spec)
    result = await provider.mount(attributes, secrets, go_json(FILE_PERMISSION))
    files = {f.path: (f.contents, f.mode) for f in result.files}
    assert files[secret] == (b"v0", 0o644)  # pinned: not the current v3
    history = [files[f"api-key-history/{i}"] for i in range(4)]
    assert history == [(b"v3", 0o644), (b"v2", 0o644), (b"v1", 0o644), (b"v0", 0o644)]
    content, mode = files["web.crt"]
    assert content.startswith(b"-----BEGIN CERTIFICATE-----") and mode == 0o440
    assert len(files) == 6
