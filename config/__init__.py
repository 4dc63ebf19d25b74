"""config room of the ST2000R supervisor (see DESIGN)."""

from pathlib import Path

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
"""Folder of the shipped example topologies (installed as package data)."""


def example_path(name: str) -> Path:
    """Path of a shipped example, e.g. ``example_path("community.toml")``."""
    return EXAMPLES_DIR / name
