"""The release: one version string, read by the packaging (``pyproject.toml``), ``persona --version``, the
OpenAPI document and the schema's record of which release created a store."""

from __future__ import annotations

VERSION = "0.2.0"

__all__ = ["VERSION"]
