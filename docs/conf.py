"""Sphinx configuration for the tamm documentation (MyST Markdown pages)."""

from __future__ import annotations

project = "tamm"
author = "The tamm developers"
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown"}
html_theme = "furo"
exclude_patterns = ["_build"]
