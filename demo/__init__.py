"""`make demo` and `make demo-cluster`: one mount and one rotation against the embedded Key
Vault emulator, in standalone mode and on a real single-node Kubernetes."""

# What both demos share: the tenant and service principal of demo/seed.yaml, and the
# SecretProviderClass parameters, written as the AKS docs write them (an objectAlias, a key, a
# cert and the cert's secret: the PEM with its private key).
TENANT = "11111111-2222-4333-8444-555555555555"
CLIENT_ID, CLIENT_SECRET = "0d000001-0000-4000-8000-000000000001", "demo-client-secret"
SPC_PARAMETERS = f"""  parameters:
    usePodIdentity: "false"
    keyvaultName: kv-demo
    tenantId: {TENANT}
    objects: |
      array:
        - |
          objectName: username
          objectType: secret
          objectAlias: foo1
        - |
          objectName: signing-key
          objectType: key
        - |
          objectName: web-cert
          objectType: cert
        - |
          objectName: web-cert
          objectType: secret
          objectAlias: web-cert.pem"""
