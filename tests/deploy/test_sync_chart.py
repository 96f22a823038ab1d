"""The SecretSync controller in the chart (syncController.*): off by default, and on: the
Deployment (one active replica through the Lease, the provider as a sidecar on a socket in an
emptyDir, no privilege), the same RBAC and CRD as daemonset/sync-controller/, and the
admission policies from the values. The policies' effect on the real kube-apiserver is in
tests/sync (the tier applies this chart's policies and runs the controller under them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from provider_azure import flags as provider_flags
from provider_azure.__main__ import FLAGS as PROVIDER_FLAGS
from sync_controller.config import parse_args

from .render import SYNC, Doc, container, find, names, plain, render
from .test_flags import expand

SYNC_KINDS = {"Deployment", "Role", "RoleBinding", "ValidatingAdmissionPolicy"}
RBAC = "sync-controller/rbac.yaml"


def on(**values: Any) -> dict[str, Any]:
    return {SYNC: {"enabled": True, **values}}


def test_off_by_default(helm_bin: Path) -> None:
    docs = render(helm_bin)
    assert not SYNC_KINDS & {d["kind"] for d in docs}
    assert "secretsyncs.secret-sync.x-k8s.io" not in names(docs, "CustomResourceDefinition")
    assert "secrets-store-sync-controller-manager" not in names(docs, "ServiceAccount")


def _deployment(docs: list[Doc]) -> Doc:
    return find(docs, "Deployment", "secrets-store-sync-controller")


def test_deployment(helm_bin: Path) -> None:
    docs = render(helm_bin, on(replicas=2, rotationPollInterval="1h", logVerbosity=3))
    deployment = _deployment(docs)
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "secrets-store-sync-controller-manager"
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert not pod.get("hostNetwork") and not pod.get("hostPID")
    assert all("hostPath" not in v for v in pod["volumes"])
    (vol,) = (v for v in pod["volumes"] if v["name"] == "providervol")
    assert "emptyDir" in vol
    manager, provider = container(deployment, "manager"), container(deployment, "provider-azure")
    assert manager["image"] == "secrets-store-csi-python/driver:0.1.0"  # the driver's image
    assert manager["command"] == ["/opt/venv/bin/secrets-store-sync-controller"]
    config = parse_args(expand(manager))
    assert config.leader_elect is True
    assert config.poll == 3600.0 and config.verbosity == 3
    assert config.audiences == ("api://AzureADTokenExchange",)
    assert config.provider_volume == "/provider"
    provider_args, rest = provider_flags.parse(PROVIDER_FLAGS, expand(provider))
    assert not rest and provider_args["endpoint"] == "unix:///provider/azure.sock"
    assert provider["image"] == "secrets-store-csi-python/provider-azure:0.1.0"
    for c in (manager, provider):
        sc = c["securityContext"]
        assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert {"name": "providervol", "mountPath": "/provider"} in c["volumeMounts"]
    # the controller's token (it may request tokens for any ServiceAccount) stays with the
    # manager: the provider's token path holds the cluster CA alone, so the ServiceAccount
    # admission adds no token there (tests/deploy/test_sync_on_node.py sees it in the pod)
    sa_dir = "/var/run/secrets/kubernetes.io/serviceaccount"
    assert not any(m["mountPath"] == sa_dir for m in manager["volumeMounts"])
    (ca_mount,) = (m for m in provider["volumeMounts"] if m["mountPath"] == sa_dir)
    assert ca_mount["readOnly"] is True
    (ca_volume,) = (v for v in pod["volumes"] if v["name"] == ca_mount["name"])
    assert ca_volume["configMap"] == {
        "name": "kube-root-ca.crt",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
        "optional": True,
    }


def test_provider_container_replaced(helm_bin: Path) -> None:
    """providerContainer, as in the Sync Controller's chart: the sidecars, verbatim."""
    mine = {"name": "my-provider", "image": "example/p:1", "args": ["--x"]}
    docs = render(helm_bin, on(providerContainer=[mine], image={"tag": "9.9.9"}))
    deployment = _deployment(docs)
    names_ = [c["name"] for c in deployment["spec"]["template"]["spec"]["containers"]]
    assert names_ == ["manager", "my-provider"]
    assert container(deployment, "my-provider") == mine
    assert container(deployment, "manager")["image"] == "secrets-store-csi-python/driver:9.9.9"


def test_rbac_and_crd_equal_the_plain_manifests(helm_bin: Path) -> None:
    docs, reference = render(helm_bin, on()), plain(RBAC)
    for kind in ("ClusterRole", "Role"):
        for name in names(reference, kind):
            assert find(docs, kind, name)["rules"] == find(reference, kind, name)["rules"], name
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        for name in names(reference, kind):
            ours, theirs = find(docs, kind, name), find(reference, kind, name)
            assert (ours["roleRef"], ours["subjects"]) == (theirs["roleRef"], theirs["subjects"])
    crd = find(plain("sync-controller/crd-secretsyncs.yaml"), "CustomResourceDefinition")
    rendered = find(docs, "CustomResourceDefinition", crd["metadata"]["name"])
    assert rendered["spec"] == crd["spec"], "chart/files/crd-secretsyncs.yaml differs"
    assert rendered["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    off = render(helm_bin, on(crds={"enabled": False}))
    assert crd["metadata"]["name"] not in names(off, "CustomResourceDefinition")


def _validations(docs: list[Doc], policy: str) -> list[str]:
    return [
        v["expression"]
        for v in find(docs, "ValidatingAdmissionPolicy", policy)["spec"]["validations"]
    ]


def test_policies_follow_values(helm_bin: Path) -> None:
    docs = render(
        helm_bin,
        on(
            tokenRequestAudience=[{"audience": "api://a"}, {"audience": "api://b"}],
            validatingAdmissionPolicies={
                "applyPolicies": True,
                "allowedSecretTypes": ["Opaque"],
                "deniedSecretTypes": ["kubernetes.io/tls"],
            },
        ),
        namespace="secrets",
    )
    policies = names(docs, "ValidatingAdmissionPolicy")
    assert policies == names(docs, "ValidatingAdmissionPolicyBinding")
    assert len(policies) == 4
    for p in policies:
        spec = find(docs, "ValidatingAdmissionPolicy", p)["spec"]
        assert spec["failurePolicy"] == "Fail"
        (match,) = spec["matchConditions"]
        assert match["expression"] == (
            "request.userInfo.username == "
            "'system:serviceaccount:secrets:secrets-store-sync-controller-manager'"
        )
        assert find(docs, "ValidatingAdmissionPolicyBinding", p)["spec"] == {
            "policyName": p,
            "validationActions": ["Deny"],
        }
    write = _validations(docs, "secrets-store-sync-controller-secret-write")
    assert '!(object.type in ["kubernetes.io/tls"])' in write
    assert 'object.type in ["Opaque"]' in write
    token = _validations(docs, "secrets-store-sync-controller-token-request")
    assert 'object.spec.audiences[0] in ["api://a","api://b"]' in token[0]
    assert _validations(docs, "secrets-store-sync-controller-secret-delete") == ["false"]
    manager = container(_deployment(docs), "manager")
    assert parse_args(expand(manager)).audiences == ("api://a", "api://b")
    off = render(helm_bin, on(validatingAdmissionPolicies={"applyPolicies": False}))
    assert not names(off, "ValidatingAdmissionPolicy")


RESTART_RBAC = "sync-controller/rbac-restart-on-change.yaml"
RESTART_ROLE = "secrets-store-sync-controller-restart-on-change-role"


def test_restart_on_change_off_by_default_and_on(helm_bin: Path) -> None:
    """Off: no flag, no role (the controller never touches workloads). On: the flags from the
    values and the rules of the plain manifest, bound to the controller's ServiceAccount."""
    off = render(helm_bin, on())
    assert RESTART_ROLE not in names(off, "ClusterRole")
    assert parse_args(expand(container(_deployment(off), "manager"))).restart_on_change is False
    docs = render(
        helm_bin,
        on(restartOnChange={"enabled": True, "minInterval": "2m", "maxInFlight": 3}),
        namespace="secrets",
    )
    config = parse_args(expand(container(_deployment(docs), "manager")))
    assert config.restart_on_change is True
    assert (config.restart_min_interval, config.restart_max_in_flight) == (120.0, 3)
    reference = plain(RESTART_RBAC)
    assert (
        find(docs, "ClusterRole", RESTART_ROLE)["rules"]
        == find(reference, "ClusterRole", RESTART_ROLE)["rules"]
    )
    binding = find(docs, "ClusterRoleBinding", f"{RESTART_ROLE[:-4]}rolebinding")
    assert binding["roleRef"]["name"] == RESTART_ROLE
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": "secrets-store-sync-controller-manager",
            "namespace": "secrets",
        }
    ]
