"""The Helm chart (daemonset/chart) with the real helm: lint, a matrix of values rendered and
applied with server-side dry-run to the real kube-apiserver, the values' effects on the
rendered objects, the defaults equal to the plain manifests, RBAC rules equal to
daemonset/rbac.yaml, and clear failures for values this implementation refuses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import yaml

from testbed.controlplane import ControlPlane
from testbed.peers import peer

from .conftest import Kubectl
from .render import (
    CHART,
    DRIVER,
    MATRIX,
    UPSTREAM_VALUES,
    Doc,
    RenderError,
    container,
    find,
    helm,
    names,
    plain,
    render,
)

ROLES = {
    "secretproviderclasses-role",
    "secretprovidersyncing-role",
    "secretproviderrotation-role",
    "secretprovidertokenrequest-role",
    "secretproviderstartuptaint-role",
}
EVERYTHING_ON = {
    DRIVER: {
        "enableSecretRotation": True,
        "syncSecret": {"enabled": True},
        "startupTaint": {"enabled": True},
    }
}


def args_of(docs: list[Doc], ds: str, c: str) -> list[str]:
    return list(container(find(docs, "DaemonSet", ds), c)["args"])


def driver_args(docs: list[Doc]) -> list[str]:
    return args_of(docs, "secrets-store-csi-driver", "secrets-store")


def provider_args(docs: list[Doc]) -> list[str]:
    return args_of(docs, "secrets-store-provider-azure", "provider-azure-installer")


def pod_spec(docs: list[Doc], ds: str) -> dict[str, Any]:
    return dict(find(docs, "DaemonSet", ds)["spec"]["template"]["spec"])


@pytest.mark.parametrize(
    "values_file", [None, UPSTREAM_VALUES], ids=["defaults", "upstream-values"]
)
def test_helm_lint(helm_bin: Path, values_file: Path | None) -> None:
    extra = ["--values", str(values_file)] if values_file else []
    proc = helm(helm_bin, "lint", "--strict", str(CHART), *extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_rendered_chart_passes_server_dry_run(
    helm_bin: Path, kubectl: Kubectl, tmp_path: Path, case: str
) -> None:
    values, files, namespace = MATRIX[case]
    docs = render(helm_bin, values, values_files=files, namespace=namespace)
    assert docs, "nothing rendered"
    out = tmp_path / f"{case}.yaml"
    out.write_text(yaml.safe_dump_all(docs))
    proc = kubectl(
        "apply", "--server-side", "--dry-run=server", "--force-conflicts", "-f", str(out)
    )
    assert proc.returncode == 0, f"{case}: the apiserver refused the render:\n{proc.stderr}"
    # One line per document: every object was checked, none skipped.
    assert proc.stdout.count("(server dry run)") == len(docs), proc.stdout


def test_defaults_equal_the_plain_manifests(helm_bin: Path) -> None:
    """`helm install` with default values and `kubectl apply -f daemonset/` give the same
    pods, CSIDriver, CRDs and ServiceAccounts (labels aside)."""
    docs = render(helm_bin)
    for ds, file in (
        ("secrets-store-csi-driver", "secrets-store-csi-driver.yaml"),
        ("secrets-store-provider-azure", "provider-azure.yaml"),
    ):
        ours, theirs = pod_spec(docs, ds), pod_spec(plain(file), ds)
        assert ours == theirs, f"{ds}: chart and daemonset/{file} differ"
        chart_ds, plain_ds = find(docs, "DaemonSet", ds), find(plain(file), "DaemonSet", ds)
        assert chart_ds["spec"]["selector"] == plain_ds["spec"]["selector"]
        assert chart_ds["spec"]["updateStrategy"] == plain_ds["spec"]["updateStrategy"]
        assert chart_ds["spec"]["template"]["metadata"].get("annotations") == plain_ds["spec"][
            "template"
        ]["metadata"].get("annotations")
    assert find(docs, "CSIDriver")["spec"] == find(plain("csidriver.yaml"), "CSIDriver")["spec"]
    # the pod's fsGroup reaches NodePublishVolume (the driver advertises VOLUME_MOUNT_GROUP)
    assert find(docs, "CSIDriver")["spec"]["fsGroupPolicy"] == "File"
    for crd_file in ("crd-secretproviderclasses.yaml", "crd-secretproviderclasspodstatuses.yaml"):
        crd = find(plain(crd_file), "CustomResourceDefinition")
        rendered = find(docs, "CustomResourceDefinition", crd["metadata"]["name"])
        assert rendered["spec"] == crd["spec"], f"chart/files/{crd_file} differs from daemonset/"
        assert rendered["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert (
        find(docs, "ServiceAccount", "secrets-store-provider-azure")["automountServiceAccountToken"]
        is False
    )


def test_rbac_rules_equal_rbac_yaml(helm_bin: Path) -> None:
    """With every feature on, the chart's ClusterRoles and bindings are daemonset/rbac.yaml's."""
    docs = render(helm_bin, EVERYTHING_ON)
    reference = plain("rbac.yaml") + plain("rbac-startup-taint.yaml")
    assert names(docs, "ClusterRole") == names(reference, "ClusterRole") == ROLES
    for role in ROLES:
        assert (
            find(docs, "ClusterRole", role)["rules"]
            == find(reference, "ClusterRole", role)["rules"]
        ), f"{role}: chart rules differ from daemonset/rbac.yaml"
    for binding in names(reference, "ClusterRoleBinding"):
        ours, theirs = (find(d, "ClusterRoleBinding", binding) for d in (docs, reference))
        assert ours["roleRef"] == theirs["roleRef"]
        assert ours["subjects"] == theirs["subjects"]
    assert names(docs, "ClusterRoleBinding") == names(reference, "ClusterRoleBinding")


def test_startup_taint_opt_in(helm_bin: Path) -> None:
    """Off by default (no node access, no flag); on: the flags, the role, both tolerations."""
    taint = {"key": "secrets-store.csi.k8s.io/agent-not-ready", "operator": "Exists"}
    off = render(helm_bin)
    assert "secretproviderstartuptaint-role" not in names(off, "ClusterRole")
    assert not any("startup-taint" in a for a in driver_args(off))
    on = render(helm_bin, {DRIVER: {"startupTaint": {"enabled": True}}})
    assert "secretproviderstartuptaint-role" in names(on, "ClusterRole")
    args = driver_args(on)
    assert "--remove-startup-taint=true" in args
    assert "--startup-taint-providers=azure" in args
    for ds in ("secrets-store-csi-driver", "secrets-store-provider-azure"):
        tolerations = find(on, "DaemonSet", ds)["spec"]["template"]["spec"]["tolerations"]
        assert taint in tolerations, ds


def test_defaults_rotation_off(helm_bin: Path) -> None:
    docs = render(helm_bin)
    args = driver_args(docs)
    assert "--enable-secret-rotation=false" in args
    assert find(docs, "CSIDriver")["spec"]["requiresRepublish"] is False
    # Without rotation the driver never asks for a token (kubelet sends the publish's).
    assert names(docs, "ClusterRole") == {"secretproviderclasses-role"}
    # Both halves carry the seeds' labels.
    apps = {
        find(docs, "DaemonSet", n)["spec"]["template"]["metadata"]["labels"]["app"]
        for n in ("secrets-store-csi-driver", "secrets-store-provider-azure")
    }
    assert apps == {"secrets-store-csi-driver", "secrets-store-provider-azure"}


def test_rotation_on(helm_bin: Path) -> None:
    docs = render(helm_bin, MATRIX["rotation-on"][0])
    args = driver_args(docs)
    assert "--enable-secret-rotation=true" in args
    assert "--rotation-poll-interval=30s" in args
    assert find(docs, "CSIDriver")["spec"]["requiresRepublish"] is True
    assert {"secretproviderrotation-role", "secretprovidertokenrequest-role"} <= names(
        docs, "ClusterRole"
    )
    binding = find(docs, "ClusterRoleBinding", "secretproviderrotation-rolebinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "secrets-store-csi-driver", "namespace": "kube-system"}
    ]


def test_sync_on_and_off(helm_bin: Path) -> None:
    on = render(helm_bin, MATRIX["sync-on"][0])
    assert "secretprovidersyncing-role" in names(on, "ClusterRole")
    assert "secretprovidersyncing-rolebinding" in names(on, "ClusterRoleBinding")
    off = render(helm_bin, MATRIX["sync-off-no-tokens"][0])
    assert names(off, "ClusterRole") == {"secretproviderclasses-role"}
    assert names(off, "ClusterRoleBinding") == {"secretproviderclasses-rolebinding"}
    spec = find(off, "CSIDriver")["spec"]
    assert "tokenRequests" not in spec and "serviceAccountTokenInSecrets" not in spec


def test_default_token_requests_as_upstreams_chart(helm_bin: Path) -> None:
    """Workload identity and identity binding (upstream provider chart 1.8's two audiences)."""
    spec = find(render(helm_bin), "CSIDriver")["spec"]
    assert [t["audience"] for t in spec["tokenRequests"]] == [
        "api://AzureADTokenExchange",
        "api://AKSIdentityBinding",
    ]


def test_token_requests_from_values(helm_bin: Path) -> None:
    values = MATRIX["tokens-custom"][0]
    spec = find(render(helm_bin, values), "CSIDriver")["spec"]
    assert spec["tokenRequests"] == values[DRIVER]["tokenRequests"]
    assert spec["serviceAccountTokenInSecrets"] is True  # Kubernetes >= 1.35
    # the field's first release is 1.35: both sides of the gate
    for version, present in (("1.34.9", False), ("1.35.0", True)):
        spec = find(render_kube(helm_bin, version), "CSIDriver")["spec"]
        assert ("serviceAccountTokenInSecrets" in spec) is present, version


def render_kube(helm_bin: Path, version: str) -> list[Doc]:
    proc = helm(helm_bin, "template", "csi", str(CHART), "--kube-version", version)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def test_overrides(helm_bin: Path) -> None:
    values = MATRIX["overrides"][0]
    docs = render(helm_bin, values)
    p = pod_spec(docs, "secrets-store-provider-azure")
    (c,) = p["containers"]
    assert c["image"] == "registry.example/team/provider-azure:1.2.3"
    assert c["imagePullPolicy"] == "Always"
    assert c["resources"] == values["linux"]["resources"]
    assert p["tolerations"] == values["linux"]["tolerations"]
    assert p["nodeSelector"] == {"kubernetes.io/os": "linux", "agentpool": "system"}
    assert p["priorityClassName"] == "system-node-critical"
    assert p["hostNetwork"] is True
    labels = find(docs, "DaemonSet", "secrets-store-provider-azure")["spec"]["template"]["metadata"]
    assert labels["labels"]["team"] == "platform"
    assert labels["annotations"] == {"prometheus.io/scrape": "true"}
    args = provider_args(docs)
    for flag in (
        "-v=3",
        "--log-format-json=true",
        "--construct-pem-chain=false",
        "--write-cert-and-key-in-separate-files=true",
        "--prometheus-port=9898",
        "--healthz-port=8990",
        "--healthz-timeout=10s",
        "--custom-user-agent=contoso/1.0",
    ):
        assert flag in args, flag
    assert {x["name"]: x["containerPort"] for x in c["ports"]} == {"healthz": 8990, "metrics": 9898}

    d = pod_spec(docs, "secrets-store-csi-driver")
    images = {x["name"]: x["image"] for x in d["containers"]}
    assert images == {
        "node-driver-registrar": "registry.example/mirror/registrar:v2.16.0",
        "secrets-store": "registry.example/team/driver:1.2.3",
        "liveness-probe": "registry.example/mirror/livenessprobe:v2.18.0",
    }
    assert d["imagePullSecrets"] == [{"name": "regcred"}]
    assert d["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert d["nodeSelector"] == {"kubernetes.io/os": "linux", "agentpool": "system"}
    assert d["priorityClassName"] == "system-node-critical"
    driver = container(find(docs, "DaemonSet", "secrets-store-csi-driver"), "secrets-store")
    assert driver["resources"] == {
        "limits": {"cpu": "500m", "memory": "300Mi"},
        "requests": {"cpu": "50m", "memory": "100Mi"},
    }
    for flag in (
        "-v=4",
        "--log-format-json=true",
        "--metrics-addr=:8081",
        "--provider-health-check=true",
        "--provider-health-check-interval=1m",
        "--max-call-recv-msg-size=8388608",
    ):
        assert flag in driver["args"], flag
    assert {x["name"]: x["containerPort"] for x in driver["ports"]} == {
        "healthz": 9809,
        "metrics": 8081,
    }
    probe = container(find(docs, "DaemonSet", "secrets-store-csi-driver"), "liveness-probe")
    assert "--http-endpoint=0.0.0.0:9809" in probe["args"] and "-v=4" in probe["args"]
    # kubeletRootDir moves every kubelet path.
    paths = {v["name"]: v["hostPath"]["path"] for v in d["volumes"]}
    assert paths["mountpoint-dir"] == "/var/lib/k8s/kubelet/pods"
    assert paths["registration-dir"] == "/var/lib/k8s/kubelet/plugins_registry/"
    assert paths["plugin-dir"] == "/var/lib/k8s/kubelet/plugins/csi-secrets-store/"
    mounts = {m["name"]: m for m in driver["volumeMounts"]}
    assert mounts["mountpoint-dir"]["mountPath"] == "/var/lib/k8s/kubelet/pods"
    assert mounts["mountpoint-dir"]["mountPropagation"] == "Bidirectional"
    registrar = container(
        find(docs, "DaemonSet", "secrets-store-csi-driver"), "node-driver-registrar"
    )
    assert (
        "--kubelet-registration-path=/var/lib/k8s/kubelet/plugins/csi-secrets-store/csi.sock"
        in registrar["args"]
    )


def test_driver_not_installed(helm_bin: Path) -> None:
    docs = render(helm_bin, MATRIX["driver-not-installed"][0])
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} == {
        ("ServiceAccount", "secrets-store-provider-azure"),
        ("DaemonSet", "secrets-store-provider-azure"),
    }


def test_other_namespace(helm_bin: Path) -> None:
    docs = render(helm_bin, namespace="default")
    for d in docs:
        if d["kind"] in ("DaemonSet", "ServiceAccount"):
            assert d["metadata"]["namespace"] == "default", d["metadata"]["name"]
    for d in docs:
        if d["kind"] == "ClusterRoleBinding":
            assert d["subjects"][0]["namespace"] == "default"


def test_upstream_values_file(helm_bin: Path) -> None:
    """An upstream values file installs unchanged and means what it meant upstream."""
    docs = render(helm_bin, values_files=(UPSTREAM_VALUES,))
    args = driver_args(docs)
    assert "--enable-secret-rotation=true" in args and "--rotation-poll-interval=2m" in args
    assert "--metrics-addr=:8080" in args
    # upstream leaves providerHealthCheckInterval empty: the flag is left out (driver default)
    assert not any(a.startswith("--provider-health-check-interval") for a in args)
    assert find(docs, "CSIDriver")["spec"]["requiresRepublish"] is True
    assert {"secretprovidersyncing-role", "secretproviderrotation-role"} <= names(
        docs, "ClusterRole"
    )
    d = pod_spec(docs, "secrets-store-csi-driver")
    assert (
        container(find(docs, "DaemonSet", "secrets-store-csi-driver"), "secrets-store")["image"]
        == "mcr.microsoft.com/oss/kubernetes-csi/secrets-store/driver:v1.4.0"
    )
    assert d["containers"][1]["ports"][1] == {
        "name": "metrics",
        "containerPort": 8080,
        "protocol": "TCP",
    }
    assert "--construct-pem-chain=true" in provider_args(docs)


@pytest.mark.parametrize(
    "values",
    [{"windows": {"enabled": True}}, {DRIVER: {"windows": {"enabled": True}}}],
    ids=["provider", "driver"],
)
def test_windows_refused(helm_bin: Path, values: dict[str, Any]) -> None:
    with pytest.raises(RenderError, match="Windows nodes are not supported by this implementation"):
        render(helm_bin, values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {DRIVER: {"rotationPollInterval": "soon"}},
            'secrets-store-csi-driver.rotationPollInterval: "soon" is not a duration',
        ),
        (
            {DRIVER: {"rotationPollInterval": 120}},
            'secrets-store-csi-driver.rotationPollInterval: "120" is not a duration',
        ),
        (
            {DRIVER: {"providerHealthCheckInterval": "2 minutes"}},
            'providerHealthCheckInterval: "2 minutes" is not a duration',
        ),
        ({"linux": {"healthzTimeout": "5"}}, 'linux.healthzTimeout: "5" is not a duration'),
        ({"metricsAddr": "metrics"}, 'metricsAddr: "metrics" is not a port'),
        ({"linux": {"healthzPort": 70000}}, 'linux.healthzPort: "70000" is not a port'),
        ({"linux": {"healthzPort": 0}}, 'linux.healthzPort: "0" is not a port'),
        (
            {DRIVER: {"linux": {"metricsAddr": ":http"}}},
            'secrets-store-csi-driver.linux.metricsAddr: ":http" is not a port',
        ),
        ({"linux": {"healthzPath": "healthz"}}, 'linux.healthzPath: "healthz" must start with /'),
        (
            {DRIVER: {"tokenRequests": [{"expirationSeconds": 3600}]}},
            r"tokenRequests\[0\]: each entry needs an audience",
        ),
        (
            {"linux": {"providersDir": "/run/providers"}},
            'linux.providersDir: the provider\'s socket directory "/run/providers" is not one',
        ),
    ],
)
def test_bad_values_fail_clearly(helm_bin: Path, values: dict[str, Any], message: str) -> None:
    with pytest.raises(RenderError, match=message):
        render(helm_bin, values)


def test_good_durations_accepted(helm_bin: Path) -> None:
    for interval in ("1h30m", "500ms", "1.5m", "90s"):
        docs = render(helm_bin, {DRIVER: {"rotationPollInterval": interval}})
        assert f"--rotation-poll-interval={interval}" in driver_args(docs)


@pytest.fixture
def empty_cluster(tmp_path: Path) -> Iterator[ControlPlane]:
    """A control plane of its own with nothing applied, for a real `helm install`."""
    cp = ControlPlane(tmp_path / "cp", peer("etcd"), peer("kube-apiserver"))
    try:
        cp.start()
        yield cp
    finally:
        cp.stop()


def test_helm_install_and_uninstall(helm_bin: Path, empty_cluster: ControlPlane) -> None:
    """A real `helm install` on an empty cluster creates every object and prints how to check
    the install; `helm uninstall` removes them all but the CRDs."""
    kubeconfig = f"--kubeconfig={empty_cluster.admin_kubeconfig}"
    proc = helm(
        helm_bin,
        "install",
        "csi",
        str(CHART),
        "--namespace=kube-system",
        kubeconfig,
        "--set=secrets-store-csi-driver.enableSecretRotation=true",
        "--set=secrets-store-csi-driver.rotationPollInterval=45s",
    )
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert (
        "kubectl get pods -n kube-system -l "
        "'app in (secrets-store-csi-driver,secrets-store-provider-azure)' -o wide"
    ) in notes
    assert "Rotation: on, every 45s. Secret sync RBAC: off." in notes
    assert "driver :8095/metrics, provider :8898/metrics" in notes
    listed = helm(helm_bin, "get", "manifest", "csi", "--namespace=kube-system", kubeconfig)
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(listed.stdout) if d)
    assert kinds.count("DaemonSet") == 2 and kinds.count("CustomResourceDefinition") == 2

    proc = helm(helm_bin, "uninstall", "csi", "--namespace=kube-system", kubeconfig)
    assert proc.returncode == 0, proc.stderr
    assert "kept due to the resource policy" in proc.stdout + proc.stderr
    client = httpx.Client(
        base_url=empty_cluster.server,
        verify=str(empty_cluster.ca_file),
        headers={"Authorization": f"Bearer {empty_cluster.admin_token}"},
    )
    with client:
        crds = client.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions").json()
        assert sorted(c["metadata"]["name"] for c in crds["items"]) == [
            "secretproviderclasses.secrets-store.csi.x-k8s.io",
            "secretproviderclasspodstatuses.secrets-store.csi.x-k8s.io",
        ]
        for path in (
            "/apis/apps/v1/namespaces/kube-system/daemonsets",
            "/apis/storage.k8s.io/v1/csidrivers",
        ):
            assert client.get(path).json()["items"] == [], path


def test_less_common_values(helm_bin: Path) -> None:
    """The values no other case sets reach the rendered objects: each would otherwise be
    silently ignored by a template that misspells it."""
    docs = render(helm_bin, MATRIX["extras"][0])
    kinds = {d["kind"] for d in docs}
    # rbac.install (provider ServiceAccount), secrets-store-csi-driver.rbac.install and
    # .linux.crds.enabled turn their objects off.
    assert "ServiceAccount" not in kinds
    assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds
    assert "CustomResourceDefinition" not in kinds
    p = pod_spec(docs, "secrets-store-provider-azure")
    (c,) = p["containers"]
    # linux.privileged: the one switch that makes the provider privileged.
    assert c["securityContext"]["privileged"] is True
    assert "allowPrivilegeEscalation" not in c["securityContext"]
    assert "affinity" not in p
    assert {"name": "extra", "emptyDir": {}} in p["volumes"]
    assert {"name": "extra", "mountPath": "/extra"} in c["volumeMounts"]
    prov = find(docs, "DaemonSet", "secrets-store-provider-azure")
    assert prov["spec"]["updateStrategy"] == {"type": "OnDelete"}

    ds = find(docs, "DaemonSet", "secrets-store-csi-driver")
    assert ds["spec"]["updateStrategy"] == {"type": "OnDelete"}
    assert ds["metadata"]["annotations"] == {"owner": "platform"}
    meta = ds["spec"]["template"]["metadata"]
    assert meta["labels"]["team"] == "platform"
    assert meta["annotations"]["prometheus.io/scrape"] == "true"
    d = pod_spec(docs, "secrets-store-csi-driver")
    assert "affinity" not in d
    driver = container(ds, "secrets-store")
    assert {"name": "HTTPS_PROXY", "value": "http://proxy.example:3128"} in driver["env"]
    assert "--additional-provider-volume-paths=/opt/providers" in driver["args"]
    paths = {v["name"]: (v.get("hostPath") or {}).get("path") for v in d["volumes"]}
    assert paths["providers-dir-0"] == "/opt/providers"
    assert {"name": "extra", "emptyDir": {}} in d["volumes"]
    mounts = {m["name"]: m["mountPath"] for m in driver["volumeMounts"]}
    assert mounts["providers-dir-0"] == "/opt/providers" and mounts["extra"] == "/extra"
    registrar = container(ds, "node-driver-registrar")
    assert "--v=2" in registrar["args"]
    assert registrar["resources"]["limits"] == {"cpu": "50m", "memory": "50Mi"}
    probe = container(ds, "liveness-probe")
    assert probe["resources"]["limits"] == {"cpu": "60m", "memory": "60Mi"}


@pytest.mark.parametrize(
    ("values", "gone"),
    [
        ({"linux": {"enabled": False}}, "secrets-store-provider-azure"),
        ({DRIVER: {"linux": {"enabled": False}}}, "secrets-store-csi-driver"),
    ],
    ids=["provider", "driver"],
)
def test_linux_enabled_false(helm_bin: Path, values: dict[str, Any], gone: str) -> None:
    docs = render(helm_bin, values)
    daemonsets = names(docs, "DaemonSet")
    assert gone not in daemonsets and len(daemonsets) == 1


NOTES_CASES = [
    ((), "Rotation: off. Secret sync RBAC: off."),
    (("secrets-store-csi-driver.syncSecret.enabled=true",), "Rotation: off. Secret sync RBAC: on."),
]


def test_notes_follow_values(helm_bin: Path, empty_cluster: ControlPlane) -> None:
    """What `helm install` prints says what was installed, both ways. Against a cluster of
    its own: helm refuses to adopt objects another install (daemonset/ in the shared control
    plane) created, even in a dry run."""
    for sets, line in NOTES_CASES:
        proc = helm(
            helm_bin,
            "install",
            "csi",
            str(CHART),
            "--dry-run=client",
            "--namespace=kube-system",
            f"--kubeconfig={empty_cluster.admin_kubeconfig}",
            *(f"--set={s}" for s in sets),
        )
        assert proc.returncode == 0, proc.stderr
        assert line in proc.stdout.split("NOTES:", 1)[1], proc.stdout
