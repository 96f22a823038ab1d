"""Go flag syntax as upstream's manifests use it."""

from __future__ import annotations

import pytest

from provider_azure import flags
from provider_azure.__main__ import FLAGS, parse_endpoint


def test_upstream_manifest_flags_parse() -> None:
    opts, rest = flags.parse(
        FLAGS,
        [
            "--endpoint=unix:///provider/azure.sock",
            "--construct-pem-chain=true",
            "--healthz-port=8989",
            "--healthz-path=/healthz",
            "--healthz-timeout=5s",
            "-v=2",
            "--log-format-json",
            "-write-cert-and-key-in-separate-files",
            "--prometheus-port",
            "9000",
            "--cloud-name",
            "AzureChinaCloud",
        ],
    )
    assert rest == []
    assert opts["endpoint"] == "unix:///provider/azure.sock"
    assert (
        opts["construct-pem-chain"] is True and opts["write-cert-and-key-in-separate-files"] is True
    )
    assert opts["healthz-timeout"] == 5.0 and opts["prometheus-port"] == 9000 and opts["v"] == 2
    assert opts["cloud-name"] == "AzureChinaCloud" and opts["log-format-json"] is True


def test_bool_false_and_errors() -> None:
    assert flags.parse(FLAGS, ["-construct-pem-chain=false"])[0]["construct-pem-chain"] is False
    with pytest.raises(flags.FlagError, match="not defined: -nope"):
        flags.parse(FLAGS, ["--nope"])
    with pytest.raises(flags.FlagError, match="invalid boolean"):
        flags.parse(FLAGS, ["--construct-pem-chain=maybe"])
    with pytest.raises(flags.FlagError, match="needs an argument"):
        flags.parse(FLAGS, ["--endpoint"])


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5s", 5), ("1m30s", 90), ("500ms", 0.5), ("1h", 3600), ("0", 0), ("1.5s", 1.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert flags.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5", "s", "5x", ""])
def test_bad_durations(text: str) -> None:
    with pytest.raises(flags.FlagError):
        flags.parse_duration(text)


def test_endpoint() -> None:
    assert parse_endpoint("unix:///tmp/azure.sock") == ("unix", "/tmp/azure.sock")
    assert parse_endpoint("TCP://127.0.0.1:1") == ("tcp", "127.0.0.1:1")
    with pytest.raises(ValueError, match="invalid endpoint"):
        parse_endpoint("/tmp/azure.sock")
