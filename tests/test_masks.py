"""Three-state masks on real rasters: stripes are gaps, collars are outside."""

from __future__ import annotations

import numpy as np
import rasterio
from scipy import ndimage

from dipfill.raster.masks import DEFAULT_COLLAR_CLOSING, GAP, OBSERVED, OUTSIDE, footprint_from_validity, three_state
from tests._data import ARG25_JAN, shared_file

WAGL = "landsat7_slcoff/wagl_p092r084_reduced_res/"
SLC_OFF_B4 = WAGL + "LE07_L1TP_092084_20110809_20161206_01_T1/LE07_L1TP_092084_20110809_20161206_01_T1_B4.TIF"
SLC_OFF_GM = WAGL + "LE07_L1TP_092084_20110809_20161206_01_T1/gap_mask/LE07_L1TP_092084_20110809_20161206_01_T1_GM_B4.TIF"
SLC_ON_B4 = WAGL + "LE07_L1TP_092084_19990925_20170217_01_T1/LE07_L1TP_092084_19990925_20170217_01_T1_B4.TIF"


def read(path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def test_stripes_touching_every_raster_edge_are_gaps_not_outside() -> None:
    data = read(ARG25_JAN)
    valid = data != -999
    any_valid = valid.any(axis=0)
    # the real stripes do reach the raster borders
    assert (~any_valid[:, 0]).any() and (~any_valid[:, -1]).any()
    footprint = footprint_from_validity(any_valid)
    assert footprint.all()
    state = three_state(valid, footprint)
    # pixel by pixel: a pixel missing in any band is a gap, every other pixel is observed
    np.testing.assert_array_equal(state, np.where(valid.all(axis=0), OBSERVED, GAP))
    assert (state == GAP).any() and (state == OBSERVED).any()


def test_tilted_collar_is_outside_and_stripes_reaching_it_stay_gaps() -> None:
    data = read(ARG25_JAN)
    valid = data != -999
    rows, cols = np.mgrid[0:512, 0:512]
    collar = rows > 2 * cols + 200  # a tilted no-data wedge in the lower-left corner
    valid[:, collar] = False
    footprint = footprint_from_validity(valid.any(axis=0))
    outside = ~footprint
    assert not (valid.any(axis=0) & outside).any(), "a pixel with data was called outside"
    assert (collar & ~outside).sum() <= 0.01 * collar.sum()
    stripes = (data == -999).all(axis=0) & ~collar
    # A closing rounds off the corner where a stripe meets the collar: the only stripe
    # pixels allowed outside are within half the closing width of the collar, and few.
    near_collar = ndimage.binary_dilation(collar, iterations=DEFAULT_COLLAR_CLOSING // 2)
    wrong = stripes & outside
    assert not (wrong & ~near_collar).any(), "a stripe pixel away from the collar was called outside"
    assert wrong.sum() <= 0.01 * stripes.sum()
    state = three_state(valid, footprint)
    np.testing.assert_array_equal(state == OUTSIDE, outside)  # nodata outside the footprint
    np.testing.assert_array_equal(state == OBSERVED, valid.all(axis=0))
    assert (state[stripes & ~wrong] == GAP).all()


def test_real_slc_off_scene_collar_matches_the_slc_on_footprint() -> None:
    """USGS 2011 SLC-off scene: the derived outside area equals the collar of the 1999
    SLC-on scene of the same path/row (an independent footprint), not collar + stripes."""
    off = read(shared_file(SLC_OFF_B4))[0]
    on = read(shared_file(SLC_ON_B4))[0]
    usgs_gap_mask = read(shared_file(SLC_OFF_GM))[0]  # 0 = gap or outside, 1 = data
    valid = off != 0
    footprint = footprint_from_validity(valid)
    outside_fraction = 1 - footprint.mean()
    slc_on_outside = (on == 0).mean()
    assert (~valid).mean() > outside_fraction + 0.1  # there are many gaps inside
    assert abs(outside_fraction - slc_on_outside) < 0.01
    assert footprint[usgs_gap_mask == 1].all()
    assert footprint[valid].all(), "a pixel with data was called outside"


def test_real_collar_without_stripes_is_all_outside() -> None:
    data = read(shared_file("landsat_clean/rasterio/RGB.byte.tif"))
    valid = data != 0
    footprint = footprint_from_validity(valid.any(axis=0))
    invalid = ~valid.all(axis=0)
    assert invalid.sum() > 0.2 * invalid.size  # the collar is large
    assert (~footprint[invalid]).mean() > 0.99
    assert footprint[valid.any(axis=0)].all(), "a pixel with data was called outside"


def test_three_state_keeps_partially_valid_pixels_and_respects_footprint() -> None:
    valid = np.ones((2, 3, 3), dtype=bool)
    valid[0, 1, 1] = False  # one band missing inside
    valid[:, 0, 0] = False  # all bands missing, outside
    footprint = np.ones((3, 3), dtype=bool)
    footprint[0, 0] = False
    state = three_state(valid, footprint)
    want = np.full((3, 3), OBSERVED, dtype=np.uint8)
    want[1, 1], want[0, 0] = GAP, OUTSIDE
    np.testing.assert_array_equal(state, want)
    # a pixel whose every band is valid stays observed even outside a given footprint
    footprint[2, 2] = False
    assert three_state(valid, footprint)[2, 2] == OBSERVED
    assert not footprint_from_validity(np.zeros((4, 4), dtype=bool)).any()


def _scipy_footprint(any_valid: np.ndarray, closing: int) -> np.ndarray:
    """The footprint as it was computed with scipy.ndimage (min/max filters, binary_fill_holes,
    label): the reference the OpenCV version must reproduce pixel for pixel."""
    def close(valid: np.ndarray, border: str) -> np.ndarray:
        v = valid.astype(np.uint8)
        if border == "edge":
            v = np.pad(v, closing, mode="edge")
            c = ndimage.minimum_filter(ndimage.maximum_filter(v, size=closing, mode="nearest"), size=closing,
                                       mode="nearest")[closing:-closing, closing:-closing]
        else:
            c = ndimage.minimum_filter(ndimage.maximum_filter(v, size=closing, mode="constant", cval=0),
                                       size=closing, mode="constant", cval=1)
        return ndimage.binary_fill_holes(c.astype(bool) | valid)

    if closing <= 1:
        return ndimage.binary_fill_holes(any_valid)
    certain = ~close(any_valid, "bridge")
    labels, _ = ndimage.label(~close(any_valid, "edge") | certain)
    keep = np.unique(labels[certain])
    return ~np.isin(labels, keep[keep > 0])


def test_footprint_equals_the_scipy_formulation_on_real_and_random_masks() -> None:
    data = read(ARG25_JAN)
    rows, cols = np.mgrid[0:512, 0:512]
    stripes = (data != -999).any(axis=0)
    cases = [stripes, stripes & (rows + 0.3 * cols > 80) & (cols - 0.2 * rows < 470)]  # real gaps, tilted collar
    rng = np.random.default_rng(7)
    cases += [rng.random(tuple(rng.integers(3, 120, 2))) < rng.uniform(0.3, 0.97) for _ in range(12)]
    for any_valid in cases:
        for closing in (0, 2, 8, DEFAULT_COLLAR_CLOSING):
            np.testing.assert_array_equal(footprint_from_validity(any_valid, closing=closing),
                                          _scipy_footprint(any_valid, closing))
