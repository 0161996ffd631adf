"""`dipfill eval` on the committed ARG25 crops: report files, numbers checked by recomputation
(per tile and pooled over tiles), report.md against report.json, SSIM's definition, the
stretches, method specs, tile choice, a run without matplotlib and bad input."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from dipfill.cli.main import main
from dipfill.engines import make_engine
from dipfill.errors import InputError
from dipfill.eval.cases import pick_tiles, pooled_scores, transplant_gaps
from dipfill.eval.methods import parse_method
from dipfill.eval.metrics import psnr, r2, rmse, ssim
from dipfill.stretch import display_stretch, percentile_limits, unit_stretch
from tests._data import ARG25_FEB, ARG25_JAN

ROW, COL, SIZE = 128, 128, 128
DIP = "dip:mcpn-core:steps=3,blend=none"  # the network alone: its curve ends at what it returns
FLOOR = "mean fill (floor)"
METRICS = ("rmse", "r2", "psnr", "ssim")


def _window(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with rasterio.open(path) as src:
        data = src.read(window=((ROW, ROW + SIZE), (COL, COL + SIZE)))
        return data, data != src.nodata


def _eval_args(out: Path, *extra: str) -> list[str]:
    return ["eval", str(ARG25_FEB), str(ARG25_JAN), "--out", str(out), *extra]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[int, Path, dict]:
    out = tmp_path_factory.mktemp("eval") / "out"
    with pytest.MonkeyPatch.context() as mp:
        # a private strategy cache: a stale entry elsewhere must not change what this runs
        mp.setenv("DIPFILL_CACHE_DIR", str(out.parent / "cache"))
        rc = main(_eval_args(out, "--method", "fillnodata", "--method", "telea", "--method", DIP,
                             "--tiles", f"{ROW},{COL}", "--tile-size", str(SIZE), "--check-every", "1"))
    doc = json.loads((out / "report.json").read_text()) if rc == 0 else {}
    return rc, out, doc


def test_eval_writes_report_quicklooks_and_convergence_plots(run) -> None:
    rc, out, doc = run
    assert rc == 0
    pngs = {f"{kind}_{key}_r{ROW}_c{COL}" for key in ("forward", "reverse") for kind in ("quicklook", "convergence")}
    assert doc["files"] == {"report_md": "report.md", "report_json": "report.json", **{s: f"{s}.png" for s in pngs}}
    assert sorted(p.name for p in out.iterdir()) == sorted(doc["files"].values()), "stray or missing files"
    for stem in pngs:
        assert (out / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", stem
    md = (out / "report.md").read_text()
    for text in ("## Results: forward", "## Results: reverse", "| method | band | RMSE | r² | PSNR (dB) | SSIM",
                 "`fillnodata`", "`telea`", f"`{DIP}`", "## How to read this", "given with --tiles"):
        assert text in md, text
    # every picture is linked from the report, under its tile
    assert sorted(re.findall(r"\]\((\w+\.png)\)", md)) == sorted(f"{s}.png" for s in pngs)
    for d in doc["directions"]:
        tile = d["tiles"][0]
        assert (tile["quicklook"], tile["convergence_plot"]) == (
            f"quicklook_{d['key']}_r{ROW}_c{COL}.png", f"convergence_{d['key']}_r{ROW}_c{COL}.png")
    assert [m["label"] for m in doc["methods"]] == ["fillnodata", "telea", DIP]
    dip = doc["methods"][2]["config"]
    assert dip["preset"] == "mcpn-core" and dip["steps"] == 3 and dip["channels_skip"] == [4] * 6
    assert dip["check_every"] == 1
    assert "plots_skipped" not in doc


def test_report_md_shows_the_numbers_of_report_json(run) -> None:
    _, out, doc = run
    rows = {}
    for line in (out / "report.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 10 and cells[1] == "B3 red":
            rows.setdefault(cells[0].strip("`"), []).append(cells)
    for i, d in enumerate(doc["directions"]):
        assert list(d["summary"]) == ["fillnodata", "telea", DIP, FLOOR]
        for label, s in d["summary"].items():
            cells = rows[label][i]  # forward, then reverse
            assert cells[2:7] == [f"{s['rmse'][0]:.1f}", f"{s['r2'][0]:.3f}", f"{s['psnr'][0]:.2f}",
                                  f"{s['ssim'][0]:.3f}", f"{s['mean_r2']:.3f}"], label


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
    # the floor: each hidden pixel gets its band's observed mean in the tile
    means = np.array([truth[c][observed[c]].mean() for c in range(3)])[:, None, None]
    floor = np.broadcast_to(means, truth.shape)
    np.testing.assert_allclose(fwd["summary"][FLOOR]["rmse"], rmse(truth, floor, hidden), rtol=1e-6)


def test_fillnodata_beats_the_floor_and_dip_records_its_steps(run) -> None:
    _, _, doc = run
    fwd, rev = doc["directions"]
    assert min(fwd["summary"]["fillnodata"]["r2"]) > 0.5  # thin SLC-off stripes
    assert [m["convergence_monitored"] for m in doc["methods"]] == [False, False, True]
    for d in (fwd, rev):
        s = d["summary"]
        assert s["fillnodata"]["mean_r2"] > s[FLOOR]["mean_r2"]
        assert s["telea"]["mean_r2"] > s[FLOOR]["mean_r2"]
        dip = d["tiles"][0]["methods"][DIP]
        assert dip["steps"] == 3 and dip["cpu_seconds"] > 0 and dip["wall_seconds"] > 0
        assert dip["extra"]["best_step"] == 3 and dip["extra"]["stopped_by"] == "steps"
        assert s[DIP]["steps_per_patch"] == 3 and s["fillnodata"]["steps_per_patch"] == 0
        assert s[DIP]["patches"] == s[FLOOR]["patches"] == 1
        assert d["tiles"][0]["methods"]["fillnodata"]["convergence"] == []
        curve = dip["convergence"]
        assert [p["step"] for p in curve] == [1, 2, 3]
        assert all(p["hidden_rmse"] > 0 for p in curve)
        assert all(p["holdout_rmse"] is None for p in curve)  # fixed stopping holds nothing out
        # the last check sees the returned result
        assert curve[-1]["hidden_rmse"] == pytest.approx(float(np.mean(dip["rmse"])), rel=1e-5)


def test_without_matplotlib_the_report_is_written_and_one_warning_says_why(run, tmp_path, monkeypatch,
                                                                           caplog) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        rc = main(_eval_args(out, "--method", "fillnodata", "--tiles", f"{ROW},{COL}", "--tile-size", str(SIZE)))
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "pip install dipfill[plots]" in warnings[0], warnings
    doc = json.loads((out / "report.json").read_text())
    assert doc["plots_skipped"] == "matplotlib is not installed (pip install dipfill[plots])"
    assert doc["files"] == {"report_md": "report.md", "report_json": "report.json"}
    md = (out / "report.md").read_text()
    assert "No quicklooks or convergence plots: matplotlib is not installed" in md and "![" not in md
    # the same numbers as the run with pictures
    for d, with_plots in zip(doc["directions"], run[2]["directions"]):
        assert "quicklook" not in d["tiles"][0]
        for label in ("fillnodata", FLOOR):
            for key in METRICS:
                assert d["summary"][label][key] == with_plots["summary"][label][key], (label, key)


def test_pooled_summary_over_two_auto_tiles_follows_its_definition(tmp_path: Path) -> None:
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
    # through the command line, one direction, classical only: no convergence plot
    out = tmp_path / "out"
    assert main(_eval_args(out, "--method", "fillnodata", "--tile-size", "128", "--n-tiles", "2",
                           "--no-reverse-too")) == 0
    doc = json.loads((out / "report.json").read_text())
    assert [d["key"] for d in doc["directions"]] == ["forward"]
    want = pick_tiles([(fv, jv)], 128, 2)[0]
    assert [(t["row"], t["col"], t["why"]) for t in doc["tiles"]] == [(p.row, p.col, p.reason) for p in want]
    assert doc["tile_selection"]["mode"] == "auto" and doc["tile_selection"]["eligible"] >= 2
    assert len(list(out.glob("quicklook_forward_*.png"))) == 2 and not list(out.glob("convergence_*"))

    # pooled = all hidden pixels of both tiles: RMSE from the summed squared errors, SSIM the
    # count-weighted mean, r² with each tile's SS_tot about its own mean
    d = doc["directions"][0]
    n = np.array([t["hidden_pixels"] for t in d["tiles"]], dtype=np.float64)  # [tile, band]
    assert d["hidden_pixels"] == n.sum(axis=0).tolist()
    for label in ("fillnodata", FLOOR):
        per = {k: np.array([t["methods"][label][k] for t in d["tiles"]]) for k in METRICS}
        ss_res = n * per["rmse"] ** 2
        ss_tot = ss_res / (1 - per["r2"])
        pooled = d["summary"][label]
        np.testing.assert_allclose(pooled["rmse"], np.sqrt(ss_res.sum(0) / n.sum(0)), rtol=1e-9)
        np.testing.assert_allclose(pooled["ssim"], (n * per["ssim"]).sum(0) / n.sum(0), rtol=1e-9)
        np.testing.assert_allclose(pooled["r2"], 1 - ss_res.sum(0) / ss_tot.sum(0), rtol=1e-9)
        assert pooled["patches"] == 2


def test_pooled_r2_is_not_inflated_by_contrast_between_tiles() -> None:
    rng = np.random.default_rng(3)
    valid = np.ones((1, 8, 8), dtype=bool)
    donor = valid.copy()
    donor[:, 2:6, :] = False  # a stripe of gaps
    cases, preds, ssims = [], [], []
    for level in (100.0, 5000.0):  # a dark and a bright tile
        truth = level + rng.normal(0, 10, (1, 8, 8))
        case = transplant_gaps(truth, valid, donor)
        pred = np.full_like(truth, truth[case.hidden].mean())  # each tile's own hidden mean
        cases.append(case)
        preds.append(pred)
        ssims.append(np.array([0.5]))
    pooled = pooled_scores(cases, preds, ssims, data_range=10000.0)
    assert pooled["r2"][0] == pytest.approx(0.0, abs=1e-12)  # a per-tile constant explains nothing
    flat_truth = np.concatenate([c.truth[c.hidden] for c in cases])
    flat_pred = np.concatenate([p[c.hidden] for c, p in zip(cases, preds)])
    naive = 1 - np.sum((flat_truth - flat_pred) ** 2) / np.sum((flat_truth - flat_truth.mean()) ** 2)
    assert naive > 0.99  # what r² over the concatenated pixels would have claimed
    assert pooled["ssim"][0] == pytest.approx(0.5)


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


def test_stretches_share_limits_and_differ_only_in_clipping_and_flat_bands() -> None:
    ref = np.stack([np.arange(101, dtype=np.float64).reshape(1, 101), np.full((1, 101), 7.0),
                    np.zeros((1, 101))])
    valid = np.ones(ref.shape, dtype=bool)
    valid[2] = False  # no valid reference pixel
    assert percentile_limits(ref, valid, (2, 98)) == [(2.0, 98.0), (7.0, 7.0), (0.0, 1.0)]
    values = np.stack([np.array([[2.0, 50.0, 98.0, 200.0]]), np.array([[7.0, 9.0, 9.0, 9.0]]),
                       np.array([[0.5, 2.0, 2.0, 2.0]])])
    # scoring: the percentiles go to 0 and 1, overshoot kept, a flat band only shifted
    u = unit_stretch(values, ref, valid, (2.0, 98.0))
    np.testing.assert_allclose(u[0], [[0.0, 0.5, 1.0, 2.0625]])
    np.testing.assert_allclose(u[1], [[0.0, 2.0, 2.0, 2.0]])
    np.testing.assert_allclose(u[2], [[0.5, 2.0, 2.0, 2.0]])
    # pictures: the same limits, clipped to [0, 1], a flat band black
    s = display_stretch(values, percentile_limits(ref, valid, (2, 98)))
    np.testing.assert_allclose(s[0], [[0.0, 0.5, 1.0, 1.0]])
    np.testing.assert_array_equal(s[1], 0.0)
    np.testing.assert_allclose(s[2], [[0.5, 1.0, 1.0, 1.0]])


def test_method_specs_parse_to_engine_preset_and_typed_overrides() -> None:
    m = parse_method("dip:mcpn-core:steps=300,stopping=holdout,channels_skip=[4,4,4,4,4,4],lr=0.005")
    assert (m.engine, m.preset) == ("dip", "mcpn-core")
    assert m.overrides == {"steps": 300, "stopping": "holdout", "channels_skip": (4,) * 6, "lr": 0.005}
    assert parse_method("dip").preset == "landsat2020"
    assert (parse_method("dip:steps=5").preset, parse_method("dip:steps=5").overrides) == ("landsat2020", {"steps": 5})
    assert parse_method("dip:preset=sar2023,steps=5").preset == "sar2023"
    assert parse_method(" telea:radius=3 ").overrides == {"radius": 3}
    for bad, text in (("kriging", "unknown method 'kriging'"), ("telea:fast", "takes KEY=VALUE, got 'fast'"),
                      ("dip:mcpn-core:ndvi2024", "takes KEY=VALUE, got 'ndvi2024'"),
                      ("dip::steps=3", "empty field"), ("dip:steps=3,=4", "takes KEY=VALUE, got '=4'")):
        with pytest.raises(InputError, match=re.escape(text)):
            parse_method(bad)


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

    assert main(_eval_args(out, "--method", "kriging")) == 1
    err = capsys.readouterr().err
    assert "kriging" in err and "unknown method" in err and "fillnodata" in err
    assert main(_eval_args(out, "--method", "dip:nope")) == 1
    assert "nope" in capsys.readouterr().err
    assert main(_eval_args(out, "--method", "fillnodata", "--method", "fillnodata")) == 1
    assert "'fillnodata' given twice" in capsys.readouterr().err
    assert main(_eval_args(out, "--method", "fillnodata", "--tiles", "400,0", "--tile-size", "128")) == 1
    assert "400,0" in capsys.readouterr().err
    assert main(_eval_args(out, "--method", "fillnodata", "--tiles", "1,2,3")) == 1
    assert "even count" in capsys.readouterr().err
    assert main(_eval_args(out, "--method", "fillnodata", "--tile-size", "8")) == 1
    assert "--tile-size must be >= 16" in capsys.readouterr().err
    assert main(_eval_args(out, "--method", "fillnodata", "--rgb", "4,2,1")) == 1
    assert "--rgb 4,2,1" in capsys.readouterr().err
    assert main(["eval", str(ARG25_FEB), str(tmp_path / "missing.tif"), "--out", str(out)]) == 1
    assert "missing.tif: no such file" in capsys.readouterr().err
    assert not out.exists()


# --------------------------------------------------------------------------- guides
GUIDED_ARGS = ("--shift-mask", "20", "--no-reverse-too", "--tile-size", "128", "--n-tiles", "2",
               "--method", "fillnodata", "--method", "guided", "--method", "llhm")


def _own_stripes(out: Path, *extra: str) -> list[str]:
    """Truth January, its own stripes moved down 20 rows onto observed ground as the gaps."""
    return ["eval", str(ARG25_JAN), str(ARG25_JAN), "--out", str(out), *GUIDED_ARGS, *extra]


def test_guided_beats_fillnodata_with_another_date_as_guide(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(_own_stripes(out, "--guide", str(ARG25_FEB))) == 0
    doc = json.loads((out / "report.json").read_text())
    (d,) = doc["directions"]
    s = d["summary"]
    assert s["guided"]["mean_r2"] > s["fillnodata"]["mean_r2"] + 0.05, {k: v["mean_r2"] for k, v in s.items()}
    assert s["llhm"]["mean_r2"] > s["fillnodata"]["mean_r2"]
    # the hidden pixels are January's valid pixels under its own gaps moved down 20 rows
    with rasterio.open(ARG25_JAN) as src:
        data = src.read()
        valid = data != src.nodata
    moved = np.ones_like(valid)
    moved[:, 20:] = valid[:, :-20]
    hidden = valid & ~moved
    feb_valid = _valid(ARG25_FEB)
    seen = total = 0
    for t in doc["tiles"]:
        win = (slice(None), slice(t["row"], t["row"] + t["size"]), slice(t["col"], t["col"] + t["size"]))
        seen += int((hidden[win] & feb_valid[win].any(axis=0)[None]).sum())
        total += int(hidden[win].sum())
    assert sum(d["hidden_pixels"]) == total > 0
    assert d["guides"] == [str(ARG25_FEB)] and d["guide_coverage"] == pytest.approx(seen / total)
    assert s["guided"]["guides"] == [str(ARG25_FEB)] and s["guided"]["guide_coverage"] == d["guide_coverage"]
    assert s["fillnodata"]["guides"] == [] and s["fillnodata"]["guide_coverage"] is None
    assert [m["uses_guides"] for m in doc["methods"]] == [False, True, True]
    assert doc["inputs"]["guides"][0]["href"] == str(ARG25_FEB) and doc["options"]["shift_mask"] == 20
    md = (out / "report.md").read_text()
    assert f"observe {d['guide_coverage']:.1%} of the hidden pixels" in md
    assert "Used by `guided`, `llhm`; single-image: `fillnodata`" in md
    assert "shifted down 20 rows" in md


def _valid(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read() != src.nodata


def test_without_a_guide_the_guided_methods_score_as_fillnodata(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(_own_stripes(out, "--method", "regression")) == 0
    doc = json.loads((out / "report.json").read_text())
    s = doc["directions"][0]["summary"]
    assert "guides" not in doc["directions"][0] and "guides" not in s["guided"]
    for label in ("guided", "llhm", "regression"):
        for metric in (*METRICS, "mean_r2"):
            assert s[label][metric] == s["fillnodata"][metric], (label, metric)


def test_a_guide_that_is_the_truth_file_is_left_out_of_that_direction(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["eval", str(ARG25_FEB), str(ARG25_JAN), "--out", str(out), "--tiles", "128,128", "--tile-size", "128",
            "--shift-mask", "20", "--method", "fillnodata", "--method", "guided", "--guide", str(ARG25_JAN)]
    assert main(args) == 0
    fwd, rev = json.loads((out / "report.json").read_text())["directions"]
    assert fwd["guides"] == [str(ARG25_JAN)] and rev["guides"] == [] and rev["guide_coverage"] is None
    assert rev["summary"]["guided"]["mean_r2"] == rev["summary"]["fillnodata"]["mean_r2"]
    assert "Guides: none in this direction" in (out / "report.md").read_text()


def test_bad_guide_or_shift_exits_1_with_one_line_and_no_output(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(_own_stripes(out, "--guide", str(tmp_path / "nope.tif"))) == 1
    err = capsys.readouterr().err.strip()
    assert "nope.tif" in err and "no such file" in err and len(err.splitlines()) == 1
    assert main(_own_stripes(out, "--guide", str(ARG25_FEB), "--guide-bands", "4")) == 1
    assert "band 4 does not exist" in capsys.readouterr().err
    assert main(_own_stripes(out, "--shift-mask", "-1")) == 1
    assert "--shift-mask must be >= 0" in capsys.readouterr().err
    assert main(_own_stripes(out, "--shift-mask", "512")) == 1
    assert "only 512 rows" in capsys.readouterr().err
    assert not out.exists()


def test_guided_method_specs_parse() -> None:
    m = parse_method("mcpn:variant=input,steps=100")
    assert (m.engine, m.preset, m.overrides) == ("mcpn", None, {"variant": "input", "steps": 100})
    assert parse_method("mcpn:mcpn-core:steps=5").preset == "mcpn-core"
    assert (parse_method("llhm:min_common=100").engine, parse_method("guided").preset) == ("llhm", None)
    with pytest.raises(InputError, match="takes KEY=VALUE"):
        parse_method("guided:fast")
