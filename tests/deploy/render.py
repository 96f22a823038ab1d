"""Render the Helm chart (daemonset/chart) with the real helm, and read the plain manifests."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DAEMONSET = REPO / "daemonset"
CHART = DAEMONSET / "chart"
# The test control plane's version: what `helm install` would see (serviceAccountTokenInSecrets
# is rendered from 1.35 on).
KUBE_VERSION = "1.37.2"

Doc = dict[str, Any]


class RenderError(Exception):
    pass


def helm(helm_bin: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm_bin), *args], capture_output=True, text=True, timeout=120, check=False
    )


def render(
    helm_bin: Path,
    values: dict[str, Any] | None = None,
    *,
    values_files: tuple[Path, ...] = (),
    namespace: str = "kube-system",
) -> list[Doc]:
    """`helm template` of the chart; RenderError carries helm's stderr."""
    args = ["template", "csi", str(CHART), "--namespace", namespace]
    args += ["--kube-version", KUBE_VERSION]
    for f in values_files:
        args += ["--values", str(f)]
    if values is not None:
        args += ["--values", "-"]
    proc = subprocess.run(
        [str(helm_bin), *args],
        input=yaml.safe_dump(values) if values is not None else None,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise RenderError(proc.stderr.strip())
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def plain(name: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all((DAEMONSET / name).read_text()) if d]


def plain_manifests() -> dict[str, list[Doc]]:
    """Every daemonset/*.yaml an operator applies (`kubectl apply -f daemonset/`), and the
    off-by-default SecretSync controller's daemonset/sync-controller/*.yaml, by path."""
    paths = [*DAEMONSET.glob("*.yaml"), *DAEMONSET.glob("sync-controller/*.yaml")]
    return {
        str(p.relative_to(DAEMONSET)): plain(str(p.relative_to(DAEMONSET))) for p in sorted(paths)
    }


def find(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    hits = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found {len(hits)}"
    return hits[0]


def names(docs: list[Doc], kind: str) -> set[str]:
    return {d["metadata"]["name"] for d in docs if d["kind"] == kind}


def container(ds: Doc, name: str) -> Doc:
    containers = ds["spec"]["template"]["spec"]["containers"]
    hits: list[Doc] = [c for c in containers if c["name"] == name]
    assert len(hits) == 1, f"{ds['metadata']['name']}: no container {name}"
    return hits[0]


DRIVER = "secrets-store-csi-driver"
SYNC = "syncController"
UPSTREAM_VALUES = Path(__file__).with_name("upstream-values.yaml")

# name -> (values, values files, namespace): the chart's value matrix. Every case must render,
# pass server-side dry-run, and give flags our daemons accept.
MATRIX: dict[str, tuple[dict[str, Any], tuple[Path, ...], str]] = {
    "defaults": ({}, (), "kube-system"),
    "rotation-on": (
        {DRIVER: {"enableSecretRotation": True, "rotationPollInterval": "30s"}},
        (),
        "kube-system",
    ),
    "sync-on": ({DRIVER: {"syncSecret": {"enabled": True}}}, (), "kube-system"),
    "sync-off-no-tokens": (
        {DRIVER: {"syncSecret": {"enabled": False}, "tokenRequests": []}},
        (),
        "kube-system",
    ),
    "tokens-custom": (
        {
            DRIVER: {
                "tokenRequests": [
                    {"audience": "api://AzureADTokenExchange"},
                    {"audience": "https://vault.example", "expirationSeconds": 3600},
                ]
            }
        },
        (),
        "kube-system",
    ),
    "overrides": (
        {
            "logVerbosity": 3,
            "logFormatJSON": True,
            "constructPEMChain": False,
            "writeCertAndKeyInSeparateFiles": True,
            "metricsAddr": "9898",
            "linux": {
                "image": {
                    "repository": "registry.example/team/provider-azure",
                    "tag": "1.2.3",
                    "pullPolicy": "Always",
                },
                "resources": {
                    "requests": {"cpu": "100m", "memory": "128Mi"},
                    "limits": {"cpu": "1", "memory": "512Mi"},
                },
                "tolerations": [
                    {
                        "key": "dedicated",
                        "operator": "Equal",
                        "value": "secrets",
                        "effect": "NoSchedule",
                    }
                ],
                "nodeSelector": {"agentpool": "system"},
                "priorityClassName": "system-node-critical",
                "podLabels": {"team": "platform"},
                "podAnnotations": {"prometheus.io/scrape": "true"},
                "customUserAgent": "contoso/1.0",
                "healthzPort": 8990,
                "healthzTimeout": "10s",
                "hostNetwork": True,
            },
            DRIVER: {
                "logVerbosity": 4,
                "logFormatJSON": True,
                "providerHealthCheck": True,
                "providerHealthCheckInterval": "1m",
                "maxCallRecvMsgSize": 8388608,
                "livenessProbe": {"port": 9809, "logLevel": 4},
                "imagePullSecrets": [{"name": "regcred"}],
                "linux": {
                    "metricsAddr": ":8081",
                    "kubeletRootDir": "/var/lib/k8s/kubelet",
                    "priorityClassName": "system-node-critical",
                    "image": {"repository": "registry.example/team/driver", "tag": "1.2.3"},
                    "registrarImage": {
                        "repository": "registry.example/mirror/registrar",
                        "tag": "v2.16.0",
                    },
                    "livenessProbeImage": {
                        "repository": "registry.example/mirror/livenessprobe",
                        "tag": "v2.18.0",
                    },
                    "driver": {"resources": {"limits": {"cpu": "500m", "memory": "300Mi"}}},
                    "tolerations": [{"key": "dedicated", "operator": "Exists"}],
                    "nodeSelector": {"agentpool": "system"},
                },
            },
        },
        (),
        "kube-system",
    ),
    # The values no other case sets: each must reach the rendered objects (test_chart).
    "extras": (
        {
            "rbac": {"install": False},
            "linux": {
                "privileged": True,
                "updateStrategy": {"type": "OnDelete", "rollingUpdate": None},
                "affinity": None,
                "volumes": [{"name": "extra", "emptyDir": {}}],
                "volumeMounts": [{"name": "extra", "mountPath": "/extra"}],
            },
            DRIVER: {
                "rbac": {"install": False},
                "linux": {
                    "crds": {"enabled": False},
                    "updateStrategy": {"type": "OnDelete", "rollingUpdate": None},
                    "affinity": None,
                    "daemonsetAnnotations": {"owner": "platform"},
                    "podLabels": {"team": "platform"},
                    "podAnnotations": {"prometheus.io/scrape": "true"},
                    "env": [{"name": "HTTPS_PROXY", "value": "http://proxy.example:3128"}],
                    "additionalProvidersDirs": ["/opt/providers"],
                    "volumes": [{"name": "extra", "emptyDir": {}}],
                    "volumeMounts": [{"name": "extra", "mountPath": "/extra"}],
                    "registrar": {
                        "logVerbosity": 2,
                        "resources": {"limits": {"cpu": "50m", "memory": "50Mi"}},
                    },
                    "livenessProbe": {"resources": {"limits": {"cpu": "60m", "memory": "60Mi"}}},
                },
            },
        },
        (),
        "kube-system",
    ),
    "driver-not-installed": ({DRIVER: {"install": False}}, (), "kube-system"),
    "sync-controller-on": (
        {
            SYNC: {
                "enabled": True,
                "replicas": 2,
                "rotationPollInterval": "1h",
                "restartOnChange": {"enabled": True, "minInterval": "30s"},
                "tokenRequestAudience": [
                    {"audience": "api://AzureADTokenExchange"},
                    {"audience": "api://other"},
                ],
            }
        },
        (),
        "kube-system",
    ),
    "other-namespace": ({}, (), "default"),
    "upstream-values-file": ({}, (UPSTREAM_VALUES,), "kube-system"),
}
