"""Credentials and clients for the emulator's own tests (the real Azure SDK for Python)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from azure.identity import ClientSecretCredential
from azure.keyvault.certificates import CertificateClient
from azure.keyvault.keys import KeyClient
from azure.keyvault.secrets import SecretClient

from testbed import emulator as t
from testbed.emulator import Emulator

KV_TEST = t.vault_url("kv-test")


@pytest.fixture(scope="session")
def officer(emulator: Emulator) -> Iterator[ClientSecretCredential]:
    cred = ClientSecretCredential(t.TENANT_ID, t.SP_OFFICER_ID, t.SP_OFFICER_SECRET)
    yield cred
    cred.close()


@pytest.fixture(scope="session")
def reader(emulator: Emulator) -> Iterator[ClientSecretCredential]:
    cred = ClientSecretCredential(t.TENANT_ID, t.SP_READER_ID, t.SP_READER_SECRET)
    yield cred
    cred.close()


@pytest.fixture(scope="session")
def secrets_officer(officer: ClientSecretCredential) -> SecretClient:
    return SecretClient(KV_TEST, officer)


@pytest.fixture(scope="session")
def keys_officer(officer: ClientSecretCredential) -> KeyClient:
    return KeyClient(KV_TEST, officer)


@pytest.fixture(scope="session")
def certs_officer(officer: ClientSecretCredential) -> CertificateClient:
    return CertificateClient(KV_TEST, officer)
