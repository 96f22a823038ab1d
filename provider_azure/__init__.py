"""Azure Key Vault provider for the Secrets Store CSI driver, a drop-in for the Go one."""

__version__ = "0.1.0"
RUNTIME_NAME = "secrets-store-csi-driver-provider-azure"
