"""daemonset/ is what an operator applies: every document is accepted by a real kube-apiserver
(server-side dry-run: schema, defaulting, admission), and the driver and provider DaemonSets
are what the seeds show (names, labels, containers, ports, privileges), found by the seeds'
own label selector once their pods exist."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import AsyncClient, codecs
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apps_v1 import DaemonSet
from lightkube.resources.core_v1 import Node
from lightkube.resources.rbac_authorization_v1 import ClusterRole
from lightkube.resources.storage_v1 import CSIDriver

from .conftest import Kubectl
from .render import DAEMONSET, container, find, plain, plain_manifests

SELECTOR = "app in (secrets-store-csi-driver,secrets-store-provider-azure)"
SIDECAR_IMAGES = {
    "node-driver-registrar": "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.16.0",
    "liveness-probe": "registry.k8s.io/sig-storage/livenessprobe:v2.18.0",
}


def dry_run(kubectl: Kubectl, path: Path) -> None:
    proc = kubectl(
        "apply", "--server-side", "--dry-run=server", "--force-conflicts", "-f", str(path)
    )
    assert proc.returncode == 0, f"{path.name}: the apiserver refused it:\n{proc.stderr}"


@pytest.mark.parametrize("name", sorted(plain_manifests()))
def test_plain_manifest_passes_server_dry_run(kubectl: Kubectl, name: str) -> None:
    dry_run(kubectl, DAEMONSET / name)


def test_dry_run_catches_a_bad_manifest(kubectl: Kubectl, tmp_path: Path) -> None:
    """The dry run is the apiserver's, so it can fail: a DaemonSet whose selector does not
    match its pod labels is refused."""
    docs = plain("provider-azure.yaml")
    find(docs, "DaemonSet")["spec"]["selector"]["matchLabels"] = {"app": "other"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all(docs))
    proc = kubectl("apply", "--server-side", "--dry-run=server", "-f", str(bad))
    assert proc.returncode != 0
    assert "selector" in proc.stderr and "does not match" in proc.stderr


def test_driver_daemonset_as_the_seeds_show_it() -> None:
    ds = find(plain("secrets-store-csi-driver.yaml"), "DaemonSet")
    assert ds["metadata"]["name"] == "secrets-store-csi-driver"
    assert ds["metadata"]["namespace"] == "kube-system"
    pod = ds["spec"]["template"]
    assert pod["metadata"]["labels"]["app"] == "secrets-store-csi-driver"
    assert ds["spec"]["selector"]["matchLabels"] == {"app": "secrets-store-csi-driver"}
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "secrets-store-csi-driver"
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert [c["name"] for c in spec["containers"]] == [
        "node-driver-registrar",
        "secrets-store",
        "liveness-probe",
    ]
    for name, image in SIDECAR_IMAGES.items():
        assert container(ds, name)["image"] == image
    # Privileged only where mounting needs it.
    privileged = [
        c["name"] for c in spec["containers"] if (c.get("securityContext") or {}).get("privileged")
    ]
    assert privileged == ["secrets-store"]
    driver = container(ds, "secrets-store")
    assert driver["image"] == "secrets-store-csi-python/driver:0.1.0"
    assert "command" not in driver
    ports = {p["name"]: p["containerPort"] for p in driver["ports"]}
    assert ports == {"healthz": 9808, "metrics": 8095}
    mounts = {m["mountPath"]: m for m in driver["volumeMounts"]}
    assert mounts["/var/lib/kubelet/pods"]["mountPropagation"] == "Bidirectional"
    assert {
        "/var/run/secrets-store-csi-providers",
        "/etc/kubernetes/secrets-store-csi-providers",
    } <= set(mounts)
    assert "--http-endpoint=0.0.0.0:9808" in container(ds, "liveness-probe")["args"]
    for c in spec["containers"]:
        assert c["resources"]["requests"] and c["resources"]["limits"], c["name"]


def test_driver_daemonset_sockets_paths_and_sidecars() -> None:
    """The three containers meet at one CSI socket, which kubelet finds through the
    registration path; the node paths are kubelet's; the sidecars hold no privilege; the
    driver container is probed (through the livenessprobe sidecar's port)."""
    ds = find(plain("secrets-store-csi-driver.yaml"), "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    host = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert host["mountpoint-dir"] == "/var/lib/kubelet/pods"
    assert host["registration-dir"] == "/var/lib/kubelet/plugins_registry/"
    assert host["plugin-dir"] == "/var/lib/kubelet/plugins/csi-secrets-store/"
    assert host["providers-dir"] == "/var/run/secrets-store-csi-providers"
    assert host["providers-dir-0"] == "/etc/kubernetes/secrets-store-csi-providers"
    node_socket = host["plugin-dir"] + "csi.sock"

    def mounts(name: str) -> dict[str, str]:
        return {m["name"]: m["mountPath"] for m in container(ds, name)["volumeMounts"]}

    driver = container(ds, "secrets-store")
    env = {e["name"]: e.get("value") for e in driver["env"]}
    assert env["CSI_ENDPOINT"] == "unix:///csi/csi.sock"
    assert mounts("secrets-store")["plugin-dir"] == "/csi"
    assert driver["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}

    registrar = container(ds, "node-driver-registrar")
    assert "--csi-address=/csi/csi.sock" in registrar["args"]
    assert f"--kubelet-registration-path={node_socket}" in registrar["args"]
    assert (
        f"--kubelet-registration-path={node_socket}"
        in registrar["livenessProbe"]["exec"]["command"]
    )
    assert mounts("node-driver-registrar") == {
        "plugin-dir": "/csi",
        "registration-dir": "/registration",
    }

    probe = container(ds, "liveness-probe")
    assert "--csi-address=/csi/csi.sock" in probe["args"]
    assert mounts("liveness-probe") == {"plugin-dir": "/csi"}

    for name in ("node-driver-registrar", "liveness-probe"):
        sc = container(ds, name)["securityContext"]
        assert not sc.get("privileged"), name
        assert sc["allowPrivilegeEscalation"] is False, name
        assert sc["readOnlyRootFilesystem"] is True, name
        assert sc["capabilities"] == {"drop": ["ALL"]}, name


def test_provider_daemonset_least_privilege() -> None:
    docs = plain("provider-azure.yaml")
    sa = find(docs, "ServiceAccount")
    assert sa["metadata"] == {
        "name": "secrets-store-provider-azure",
        "namespace": "kube-system",
        "labels": {"app": "secrets-store-provider-azure"},
    }
    assert sa["automountServiceAccountToken"] is False
    ds = find(docs, "DaemonSet")
    assert ds["metadata"]["name"] == "secrets-store-provider-azure"
    assert ds["metadata"]["namespace"] == "kube-system"
    spec = ds["spec"]["template"]["spec"]
    assert ds["spec"]["template"]["metadata"]["labels"]["app"] == "secrets-store-provider-azure"
    assert spec["serviceAccountName"] == "secrets-store-provider-azure"
    assert spec["automountServiceAccountToken"] is False
    assert not spec.get("hostNetwork")
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert spec["tolerations"] == [{"operator": "Exists"}]
    (c,) = spec["containers"]
    assert c["image"] == "secrets-store-csi-python/provider-azure:0.1.0"
    assert "command" not in c
    sc = c["securityContext"]
    assert sc["privileged"] is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"healthz": 8989, "metrics": 8898}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert c["resources"]["requests"] and c["resources"]["limits"]
    # Its socket directory is the driver's --provider-volume, a hostPath both mount.
    vols = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["provider-vol"] == "/provider"
    assert "--endpoint=unix:///provider/azure.sock" in c["args"]
    host_dir = vols["provider-vol"]["hostPath"]["path"]
    driver = container(find(plain("secrets-store-csi-driver.yaml"), "DaemonSet"), "secrets-store")
    assert f"--provider-volume={host_dir}" in driver["args"]
    # Nothing of the node but that directory: no pods dir, no other hostPath.
    assert [v["name"] for v in spec["volumes"] if "hostPath" in v] == ["provider-vol"]
    # Of the service-account volume, the cluster CA only (identity binding), never a token.
    assert vols["cluster-ca"]["configMap"] == {
        "name": "kube-root-ca.crt",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
        "optional": True,
    }
    assert mounts["cluster-ca"] == "/var/run/secrets/kubernetes.io/serviceaccount"
    assert not any("projected" in v or "secret" in v for v in spec["volumes"])


def test_csidriver_consistent_with_rotation() -> None:
    """The plain manifests run with rotation off; requiresRepublish must say the same."""
    driver = container(find(plain("secrets-store-csi-driver.yaml"), "DaemonSet"), "secrets-store")
    rotation = "--enable-secret-rotation=true" in driver["args"]
    csidriver = find(plain("csidriver.yaml"), "CSIDriver")
    assert csidriver["spec"]["requiresRepublish"] is rotation
    assert csidriver["spec"]["tokenRequests"] == [
        {"audience": "api://AzureADTokenExchange"},
        {"audience": "api://AKSIdentityBinding"},
    ]


async def test_csidriver_and_roles_as_upstream(admin_client: AsyncClient) -> None:
    driver = await admin_client.get(CSIDriver, "secrets-store.csi.k8s.io")
    assert driver.spec is not None
    assert driver.spec.podInfoOnMount is True
    assert driver.spec.attachRequired is False
    assert driver.spec.volumeLifecycleModes == ["Ephemeral"]
    assert [t.audience for t in driver.spec.tokenRequests or []] == [
        "api://AzureADTokenExchange",
        "api://AKSIdentityBinding",
    ]
    names = {
        "secretproviderclasses-role",
        "secretprovidersyncing-role",
        "secretproviderrotation-role",
        "secretprovidertokenrequest-role",
    }
    for name in names:
        await admin_client.get(ClusterRole, name)


def test_crds_serve_v1_and_v1alpha1(kubectl: Kubectl) -> None:
    """Both CRDs as applied: v1 served and stored, v1alpha1 served (objects written with the
    old version keep working), as the API server's discovery lists them."""
    for doc_file in ("crd-secretproviderclasses.yaml", "crd-secretproviderclasspodstatuses.yaml"):
        crd = find(plain(doc_file), "CustomResourceDefinition")
        versions = {v["name"]: (v["served"], v["storage"]) for v in crd["spec"]["versions"]}
        assert versions == {"v1": (True, True), "v1alpha1": (True, False)}, doc_file
    for version in ("v1", "v1alpha1"):
        proc = kubectl("get", "--raw", f"/apis/secrets-store.csi.x-k8s.io/{version}")
        assert proc.returncode == 0, proc.stderr
        served = {r["name"] for r in json.loads(proc.stdout)["resources"]}
        assert {"secretproviderclasses", "secretproviderclasspodstatuses"} <= served, version


NODE = "deploy-test-node"


@pytest.fixture
async def applied(admin_client: AsyncClient, kubectl: Kubectl) -> AsyncIterator[AsyncClient]:
    """Both DaemonSets applied for real, and a Linux Node for their controller to target."""
    docs = plain("secrets-store-csi-driver.yaml") + plain("provider-azure.yaml")
    for doc in docs:
        await admin_client.apply(codecs.from_dict(doc), field_manager="tests", force=True)
    await admin_client.create(
        Node(metadata=ObjectMeta(name=NODE, labels={"kubernetes.io/os": "linux"}))
    )
    try:
        yield admin_client
    finally:
        for name in ("secrets-store-csi-driver", "secrets-store-provider-azure"):
            await admin_client.delete(DaemonSet, name, namespace="kube-system")
        await admin_client.delete(Node, NODE)
        # Unscheduled pods (no scheduler, no kubelet here) go at once.
        kubectl(
            "delete", "pods", "-n", "kube-system", "-l", SELECTOR, "--grace-period=0", "--force"
        )


async def test_seeds_selector_finds_both_halves(applied: AsyncClient, kubectl: Kubectl) -> None:
    """The DaemonSet controller makes one pod of each for the node; the seeds' command lists
    them: the driver's with 3 containers, the provider's with 1."""
    pods: list[dict[str, Any]] = []
    for _ in range(150):
        proc = kubectl("get", "pods", "-n", "kube-system", "-l", SELECTOR, "-o", "json")
        assert proc.returncode == 0, proc.stderr
        pods = json.loads(proc.stdout)["items"]
        if len(pods) >= 2:
            break
        await asyncio.sleep(0.2)
    found = sorted((p["metadata"]["labels"]["app"], len(p["spec"]["containers"])) for p in pods)
    assert found == [("secrets-store-csi-driver", 3), ("secrets-store-provider-azure", 1)]
    for p in pods:
        affinity = json.dumps(p["spec"]["affinity"])
        assert NODE in affinity
