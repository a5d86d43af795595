"""flowopt's test suite: one folder per package of the library, helpers importable as ``tests.<module>``."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The repository's root: README.md, docs/, notebooks/ and configs/ live here."""
