"""Figures and reports as the runner writes them, for the report's table tests."""

from __future__ import annotations

from typing import Any


def figure(key: str, db: str | None, details: dict[str, Any]) -> dict[str, Any]:
    """A measured figure ``key`` (titled ``key``) on ``db`` with ``details``."""
    return {
        "key": key,
        "title": key,
        "value": 1.0,
        "unit": "x/s",
        "db": db,
        "target": None,
        "baseline": None,
        "ratio": None,
        "ratio_target": None,
        "status": "measured",
        "note": "",
        "details": details,
        "met": None,
    }


def report(figures: list[dict[str, Any]]) -> dict[str, Any]:
    """A smoke-scale report of ``figures`` on a two-core test machine."""
    return {
        "figures": figures,
        "git": {"commit": "abc", "dirty": False},
        "machine": {"cpus": 2, "cpu_model": "test"},
        "scale": "smoke",
        "seconds": 1.0,
    }
