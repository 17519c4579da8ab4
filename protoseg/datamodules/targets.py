"""Where :mod:`protoseg.data.targets` lived: its names, kept importable from here for code
written against the old path. New code imports :mod:`protoseg.data.targets`."""

from __future__ import annotations

from protoseg.data.targets import (
    BACKGROUND,
    BOUNDARY,
    INSIDE,
    instances_to_binary,
    instances_to_three_class,
)

__all__ = ["BACKGROUND", "BOUNDARY", "INSIDE", "instances_to_binary", "instances_to_three_class"]
