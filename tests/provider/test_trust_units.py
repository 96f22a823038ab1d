"""provider_azure.trust: when the image's no-bundle trust steps aside for a mounted bundle."""

from __future__ import annotations

from pathlib import Path

from provider_azure import trust


def test_untouched_without_the_image_setting(tmp_path: Path) -> None:
    env = {"SSL_CERT_DIR": str(tmp_path)}
    assert trust.settle(env) is None
    assert env == {"SSL_CERT_DIR": str(tmp_path)}
    env = {"SSL_CERT_FILE": "/etc/my.pem", "SSL_CERT_DIR": str(tmp_path)}
    assert trust.settle(env) is None
    assert env["SSL_CERT_FILE"] == "/etc/my.pem"


def test_a_directory_of_the_image_keeps_no_bundle(tmp_path: Path) -> None:
    """Same filesystem as its parent: the image's own directory, its bundle never parsed."""
    (tmp_path / "ca-certificates.crt").write_text("x")
    env = {"SSL_CERT_FILE": "/dev/null", "SSL_CERT_DIR": f"{tmp_path}:/nonexistent"}
    assert trust.settle(env) is None
    assert env["SSL_CERT_FILE"] == "/dev/null"


def test_missing_directories_and_empty_entries(tmp_path: Path) -> None:
    assert trust.mounted_bundle("") is None
    assert trust.mounted_bundle(f"::{tmp_path / 'absent'}:") is None
