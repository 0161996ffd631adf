"""`dipfill eval` on the committed ARG25 crops: report files, numbers checked by recomputation,
SSIM's definition, tile choice and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from dipfill.cli.main import main
from dipfill.engines import make_engine
from dipfill.evaluation import pick_tiles
from dipfill.metrics import psnr, r2, rmse, ssim
from dipfill.pipeline.evaluate import parse_method
from tests._data import ARG25_FEB, ARG25_JAN

ROW, COL, SIZE = 128, 128, 128
DIP = "dip:mcpn-core:steps=3"


def _window(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with rasterio.open(path) as src:
        data = src.read(window=((ROW, ROW + SIZE), (COL, COL + SIZE)))
        return data, data != src.nodata


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[int, Path, dict]:
    out = tmp_path_factory.mktemp("eval") / "out"
    with pytest.MonkeyPatch.context() as mp:
        # a private strategy cache: a stale entry elsewhere must not change what this runs
        mp.setenv("DIPFILL_CACHE_DIR", str(out.parent / "cache"))
        rc = main([
            "eval", str(ARG25_FEB), str(ARG25_JAN), "--out", str(out),
            "--method", "fillnodata", "--method", "telea", "--method", DIP,
            "--tiles", f"{ROW},{COL}", "--tile-size", str(SIZE), "--check-every", "1",
        ])
    doc = json.loads((out / "report.json").read_text()) if rc == 0 else {}
    return rc, out, doc


def test_eval_writes_report_quicklooks_and_convergence_plots(run) -> None:
    rc, out, doc = run
    assert rc == 0
    for key in ("forward", "reverse"):
        for kind in ("quicklook", "convergence"):
            png = out / f"{kind}_{key}_r{ROW}_c{COL}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    md = (out / "report.md").read_text()
    for text in ("## Results: forward", "## Results: reverse", "| method | band | RMSE | r² | PSNR (dB) | SSIM",
                 "`fillnodata`", "`telea`", f"`{DIP}`", "## How to read this", "given with --tiles"):
        assert text in md, text
    assert not list(out.glob(".*tmp*")), "staged temporaries left behind"
    assert [m["label"] for m in doc["methods"]] == ["fillnodata", "telea", DIP]
    dip = doc["methods"][2]["config"]
    assert dip["preset"] == "mcpn-core" and dip["steps"] == 3 and dip["channels_skip"] == [4] * 6


def test_report_numbers_equal_an_independent_recomputation(run) -> None:
    rc, _, doc = run
    feb, feb_valid = _window(ARG25_FEB)
    _, jan_valid = _window(ARG25_JAN)
    hidden = feb_valid & ~jan_valid
    observed = feb_valid & jan_valid
    fwd = doc["directions"][0]
    assert fwd["key"] == "forward" and fwd["truth"] == str(ARG25_FEB)
    assert fwd["hidden_pixels"] == hidden.reshape(3, -1).sum(axis=1).tolist()
    assert doc["directions"][1]["hidden_pixels"] == (jan_valid & ~feb_valid).reshape(3, -1).sum(axis=1).tolist()

    values = np.where(observed, feb, 0).astype(np.float32)
    pred = make_engine("fillnodata").fill(values[None], observed[None], seeds=[0]).values[0].astype(np.float64)
    truth = feb.astype(np.float64)
    # SSIM as documented: filled image (observed copied back), each band stretched by the
    # truth's valid 1st/99th percentiles, no-truth pixels NaN, data range 1.
    filled = np.where(observed, truth, pred)
    t_s, p_s = np.full_like(truth, np.nan), np.full_like(truth, np.nan)
    for c in range(3):
        lo, hi = np.percentile(truth[c][feb_valid[c]], [1, 99])
        t_s[c] = np.where(feb_valid[c], (truth[c] - lo) / (hi - lo), np.nan)
        p_s[c] = np.where(feb_valid[c], (filled[c] - lo) / (hi - lo), np.nan)
    expected = {
        "rmse": rmse(truth, pred, hidden),
        "r2": r2(truth, pred, hidden),
        "psnr": psnr(truth, pred, hidden, data_range=10000),
        "ssim": ssim(t_s, p_s, hidden, data_range=1.0),
    }
    got_tile = fwd["tiles"][0]["methods"]["fillnodata"]
    got_pooled = fwd["summary"]["fillnodata"]  # one tile: pooled = the tile
    for key, want in expected.items():
        np.testing.assert_allclose(got_tile[key], want, rtol=1e-9, err_msg=key)
        np.testing.assert_allclose(got_pooled[key], want, rtol=1e-9, err_msg=key)
    assert got_pooled["mean_r2"] == pytest.approx(float(np.mean(expected["r2"])))


def test_fillnodata_beats_the_floor_and_dip_records_its_steps(run) -> None:
    _, _, doc = run
    fwd, rev = doc["directions"]
    assert min(fwd["summary"]["fillnodata"]["r2"]) > 0.5  # thin SLC-off stripes
    for d in (fwd, rev):
        s = d["summary"]
        assert s["fillnodata"]["mean_r2"] > s["mean fill (floor)"]["mean_r2"]
        dip = d["tiles"][0]["methods"][DIP]
        assert dip["steps"] == 3 and dip["cpu_seconds"] > 0 and dip["wall_seconds"] > 0
        assert s[DIP]["steps_per_patch"] == 3 and s["fillnodata"]["steps_per_patch"] == 0
        if doc["methods"][2]["convergence_monitored"]:
            curve = dip["convergence"]
            assert [p["step"] for p in curve] == [1, 2, 3]
            assert all(p["hidden_rmse"] > 0 for p in curve)
            # the last check sees the returned result
            assert curve[-1]["hidden_rmse"] == pytest.approx(float(np.mean(dip["rmse"])), rel=1e-5)


def test_ssim_is_one_for_identical_images_and_drops_with_noise() -> None:
    rng = np.random.default_rng(0)
    truth = rng.random((3, 48, 48))
    mask = np.zeros(truth.shape, dtype=bool)
    mask[:, 10:20, 5:40] = True
    np.testing.assert_allclose(ssim(truth, truth, mask, data_range=1.0), 1.0, atol=1e-12)
    a = ssim(truth, truth + rng.normal(0, 0.05, truth.shape), mask, data_range=1.0)
    b = ssim(truth, truth + rng.normal(0, 0.2, truth.shape), mask, data_range=1.0)
    assert np.all(a < 1) and np.all(b < a)
    # per-band data range: a wider range makes the same error look smaller
    c = ssim(truth, truth + 0.1, mask, data_range=[1.0, 1.0, 10.0])
    assert c[2] > c[0] and c[2] > c[1]


def test_ssim_respects_the_mask_and_the_truths_gaps() -> None:
    rng = np.random.default_rng(1)
    truth = rng.random((1, 60, 60))
    mask = np.zeros(truth.shape, dtype=bool)
    mask[:, 5:15, 5:15] = True
    far = truth.copy()
    far[:, 30:, 30:] += 1.0  # more than a window (radius 5) away from every masked pixel
    assert ssim(truth, far, mask, data_range=1.0)[0] == pytest.approx(1.0)
    near = truth.copy()
    near[:, 10, 10] += 1.0
    assert ssim(truth, near, mask, data_range=1.0)[0] < 1.0
    # no-truth pixels (NaN) take no part: junk under them changes nothing
    gappy = truth.copy()
    gappy[:, 16:20, :] = np.nan
    junk = truth.copy()
    junk[:, 16:20, :] = 99.0
    assert ssim(gappy, junk, mask, data_range=1.0)[0] == pytest.approx(1.0)
    # a scored pixel left unfilled (NaN) has no SSIM, like RMSE; an empty mask is NaN too
    unfilled = truth.copy()
    unfilled[:, 7, 7] = np.nan
    assert np.isnan(ssim(truth, unfilled, mask, data_range=1.0)[0])
    assert np.isnan(ssim(truth, truth, np.zeros_like(mask), data_range=1.0)[0])


def test_method_specs_parse_to_engine_preset_and_typed_overrides() -> None:
    m = parse_method("dip:mcpn-core:steps=300,stopping=holdout,channels_skip=[4,4,4,4,4,4],lr=0.005")
    assert (m.engine, m.preset) == ("dip", "mcpn-core")
    assert m.overrides == {"steps": 300, "stopping": "holdout", "channels_skip": (4,) * 6, "lr": 0.005}
    assert parse_method("dip").preset == "landsat2020"
    assert parse_method("telea:radius=3").overrides == {"radius": 3}


def test_auto_tiles_are_eligible_spread_and_deterministic(tmp_path: Path) -> None:
    with rasterio.open(ARG25_FEB) as a, rasterio.open(ARG25_JAN) as b:
        fv, jv = a.read() != a.nodata, b.read() != b.nodata
    picks, eligible, total = pick_tiles([(fv, jv), (jv, fv)], 128, 3)
    assert len(picks) == 3 and 3 <= eligible <= total
    assert picks == pick_tiles([(fv, jv), (jv, fv)], 128, 3)[0]
    for t in picks:
        for s in t.stats:
            assert 0.05 <= s.hidden <= 0.40 and s.truth_nodata <= 0.40
    for i, p in enumerate(picks):
        for q in picks[i + 1:]:
            assert abs(p.row - q.row) >= 128 or abs(p.col - q.col) >= 128
    # and through the command line, one direction, classical only: no convergence plot
    out = tmp_path / "out"
    rc = main(["eval", str(ARG25_FEB), str(ARG25_JAN), "--out", str(out), "--method", "fillnodata",
               "--tile-size", "128", "--n-tiles", "2", "--no-reverse-too"])
    assert rc == 0
    doc = json.loads((out / "report.json").read_text())
    assert [d["key"] for d in doc["directions"]] == ["forward"]
    assert len(doc["tiles"]) == 2 and all(t["why"].startswith("auto") for t in doc["tiles"])
    assert len(list(out.glob("quicklook_forward_*.png"))) == 2 and not list(out.glob("convergence_*"))


def _write_shifted(path: Path) -> Path:
    with rasterio.open(ARG25_JAN) as src:
        profile, data = src.profile, src.read()
    profile["transform"] = profile["transform"] @ rasterio.Affine.translation(1, 0)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def test_bad_input_exits_1_with_a_clear_message_and_no_output(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    shifted = _write_shifted(tmp_path / "shifted.tif")
    assert main(["eval", str(ARG25_FEB), str(shifted), "--out", str(out), "--method", "fillnodata"]) == 1
    err = capsys.readouterr().err
    assert "shifted.tif" in err and "transform differs" in err and "share one grid" in err
    assert not out.exists()

    assert main(["eval", str(ARG25_FEB), str(ARG25_JAN), "--out", str(out), "--method", "kriging"]) == 1
    err = capsys.readouterr().err
    assert "kriging" in err and "unknown method" in err and "fillnodata" in err
    assert main(["eval", str(ARG25_FEB), str(ARG25_JAN), "--out", str(out), "--method", "dip:nope"]) == 1
    assert "nope" in capsys.readouterr().err
    assert main(["eval", str(ARG25_FEB), str(ARG25_JAN), "--out", str(out), "--method", "fillnodata",
                 "--tiles", "400,0", "--tile-size", "128"]) == 1
    assert "400,0" in capsys.readouterr().err
    assert main(["eval", str(ARG25_FEB), str(tmp_path / "missing.tif"), "--out", str(out)]) == 1
    assert "missing.tif: no such file" in capsys.readouterr().err
    assert not out.exists()
