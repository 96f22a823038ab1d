"""Every bad-input row of the issue: a clear error naming the parameter/object and the rule."""

from __future__ import annotations

import json

import pytest

from provider_azure.errors import Kind, ProviderError
from provider_azure.identity import IdentityMode
from provider_azure.objects import ObjectEncoding, ObjectFormat, ObjectType, parse_objects
from provider_azure.parameters import parse_mount
from testbed.mount_attributes import SP_SECRETS, attributes, objects_yaml

SECRET = SP_SECRETS["clientsecret"]


def parse(attrib: dict[str, str] | str, secrets: object = SP_SECRETS, permission: str = "420"):
    a = attrib if isinstance(attrib, str) else json.dumps(attrib)
    s = secrets if isinstance(secrets, str) else json.dumps(secrets)
    return parse_mount(a, s, permission)


def fails(*args: object, **kwargs: object) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        parse(*args, **kwargs)  # type: ignore[arg-type]
    assert SECRET not in info.value.message
    return info.value


def test_good_request_parses_into_typed_values() -> None:
    objects = objects_yaml(
        {
            "objectName": "s1",
            "objectType": "secret",
            "objectEncoding": "Base64",
            "filePermission": "0600",
        },
        {"objectName": "k1", "objectType": "key", "objectAlias": "dir/k1.pem"},
        {
            "objectName": "c1",
            "objectType": "cert",
            "objectVersion": "abc123",
            "objectFormat": "PEM",
        },
        {"objectName": "h1", "objectType": "secret", "objectVersionHistory": 3},
    )
    params = parse(attributes(objects=objects))
    assert params.vault_url == "https://kv-test.vault.azure.net/"
    assert params.identity.mode is IdentityMode.SERVICE_PRINCIPAL
    assert params.default_mode == 0o644
    s1, k1, c1, h1 = params.objects
    assert (s1.type, s1.encoding, s1.file_permission) == (
        ObjectType.SECRET,
        ObjectEncoding.BASE64,
        0o600,
    )
    assert (k1.file_name, k1.uid) == ("dir/k1.pem", "key/k1")
    assert (c1.version, c1.format) == ("abc123", ObjectFormat.PEM)
    assert h1.version_history == 3 and not h1.single_version
    assert SECRET not in repr(params)


def test_unquoted_yaml_file_permission_is_read_as_written() -> None:
    text = "array:\n  - |\n    objectName: s1\n    objectType: secret\n    filePermission: 0440\n"
    assert parse_objects(text)[0].file_permission == 0o440


def test_tenant_id_spellings() -> None:
    attrib = attributes()
    del attrib["tenantId"]
    attrib["tenantID"] = "t2"
    assert parse(attrib).identity.tenant_id == "t2"


def test_attributes_not_json() -> None:
    err = fails("{not json", secrets="null")
    assert err.kind is Kind.INVALID_ARGUMENT and err.request_error
    assert "failed to unmarshal attributes" in err.message


@pytest.mark.parametrize("secrets", ["", "  "])
def test_secrets_empty_string(secrets: str) -> None:
    err = fails(attributes(), secrets=secrets)
    assert "failed to unmarshal secrets" in err.message and "empty" in err.message


def test_secrets_null_without_other_identity() -> None:
    err = fails(attributes(), secrets="null")
    assert "nodePublishSecretRef" in err.message and "clientID" in err.message


def test_secrets_empty_object() -> None:
    err = fails(attributes(), secrets="{}")
    assert "nodePublishSecretRef" in err.message


def test_secrets_null_is_fine_with_managed_identity() -> None:
    params = parse(
        attributes(useVMManagedIdentity="true", userAssignedIdentityID="uai"), secrets="null"
    )
    assert params.identity.mode is IdentityMode.MANAGED_IDENTITY
    assert params.identity.user_assigned_identity_id == "uai"


def test_clientsecret_missing() -> None:
    err = fails(attributes(), secrets={"clientid": "x"})
    assert "clientsecret" in err.message


def test_clientid_missing() -> None:
    err = fails(attributes(), secrets={"clientsecret": SECRET})
    assert "clientid" in err.message and SECRET not in err.message


def test_keyvault_name_missing() -> None:
    attrib = attributes()
    del attrib["keyvaultName"]
    assert "keyvaultName is not provided" in fails(attrib).message


@pytest.mark.parametrize("name", ["kv", "a" * 25, "kv_bad", "kv.evil.com"])
def test_keyvault_name_invalid(name: str) -> None:
    err = fails(attributes(vault=name))
    assert "keyvaultName" in err.message and name in err.message


def test_tenant_missing() -> None:
    attrib = attributes()
    del attrib["tenantId"]
    assert "tenantId is not provided" in fails(attrib).message


def test_pod_info_missing() -> None:
    attrib = attributes()
    del attrib["csi.storage.k8s.io/pod.name"]
    assert "pod name is not provided" in fails(attrib).message


@pytest.mark.parametrize(
    ("objects", "rule"),
    [
        ("array: [unclosed", "failed to yaml unmarshal objects"),
        ("- a\n- b\n", "mapping with key `array`"),
        ("foo: bar\n", "missing key `array`"),
        ("array: {a: b}\n", "list of YAML strings"),
        ("array:\n", "empty"),
        ("array: []\n", "empty"),
    ],
)
def test_objects_shape(objects: str, rule: str) -> None:
    err = fails(attributes(objects=objects))
    assert "objects" in err.message and rule in err.message


def test_objects_missing() -> None:
    assert "objects is not set" in fails(attributes(objects="")).message


def test_object_item_not_yaml() -> None:
    text = 'array:\n  - "objectName: [x"\n'
    err = fails(attributes(objects=text))
    assert "objects[0]" in err.message and "not valid YAML" in err.message


def test_object_item_not_mapping() -> None:
    err = fails(attributes(objects='array:\n  - "- a"\n'))
    assert "objects[0]" in err.message


@pytest.mark.parametrize(
    ("obj", "rule"),
    [
        ({"objectType": "secret"}, "objectName is required"),
        ({"objectName": "a/b", "objectType": "secret"}, "objectName must be"),
        (
            {"objectName": "s", "objectType": "blob"},
            "invalid objectType 'blob', should be secret, key, or cert",
        ),
        ({"objectName": "s"}, "invalid objectType ''"),
        (
            {"objectName": "k", "objectType": "key", "objectFormat": "pfx"},
            "PFX format only supported for objectType: secret",
        ),
        (
            {"objectName": "c", "objectType": "cert", "objectFormat": "pfx"},
            "PFX format only supported",
        ),
        (
            {"objectName": "s", "objectType": "secret", "objectFormat": "der"},
            "invalid objectFormat 'der'",
        ),
        (
            {"objectName": "k", "objectType": "key", "objectEncoding": "base64"},
            "objectEncoding only supported for objectType: secret",
        ),
        (
            {"objectName": "c", "objectType": "cert", "objectEncoding": "hex"},
            "objectEncoding only supported",
        ),
        (
            {"objectName": "s", "objectType": "secret", "objectEncoding": "rot13"},
            "invalid objectEncoding 'rot13'",
        ),
        (
            {"objectName": "s", "objectType": "secret", "objectAlias": "/etc/passwd"},
            "must be a relative path",
        ),
        (
            {"objectName": "s", "objectType": "secret", "objectAlias": "../escape"},
            "must not contain '..'",
        ),
        (
            {"objectName": "s", "objectType": "secret", "objectAlias": "a/../../b"},
            "must not contain '..'",
        ),
        (
            {"objectName": "s", "objectType": "secret", "objectVersionHistory": -1},
            "objectVersionHistory must not be negative",
        ),
        (
            {"objectName": "s", "objectType": "secret", "objectVersionHistory": "many"},
            "objectVersionHistory must be an integer",
        ),
        (
            {"objectName": "s", "objectType": "secret", "filePermission": "0999"},
            "filePermission '0999' must be an octal",
        ),
        (
            {"objectName": "s", "objectType": "secret", "filePermission": "rw-r--r--"},
            "must be an octal",
        ),
        (
            {"objectName": "s", "objectType": "secret", "filePermission": "10000"},
            "filePermission '10000' must be an octal file mode such as 0644 (digits 0-7, at most",
        ),
        (
            {"objectName": "s", "objectType": "secret", "objectVersion": "../x"},
            "objectVersion must be",
        ),
    ],
)
def test_bad_object(obj: dict[str, object], rule: str) -> None:
    err = fails(attributes(objects=objects_yaml({"objectName": "ok", "objectType": "secret"}, obj)))
    assert err.kind is Kind.INVALID_ARGUMENT
    assert "objects[1]" in err.message, err.message
    assert rule in err.message, err.message


@pytest.mark.parametrize(
    "objects",
    [
        [{"objectName": "a", "objectType": "secret"}, {"objectName": "a", "objectType": "key"}],
        [
            {"objectName": "a", "objectType": "secret"},
            {"objectName": "b", "objectType": "secret", "objectAlias": "a"},
        ],
        [
            {"objectName": "a", "objectType": "secret"},
            {"objectName": "b", "objectType": "secret", "objectAlias": "a/x"},
        ],
        [
            {"objectName": "a", "objectType": "secret", "objectVersionHistory": 2},
            {"objectName": "b", "objectType": "secret", "objectAlias": "a/1"},
        ],
    ],
)
def test_two_objects_writing_the_same_file(objects: list[dict[str, object]]) -> None:
    err = fails(attributes(objects=objects_yaml(*objects)))
    assert (
        "objects[0]" in err.message and "objects[1]" in err.message and "objectAlias" in err.message
    )


def test_workload_identity_without_tokens() -> None:
    err = fails(attributes(clientID="wi-client"), secrets="null")
    assert "service account tokens not found" in err.message


def test_workload_identity_without_token_for_audience() -> None:
    err = fails(attributes(clientID="wi-client", tokens={"other-aud": "tok-xyz"}), secrets="null")
    assert "api://AzureADTokenExchange" in err.message and "tok-xyz" not in err.message


def test_workload_identity_token_from_attributes_or_secrets() -> None:
    params = parse(
        attributes(clientID="wi", tokens={"api://AzureADTokenExchange": "a.b.c"}), secrets="null"
    )
    assert (
        params.identity.mode is IdentityMode.WORKLOAD_IDENTITY
        and params.identity.assertion == "a.b.c"
    )
    tokens = json.dumps(
        {"api://AzureADTokenExchange": {"token": "d.e.f", "expirationTimestamp": "x"}}
    )
    params = parse(
        attributes(clientID="wi"), secrets={"csi.storage.k8s.io/serviceAccount.tokens": tokens}
    )
    assert params.identity.assertion == "d.e.f"
    assert "d.e.f" not in repr(params)


def test_pod_identity_is_a_clear_error() -> None:
    err = fails(attributes(usePodIdentity="true"), secrets="null")
    assert "usePodIdentity is deprecated" in err.message


def test_identity_modes_exclusive_and_bools_checked() -> None:
    assert (
        "only one identity mode"
        in fails(attributes(usePodIdentity="true", useVMManagedIdentity="true")).message
    )
    assert "useVMManagedIdentity" in fails(attributes(useVMManagedIdentity="yes")).message


def test_permission_not_a_number() -> None:
    err = fails(attributes(), permission='"0644"')
    assert "file permission" in err.message


def test_unknown_cloud() -> None:
    err = fails(attributes(cloudName="MarsCloud"))
    assert "cloudName MarsCloud is not valid" in err.message


def test_custom_cloud_env_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = tmp_path / "env.json"
    env.write_text(
        json.dumps(
            {
                "name": "AzureStackCloud",
                "activeDirectoryEndpoint": "https://login.custom-cloud.test/",
                "keyVaultEndpoint": "https://vault.custom-cloud.test/",
                "keyVaultDNSSuffix": "vault.custom-cloud.test",
            }
        )
    )
    params = parse(
        attributes(vault="kv-custom", cloudName="AzureStackCloud", cloudEnvFileName=str(env))
    )
    assert params.vault_url == "https://kv-custom.vault.custom-cloud.test/"
    assert params.cloud.authority_host == "https://login.custom-cloud.test"
    err = fails(
        attributes(cloudName="AzureStackCloud", cloudEnvFileName=str(tmp_path / "nope.json"))
    )
    assert "cloudEnvFileName" in err.message


def test_credential_cache_keys_partition_by_proof() -> None:
    a = parse(attributes()).identity.cache_key("h")
    b = parse(
        attributes(), secrets={"clientid": "sp-client", "clientsecret": "other"}
    ).identity.cache_key("h")
    assert a != b and SECRET not in "".join(a)


def test_credential_cache_keys_partition_managed_identities() -> None:
    """A pod naming one user-assigned identity never reuses another's (or the system one's)."""

    def key(**kw: str) -> tuple[str, ...]:
        attrib = attributes(useVMManagedIdentity="true", **kw)
        return parse(attrib, secrets="null").identity.cache_key("h")

    keys = {key(), key(userAssignedIdentityID="uai-1"), key(userAssignedIdentityID="uai-2")}
    assert len(keys) == 3
    assert key(userAssignedIdentityID="uai-1") == key(userAssignedIdentityID="uai-1")
