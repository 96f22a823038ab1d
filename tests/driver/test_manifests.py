"""daemonset/ is what an operator applies: every document must be accepted by a real
kube-apiserver (CRDs and RBAC are applied by the session fixture; the rest here)."""

from __future__ import annotations

from lightkube import AsyncClient, codecs
from lightkube.resources.apps_v1 import DaemonSet
from lightkube.resources.rbac_authorization_v1 import ClusterRole
from lightkube.resources.storage_v1 import CSIDriver

from tests.kube.controlplane import manifests


async def test_daemonset_applies(admin_client: AsyncClient) -> None:
    for doc in manifests("secrets-store-csi-driver.yaml"):
        await admin_client.apply(codecs.from_dict(doc), field_manager="tests", force=True)
    ds = await admin_client.get(DaemonSet, "csi-secrets-store", namespace="kube-system")
    assert ds.spec is not None and ds.spec.template.spec is not None
    assert ds.spec.template.spec.serviceAccountName == "secrets-store-csi-driver"


async def test_csidriver_and_roles_as_upstream(admin_client: AsyncClient) -> None:
    driver = await admin_client.get(CSIDriver, "secrets-store.csi.k8s.io")
    assert driver.spec is not None
    assert driver.spec.podInfoOnMount is True
    assert driver.spec.attachRequired is False
    assert driver.spec.volumeLifecycleModes == ["Ephemeral"]
    assert [t.audience for t in driver.spec.tokenRequests or []] == ["api://AzureADTokenExchange"]
    names = {
        "secretproviderclasses-role",
        "secretprovidersyncing-role",
        "secretproviderrotation-role",
        "secretprovidertokenrequest-role",
    }
    for name in names:
        await admin_client.get(ClusterRole, name)
