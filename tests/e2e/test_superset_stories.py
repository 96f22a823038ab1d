"""Issue 15 items 2 and 3 on a real node: a pod whose SecretProviderClass selects objects by
name pattern and by tags reads every match as its own file, and rotation adds and removes
files as secrets are created, deleted (the real Azure SDK, as an operator would) and disabled;
a pod reads the files cut from a JSON secret by `jmesPath` next to the secret's own file, and
one cut file synced by `secretObjects` reaches an env var."""

from __future__ import annotations

import json

from azure.identity import ClientSecretCredential
from azure.keyvault.secrets import SecretClient

from testbed.emulator import TENANT_ID, vault_url

from .conftest import (
    ROTATION_INTERVAL,
    VAULT,
    Cluster,
    create_sp_secret,
    create_vault_spc,
    pod_manifest,
    run_pod,
    unique,
)
from .test_sync_rotation import INTERVAL, MOUNT, eventually, secret_data

OFFICER_CLIENT, OFFICER_SECRET = "0e000004-0000-4000-8000-0000000000e4", "e2e-officer-secret"


def _operator(cluster: Cluster) -> SecretClient:
    """The vault's operator (Key Vault Secrets Officer) through the real Python SDK."""
    cluster.emulator.seed(
        {
            "identities": [
                {
                    "name": "e2e-officer",
                    "type": "servicePrincipal",
                    "clientId": OFFICER_CLIENT,
                    "clientSecret": OFFICER_SECRET,
                }
            ],
            "vaults": [
                {
                    "name": VAULT,
                    "roleAssignments": [
                        {"identity": "e2e-officer", "role": "Key Vault Secrets Officer"}
                    ],
                }
            ],
        }
    )
    credential = ClientSecretCredential(TENANT_ID, OFFICER_CLIENT, OFFICER_SECRET)
    return SecretClient(vault_url(VAULT), credential)


def _listing(cluster: Cluster, pod: str) -> list[str]:
    r = cluster.exec(pod, "ls", MOUNT)
    assert r.returncode == 0, r.stderr
    return sorted(r.stdout.split())


async def test_selection_by_pattern_and_tags_follows_the_vault(cluster: Cluster) -> None:
    """Every enabled secret named `<p>-*`, and every one tagged `story=<p>`, is a file under its
    own name; a decoy with neither is not. With rotation on, a new match appears in the pod's
    volume, a deleted one and a disabled one disappear, and the others keep their content."""
    p = unique("sel")
    operator = _operator(cluster)
    for name, value, tags in [
        (f"{p}-alpha", "alpha-v1", None),
        (f"{p}-beta", "beta-v1", None),
        (f"tagged-{p}-a", "tag-a-v1", {"story": p}),
        (f"tagged-{p}-b", "tag-b-v1", {"story": p, "team": "x"}),
        (f"decoy-{p}", "decoy", {"story": "other"}),  # neither the pattern nor the tag
    ]:
        operator.set_secret(name, value, tags=tags)
    creds = await create_sp_secret(cluster.admin)
    spc = await create_vault_spc(
        cluster.admin,
        {"objectType": "secret", "objectNamePattern": f"{p}-*"},
        {"objectType": "secret", "objectTags": {"story": p}, "filePermission": "0440"},
    )
    pod = unique("select")
    await run_pod(cluster.admin, pod_manifest(pod, spc, secret_ref=creds))
    first = [f"{p}-alpha", f"{p}-beta", f"tagged-{p}-a", f"tagged-{p}-b"]
    assert _listing(cluster, pod) == first
    for name, value in zip(first, ["alpha-v1", "beta-v1", "tag-a-v1", "tag-b-v1"], strict=True):
        assert cluster.exec(pod, "cat", f"{MOUNT}/{name}").stdout == value
    modes = cluster.exec(
        pod, "stat", "-L", "-c", "%a", f"{MOUNT}/{p}-alpha", f"{MOUNT}/tagged-{p}-a"
    )
    assert modes.stdout.split() == ["644", "440"], modes.stdout + modes.stderr

    # the vault changes: a new match of each kind, one deleted, one disabled
    operator.set_secret(f"{p}-gamma", "gamma-v1")
    operator.set_secret(f"tagged-{p}-c", "tag-c-v1", tags={"story": p})
    operator.begin_delete_secret(f"{p}-alpha").wait()
    operator.update_secret_properties(f"tagged-{p}-b", enabled=False)
    after = [f"{p}-beta", f"{p}-gamma", f"tagged-{p}-a", f"tagged-{p}-c"]

    async def followed() -> bool:
        return _listing(cluster, pod) == after

    took = await eventually(followed, 3 * INTERVAL + 10, f"the volume listing {after}")
    print(f"[e2e] selection followed the vault in {took:.1f}s (interval {ROTATION_INTERVAL})")
    assert cluster.exec(pod, "cat", f"{MOUNT}/{p}-gamma").stdout == "gamma-v1"
    assert cluster.exec(pod, "cat", f"{MOUNT}/tagged-{p}-c").stdout == "tag-c-v1"
    assert cluster.exec(pod, "cat", f"{MOUNT}/{p}-beta").stdout == "beta-v1"
    gone = cluster.exec(pod, "cat", f"{MOUNT}/{p}-alpha")
    assert gone.returncode != 0 and "No such file" in gone.stderr, gone


async def test_json_keys_files_and_a_synced_env_var(cluster: Cluster) -> None:
    """The secret's own file (the whole JSON) and one file per jmesPath entry; `secretObjects`
    syncs the cut `db-password` into a Secret that the container reads as DB_PASSWORD."""
    secret = unique("db-credentials")
    document = {"username": "app", "password": "s3cr3t-from-json", "db-host": "db.internal"}
    cluster.emulator.set_secret(VAULT, secret, json.dumps(document))
    creds = await create_sp_secret(cluster.admin)
    synced = unique("app-db")
    spc = await create_vault_spc(
        cluster.admin,
        {
            "objectName": secret,
            "objectType": "secret",
            "jmesPath": [
                {"path": "username", "objectAlias": "db-username"},
                {"path": "password", "objectAlias": "db-password"},
                {"path": '"db-host"', "objectAlias": "db-host"},
            ],
        },
        secret_objects=[
            {
                "secretName": synced,
                "type": "Opaque",
                "data": [{"objectName": "db-password", "key": "password"}],
            }
        ],
    )
    pod = unique("json")
    env = [
        {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": synced, "key": "password"}}}
    ]
    await run_pod(cluster.admin, pod_manifest(pod, spc, secret_ref=creds, env=env))
    assert _listing(cluster, pod) == sorted([secret, "db-host", "db-password", "db-username"])
    assert json.loads(cluster.exec(pod, "cat", f"{MOUNT}/{secret}").stdout) == document
    assert cluster.exec(pod, "cat", f"{MOUNT}/db-username").stdout == "app"
    assert cluster.exec(pod, "cat", f"{MOUNT}/db-password").stdout == "s3cr3t-from-json"
    assert cluster.exec(pod, "cat", f"{MOUNT}/db-host").stdout == "db.internal"
    assert await secret_data(cluster, synced) == {"password": "s3cr3t-from-json"}
    r = cluster.exec(pod, "sh", "-c", 'echo "$DB_PASSWORD"')
    assert r.stdout.strip() == "s3cr3t-from-json", r.stderr
