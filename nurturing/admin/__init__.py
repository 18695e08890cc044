"""Nurturing admin, one module per area (each registers its own models)."""

from nurturing.admin import capture, segments, sending  # noqa: F401
