"""The ``coalition`` command-line interface for parties and auditors."""

from coalition.cli.app import app, main

__all__ = ["app", "main"]
