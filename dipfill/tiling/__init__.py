"""Patch geometry and blending: pure numpy (imports neither torch nor Ray)."""

from dipfill.tiling.blend import Blender, axis_taper, cast_to_dtype, hann_ramp, window_weights
from dipfill.tiling.grid import PatchWindow, axis_starts, plan_windows, windows_with_gaps

__all__ = [
    "Blender",
    "PatchWindow",
    "axis_starts",
    "axis_taper",
    "cast_to_dtype",
    "hann_ramp",
    "plan_windows",
    "window_weights",
    "windows_with_gaps",
]
