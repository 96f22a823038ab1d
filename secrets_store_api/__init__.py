"""Interfaces both daemons share: generated protobuf and gRPC stubs (do not edit; `make proto`
regenerates them) and Go's flag-value syntax (`goflags`).

- `csi_pb2`, `csi_pb2_grpc`: the CSI spec subset (package csi.v1) the node plugin serves.
- `provider_pb2`, `provider_pb2_grpc`: the provider API (package v1alpha1).
"""
