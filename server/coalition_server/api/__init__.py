"""Thin gRPC servicers: decode, authenticate, call the domain, map errors to statuses."""
