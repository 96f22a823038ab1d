"""Generated protobuf and gRPC stubs (do not edit; `make proto` regenerates them).

- `csi_pb2`, `csi_pb2_grpc`: the CSI spec subset (package csi.v1) the node plugin serves.
- `provider_pb2`, `provider_pb2_grpc`: the provider API (package v1alpha1).
"""
