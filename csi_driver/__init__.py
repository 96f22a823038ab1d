"""Secrets Store CSI driver node plugin, a drop-in for kubernetes-sigs/secrets-store-csi-driver."""

__version__ = "0.1.0"
DRIVER_NAME = "secrets-store.csi.k8s.io"
