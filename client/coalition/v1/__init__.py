"""Generated protobuf and gRPC code for coalition.v1 (do not edit)."""
