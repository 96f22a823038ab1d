"""A local Azure Key Vault + Entra ID + managed-identity (IMDS) emulator: the test peer, the
demo's embedded vault and a laptop tool."""

__version__ = "0.1.0"
