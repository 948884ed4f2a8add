"""Reliability tests (issue #7): faults, soak, transport security, secrets."""
