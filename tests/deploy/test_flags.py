"""Every flag a manifest passes to our daemons is one they accept: each container's args (from
the plain manifests and from every chart render in the matrix) go through the daemon's own
flag parser, the one its entry point runs. The sidecars are upstream's binaries: their images
must be the pinned upstream ones and are not parsed here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from csi_driver.config import Config
from csi_driver.config import FlagError as DriverFlagError
from csi_driver.config import parse_args as parse_driver_args
from provider_azure import flags as provider_flags
from provider_azure.__main__ import FLAGS as PROVIDER_FLAGS

from .render import MATRIX, Doc, plain_manifests, render

SIDECARS = {"node-driver-registrar", "liveness-probe"}
_ENV_REF = re.compile(r"\$\((\w+)\)")


def expand(c: Doc) -> list[str]:
    """The argv kubelet would start: $(VAR) replaced from the container's env, as Kubernetes
    does (a fieldRef stands for a node name here)."""
    env: dict[str, str] = {}
    for e in c.get("env") or []:
        env[e["name"]] = "node-0" if "valueFrom" in e else e.get("value", "")
    return [_ENV_REF.sub(lambda m: env.get(m.group(1), m.group(0)), a) for a in c["args"]]


def parse_provider(argv: list[str]) -> dict[str, Any]:
    values, rest = provider_flags.parse(PROVIDER_FLAGS, argv)
    if rest:
        raise provider_flags.FlagError(f"unexpected arguments: {rest}")
    return values


def check_daemonsets(docs: list[Doc]) -> tuple[list[Config], list[dict[str, Any]]]:
    """Parse our containers' args; returns the parsed driver and provider settings."""
    drivers: list[Config] = []
    providers: list[dict[str, Any]] = []
    for ds in (d for d in docs if d["kind"] == "DaemonSet"):
        for c in ds["spec"]["template"]["spec"]["containers"]:
            where = f"{ds['metadata']['name']}/{c['name']}"
            if c["name"] in SIDECARS:
                continue
            # The image's ENTRYPOINT is the daemon: a `command:` would bypass it.
            assert "command" not in c, f"{where}: set args only, the image's ENTRYPOINT runs"
            argv = expand(c)
            assert not any("$(" in a for a in argv), f"{where}: unresolved env ref in {argv}"
            if c["name"] == "secrets-store":
                try:
                    drivers.append(parse_driver_args(argv))
                except DriverFlagError as e:
                    pytest.fail(f"{where}: the driver refuses {argv}: {e}")
            elif c["name"] == "provider-azure-installer":
                try:
                    providers.append(parse_provider(argv))
                except provider_flags.FlagError as e:
                    pytest.fail(f"{where}: the provider refuses {argv}: {e}")
            else:
                pytest.fail(f"{where}: a container this test does not know")
    return drivers, providers


def test_plain_manifests_flags_parse() -> None:
    docs = [d for ds in plain_manifests().values() for d in ds]
    drivers, providers = check_daemonsets(docs)
    assert len(drivers) == 1 and len(providers) == 1
    (driver,) = drivers
    assert driver.endpoint == "unix:///csi/csi.sock"
    assert driver.node_id == "node-0"
    assert driver.metrics_addr == ":8095"
    assert driver.provider_paths == (
        "/var/run/secrets-store-csi-providers",
        "/etc/kubernetes/secrets-store-csi-providers",
    )
    assert driver.enable_secret_rotation is False
    (provider,) = providers
    assert provider["endpoint"] == "unix:///provider/azure.sock"
    assert provider["prometheus-port"] == 8898
    assert provider["healthz-port"] == 8989


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_chart_flags_parse(helm_bin: Path, case: str) -> None:
    values, files, namespace = MATRIX[case]
    drivers, providers = check_daemonsets(
        render(helm_bin, values, values_files=files, namespace=namespace)
    )
    assert len(providers) == 1
    assert len(drivers) == (0 if case == "driver-not-installed" else 1)


def test_unknown_flag_is_caught() -> None:
    """The check can fail: a flag neither daemon defines is refused by both parsers."""
    ds: Doc = {
        "kind": "DaemonSet",
        "metadata": {"name": "x"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "secrets-store",
                            "args": ["--endpoint=unix:///csi/csi.sock", "--no-such-flag=1"],
                        }
                    ]
                }
            }
        },
    }
    with pytest.raises(pytest.fail.Exception, match=r"the driver refuses .*no-such-flag"):
        check_daemonsets([ds])
    ds["spec"]["template"]["spec"]["containers"][0]["name"] = "provider-azure-installer"
    with pytest.raises(pytest.fail.Exception, match=r"the provider refuses .*no-such-flag"):
        check_daemonsets([ds])
    # and a bad value for a known flag
    ds["spec"]["template"]["spec"]["containers"][0]["args"] = ["--healthz-timeout=soon"]
    with pytest.raises(pytest.fail.Exception, match="healthz-timeout"):
        check_daemonsets([ds])
