"""The ``replicate`` command line (click). Thin: parse, call the library, render.

Nothing in the library imports this package."""

from __future__ import annotations

from replicate.cli.app import main

__all__ = ["main"]
