"""The amortised ConvNP engine (paper 002, issue 14 item 4) on the committed ARG25 crops.

Training on real gap masks transplanted onto observed ground lowers the Gaussian NLL and
is deterministic (same seed: same weight bytes); the engine keeps observed pixels
bit-exact, fills every gap with finite values and gives a patch the same values whatever
batch it shares; `dipfill train --stac` then `dipfill fill --engine convnp --model` end to
end, the output item naming the model; a bad model path or a model of other bands is one
line. Models are tiny (widths 8,16,32; a few dozen steps): the tests check behaviour, the
quality is scripts/bench_convnp.py's.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from _data import ARG25_FEB, ARG25_JAN, DATA
from dipfill.cli.main import main
from dipfill.engines.convnp import ConvCNP, ConvNPEngine, model_to_bytes
from dipfill.engines.convnp_config import ConvNPConfig, TrainConfig
from dipfill.engines.convnp_train import Ground, train_convnp

SMALL = ConvNPConfig(bands=3, channels=(8, 16, 32))
QUICK = TrainConfig(steps=30, batch=4, size=48, lr=3e-3, validation_tasks=4, seed=3)
CATALOG = DATA / "arg25_menindee" / "stac" / "catalog.json"


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with rasterio.open(path) as src:
        data = src.read()
        return data, data != src.nodata


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the weights' bytes are compared between runs, and the 2-core
    machine is shared (as tests/test_mcpn.py)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def scenes() -> list[Ground]:
    return [Ground(values=d.astype(np.float32), valid=v, name=p.stem) for p in (ARG25_JAN, ARG25_FEB)
            for d, v in [_read(p)]]


@pytest.fixture(scope="module")
def trained(scenes):
    masks = [g.valid.all(axis=0) for g in scenes]
    return [train_convnp(scenes, masks, SMALL, QUICK) for _ in range(2)], masks


def test_training_on_real_masks_lowers_the_loss_and_is_deterministic(trained, scenes) -> None:
    (first, again), masks = trained
    losses = first.losses
    assert np.mean(losses[-8:]) < np.mean(losses[:8]) - 0.1, losses
    assert first.model_bytes == again.model_bytes  # same seed, data, machine: same weight bytes
    other = train_convnp(scenes, masks, SMALL, TrainConfig(steps=2, batch=4, size=48, validation_tasks=2, seed=4))
    assert other.model_bytes != first.model_bytes
    m = first.metrics
    assert np.isfinite([m["validation_nll"], m["validation_r2"], m["validation_r2_fillnodata"]]).all()
    assert m["parameters"] == sum(p.numel() for p in first.model.parameters())


def test_fill_keeps_known_pixels_bit_exact_and_fills_every_gap(trained) -> None:
    (result, _), _ = trained
    data, valid = _read(ARG25_JAN)
    patches = np.stack([data[:, :96, :96], data[:, 200:296, 300:396], data[:, 400:496, 40:136]]).astype(np.float32)
    observed = np.stack([valid[:, :96, :96], valid[:, 200:296, 300:396], valid[:, 400:496, 40:136]])
    assert (~observed).any(axis=(1, 2, 3)).all(), "every patch has real gaps"
    engine = ConvNPEngine(model_bytes=result.model_bytes, batch=2)
    out = engine.fill(patches, observed, seeds=[0, 1, 2])
    assert out.values.dtype == np.float32
    assert np.array_equal(out.values[observed].view(np.uint32), patches[observed].view(np.uint32))
    assert np.isfinite(out.values[~observed]).all()
    alone = engine.fill(patches[2:], observed[2:], seeds=[2])  # another batch: the same values
    assert np.array_equal(alone.values[0], out.values[2])
    d = out.diagnostics[0]
    assert d.engine == "convnp" and d.extra["model_sha256"] == hashlib.sha256(result.model_bytes).hexdigest()


def test_cli_train_from_the_demo_catalog_then_fill_with_the_model(tmp_path: Path, capsys) -> None:
    model_dir = tmp_path / "model"
    rc = main(["train", "--stac", str(CATALOG), "--collection", "ga-arg25-nbar", "--out", str(model_dir),
               "--steps", "6", "--batch", "2", "--size", "48", "--channels", "8,16,32", "--seed", "1"])
    assert rc == 0, capsys.readouterr().err
    assert "held-out" in capsys.readouterr().out
    weights, item_path = model_dir / "model.pt", model_dir / "model.json"
    item = json.loads(item_path.read_text())
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert item["assets"]["weights"]["file:checksum"] == "1220" + sha
    assert item["assets"]["weights"]["href"] == "./model.pt"
    props = item["properties"]
    assert props["mlm:framework"] == "pytorch" and props["mlm:input"][0]["bands"] == ["B3", "B4", "B5"]
    assert len(props["dipfill:training_scenes"]) == 2 and props["dipfill:train_config"]["steps"] == 6
    assert {ln["rel"] for ln in item["links"]} == {"derived_from"}
    import pystac

    assert pystac.Item.from_dict(item).id == item["id"]
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".")], "no temporary left"

    out = tmp_path / "out"
    rc = main(["fill", str(ARG25_JAN), "--out", str(out), "--engine", "convnp", "--model", str(model_dir),
               "--patch", "128", "--overlap", "16", "--json"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    filled = json.loads(Path(report["outputs"]["item"]).read_text())
    opts = filled["properties"]["dipfill:config"]["engine_options"]
    assert opts["model_sha256"] == sha and opts["model_id"] == item["id"]
    assert report["counts"]["filled"] > 0
    data, valid = _read(ARG25_JAN)
    with rasterio.open(report["outputs"]["filled"]) as src:
        got = src.read()
    assert np.array_equal(got[valid], data[valid])  # observed pixels bit-exact


def test_bad_model_path_and_other_bands_are_one_line(tmp_path: Path, capsys) -> None:
    rc = main(["fill", str(ARG25_JAN), "--out", str(tmp_path / "a"), "--engine", "convnp",
               "--model", str(tmp_path / "nope")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "--model" in err[0] and "nope" in err[0] and "dipfill train" in err[0]
    one_band = tmp_path / "one.pt"
    one_band.write_bytes(model_to_bytes(ConvCNP(ConvNPConfig(bands=1, channels=(8, 16))), {"bands": ["red"]}))
    rc = main(["fill", str(ARG25_JAN), "--out", str(tmp_path / "b"), "--engine", "convnp", "--model", str(one_band)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "1 band" in err[0] and "has 3" in err[0], err
    assert not (tmp_path / "b" / "item.json").exists()
    rc = main(["fill", str(ARG25_JAN), "--out", str(tmp_path / "c"), "--engine", "convnp", "--model", str(ARG25_FEB)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "not a dipfill ConvNP model" in err[0], err


def test_dipfill_run_engine_convnp_records_the_model(trained, tmp_path: Path) -> None:
    """`dipfill run --engine convnp --model DIR` over the demo catalog (in process, the engine
    worker building the engine from the model file as a Ray actor does): every scene done,
    the item's config naming the model's sha256 and gap pixels filled."""
    from dipfill.cli.run import build_request
    from dipfill.pipeline import run as run_mod
    from dipfill.pipeline.executor import LocalPool

    (result, _), _ = trained
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.pt").write_bytes(result.model_bytes)
    request = build_request({"stac": str(CATALOG), "out": str(tmp_path / "out"), "engine": "convnp",
                             "model": str(model_dir), "max_scenes": 1})
    opts = dict(request.options.engine_options)
    assert opts["model_sha256"] == hashlib.sha256(result.model_bytes).hexdigest()
    (scene,) = run_mod.run(request, pool=LocalPool("convnp", opts, request.options.fallback)).scenes
    assert scene.status == "done", scene.message
    item = json.loads(Path(scene.output).read_text())
    assert item["properties"]["dipfill:config"]["engine_options"]["model_sha256"] == opts["model_sha256"]
    assert item["properties"]["dipfill:counts"]["filled"] > 0


def test_train_bad_input_is_one_line(tmp_path: Path, capsys) -> None:
    for args, says in ((["--out", str(tmp_path / "m")], "FILES... or --stac"),
                       ([str(ARG25_JAN), "--size", "1024", "--out", str(tmp_path / "m")], "smaller --size"),
                       ([str(ARG25_JAN), "--out", "/proc/nope"], "--out /proc/nope")):
        rc = main(["train", *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 1 and len(err) == 1 and says in err[0], err
    assert not (tmp_path / "m").exists()
