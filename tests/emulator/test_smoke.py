from azure.keyvault.secrets import SecretClient


def test_get_seeded_secret(secrets_officer: SecretClient) -> None:
    s = secrets_officer.get_secret("plain")
    assert s.value == "plain-v2"
    assert s.properties.version == "00000000000000000000000000000002"
