"""What ``dipfill eval`` evaluates and where: the two dates, the directions and the tiles.

Everything a user can get wrong about the inputs is checked here (unreadable or all-nodata
files, different grids or bands, tiles that leave the raster, no eligible tile), before
any method runs and before anything is written. The array side of tile choice
(:func:`~dipfill.eval.cases.pick_tiles`) is in :mod:`dipfill.eval.cases`; this module
reads files and turns options into :class:`~dipfill.eval.cases.TileChoice` lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray

from dipfill.errors import GridMismatchError, InputError
from dipfill.eval.cases import HIDDEN_RANGE, MAX_TRUTH_NODATA, TileChoice, pick_tiles, shift_gaps, tile_stats

__all__ = ["Date", "Direction", "read_dates", "directions_of", "parse_tiles", "choose_tiles"]


@dataclass
class Date:
    """One input raster: its scene, per-band validity ``[C, H, W]`` and acquisition date."""

    path: str
    scene: Any
    valid: NDArray[np.bool_]
    date: str


@dataclass
class Direction:
    """One role assignment: ``truth`` is scored under the gaps ``donor`` lacks, moved down
    ``shift`` rows (``--shift-mask``); ``gap_valid`` is that transplanted validity."""

    key: str  # forward / reverse, used in file names
    truth: Date
    donor: Date
    shift: int = 0
    gap_valid: NDArray[np.bool_] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.gap_valid = shift_gaps(self.donor.valid, self.shift)

    @property
    def label(self) -> str:
        moved = f" shifted down {self.shift} rows" if self.shift else ""
        return f"truth {self.truth.date}, gaps from {self.donor.date}{moved}"


def read_dates(truth_path: str, donor_path: str) -> tuple[Date, Date]:
    """Read both rasters; they must have valid pixels, one grid and the same band count."""
    from dipfill.raster.read import acquisition_date, data_validity, describe_grid_difference, read_scene

    dates = []
    for path in (truth_path, donor_path):
        scene = read_scene([str(path)])
        valid = data_validity(scene.data, scene.nodata)
        if not valid.any():
            raise InputError(f"{path}: every pixel is nodata ({scene.nodata}); nothing to evaluate")
        date = acquisition_date(scene) or Path(path).stem
        dates.append(Date(str(path), scene, valid, date))
    truth, donor = dates
    diff = describe_grid_difference(truth.scene.grid, donor.scene.grid)
    if diff is not None:
        raise GridMismatchError(f"{donor_path}: {diff} in {truth_path}; the two dates must share one grid")
    if truth.scene.data.shape[0] != donor.scene.data.shape[0]:
        raise InputError(
            f"{donor_path}: {donor.scene.data.shape[0]} bands vs {truth.scene.data.shape[0]} in {truth_path}; "
            "the two dates must have the same bands"
        )
    if truth.date == donor.date:
        donor.date = f"{donor.date} ({Path(donor_path).name})"
    return truth, donor


def directions_of(truth: Date, donor: Date, *, both: bool, shift: int = 0) -> list[Direction]:
    """``forward`` (as given), then with ``both`` also ``reverse`` (the dates swap roles);
    in each, the donor's gaps move down ``shift`` rows."""
    directions = [Direction("forward", truth, donor, shift)]
    if both:
        directions.append(Direction("reverse", donor, truth, shift))
    return directions


def parse_tiles(text: str) -> list[tuple[int, int]]:
    """``"R,C[,R,C...]"`` → ``[(R, C), ...]`` (top-left corners)."""
    try:
        nums = [int(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise InputError(f"--tiles takes row,col pairs of integers like 0,0,256,512; got {text!r}") from None
    if not nums or len(nums) % 2:
        raise InputError(f"--tiles takes row,col pairs (an even count of integers); got {text!r}")
    if min(nums) < 0:
        raise InputError(f"--tiles: rows and columns must be >= 0; got {text!r}")
    return list(zip(nums[0::2], nums[1::2]))


def choose_tiles(
    directions: Sequence[Direction],
    *,
    size: int,
    tiles: Sequence[tuple[int, int]] | None,
    n_tiles: int,
) -> tuple[list[TileChoice], dict[str, Any]]:
    """The tiles to evaluate, and how they were selected (the report's ``tile_selection``).

    Given ``tiles`` must fit the raster; otherwise :func:`~dipfill.eval.cases.pick_tiles`
    chooses ``n_tiles`` and there must be at least one eligible window.
    """
    truth_path, donor_path = directions[0].truth.path, directions[0].donor.path
    height, width = directions[0].truth.scene.grid.shape
    pairs = [(d.truth.valid, d.gap_valid) for d in directions]
    if tiles:
        choices = []
        for r, c in tiles:
            if r + size > height or c + size > width:
                raise InputError(
                    f"--tiles {r},{c}: a {size}-pixel tile there leaves {truth_path}'s {width}x{height} raster "
                    f"(rows 0-{height - size} and columns 0-{width - size} fit)"
                )
            stats = tuple(tile_stats(tv, dv, r, c, size) for tv, dv in pairs)
            choices.append(TileChoice(r, c, size, stats, "given with --tiles"))
        return choices, {"mode": "given"}
    choices, n_eligible, n_cand = pick_tiles(pairs, size, n_tiles)
    if not choices:
        raise InputError(
            f"{truth_path} / {donor_path}: no {size}-pixel tile has {HIDDEN_RANGE[0]:.0%}-{HIDDEN_RANGE[1]:.0%} "
            f"hidden pixels and at most {MAX_TRUTH_NODATA:.0%} truth nodata in every direction; "
            "pass --tiles R,C or another --tile-size"
        )
    return choices, {
        "mode": "auto",
        "candidates": n_cand,
        "eligible": n_eligible,
        "rule": (
            f"candidates: {size}-px windows at {max(1, size // 2)}-px steps; eligible: hidden fraction "
            f"{HIDDEN_RANGE[0]:.0%}-{HIDDEN_RANGE[1]:.0%} and truth nodata <= {MAX_TRUTH_NODATA:.0%} in "
            f"every direction; eligible windows ordered along the longer axis and cut into "
            f"{n_tiles} groups, the best of each group taken (least truth nodata, then "
            "hidden fraction nearest 20 %), no two picks overlapping"
        ),
    }
