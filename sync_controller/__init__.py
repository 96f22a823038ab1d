"""The SecretSync controller: Kubernetes Secrets from a secret store with no pod mount, on the
Secrets Store Sync Controller's API (`secret-sync.x-k8s.io/v1alpha1 SecretSync`).

It runs once per cluster (a Deployment, one active replica through a Lease) with the provider
as a sidecar, and shares the driver's Secret writer, event recorder and Kubernetes vocabulary.
"""

from csi_driver import __version__

__all__ = ["__version__"]
