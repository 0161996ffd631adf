"""`dipfill train` in process: read scenes, train a ConvNP on them, write weights + model item.

The scenes come from files (one multi-band raster each, read by :mod:`dipfill.raster.read`)
or from a STAC search (items read by :mod:`dipfill.raster.scene`, as `dipfill run` reads
them). Their observed pixels are the ground and their validity masks the gap masks of the
training tasks (:mod:`dipfill.engines.convnp_train`). The outputs, in ``--out``:

- ``model.pt``: the weights (:func:`dipfill.engines.convnp.model_to_bytes`), written
  atomically;
- ``model.json``: the model's STAC item (:func:`dipfill.stac.model_item.model_item`),
  written last, so a directory with an item holds a complete model.

Also here: ``--model PATH`` checked and recorded for `dipfill fill`/`run`
(:func:`model_options`); :mod:`dipfill.pipeline.models` resolves and reads it (no torch).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from dipfill.engines.convnp import framework_version, model_sha256
from dipfill.engines.convnp_config import ConvNPConfig
from dipfill.engines.convnp_train import Ground, TrainConfig, train_convnp
from dipfill.errors import InputError
from dipfill.pipeline.models import ITEM_NAME, WEIGHTS_NAME, read_model, resolve_model
from dipfill.raster.read import acquisition_date, data_validity, read_scene
from dipfill.raster.scene import open_scene
from dipfill.stac.item import sanitize_id, self_href
from dipfill.stac.model_item import ModelRecord, TrainingScene, model_item
from dipfill.stac.query import SearchQuery
from dipfill.stac.search import open_source, search
from dipfill.storage import as_path, check_output_dir, read_json, write_bytes, write_json

__all__ = ["TrainRequest", "TrainReport", "train", "load_scenes", "model_options"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainRequest:
    """What `dipfill train` was asked: scenes (files, or a STAC source and query), where to
    write, and how to train."""

    out: str
    files: tuple[str, ...] = ()
    stac: str | None = None
    collections: tuple[str, ...] = ()
    bbox: tuple[float, float, float, float] | None = None
    datetime: str | None = None
    bands: tuple[str, ...] | None = None
    max_scenes: int | None = None
    model_id: str | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    channels: tuple[int, ...] = ConvNPConfig().channels

    def __post_init__(self) -> None:
        if bool(self.files) == bool(self.stac):
            raise InputError("dipfill train needs scenes: FILES... or --stac CATALOG (not both)")


@dataclass(frozen=True)
class TrainReport:
    model_id: str
    weights: str
    item: str
    sha256: str
    metrics: dict[str, Any]
    seconds: float
    scenes: list[str]


def _scene_from_file(path: str) -> tuple[Ground, TrainingScene, list[str]]:
    scene = read_scene([path])
    valid = data_validity(scene.data, scene.nodata)
    name = os.path.splitext(os.path.basename(path))[0]
    ground = Ground(values=scene.data.astype(np.float32), valid=valid, name=name)
    record = TrainingScene(id=name, href=os.path.abspath(path), datetime=acquisition_date(scene))
    return ground, record, scene.band_names


def _scenes_from_stac(request: TrainRequest) -> list[tuple[Ground, TrainingScene, list[str]]]:
    source = open_source(request.stac)  # type: ignore[arg-type]
    source.check_collections(request.collections)
    query = SearchQuery(collections=request.collections, bbox=request.bbox, datetime=request.datetime,
                        limit=request.max_scenes)
    out = []
    for item in search(source, query):
        data = open_scene(item, bands=request.bands).read()
        valid = data.valid & data.footprint[None]
        props = item.get("properties") or {}
        scene = TrainingScene(id=str(item.get("id")), href=self_href(item) or str(item.get("id")),
                              datetime=props.get("datetime") or props.get("start_datetime"), bbox=item.get("bbox"),
                              item_href=self_href(item))
        out.append((Ground(values=data.data.astype(np.float32), valid=valid, name=scene.id), scene,
                    list(data.band_names)))
    if not out:
        raise InputError(f"--stac {request.stac}: the search found no scene to train on (check --collection, "
                         "--bbox, --datetime)")
    return out


def load_scenes(request: TrainRequest) -> tuple[list[Ground], list[TrainingScene], list[str]]:
    """The training scenes as arrays, what the item says about each, and the band names;
    every scene must have the first one's band count."""
    if request.files:
        loaded = [_scene_from_file(p) for p in request.files[: request.max_scenes]]
    else:
        loaded = _scenes_from_stac(request)
    first_bands = loaded[0][2]
    for ground, scene, bands in loaded[1:]:
        if len(bands) != len(first_bands):
            raise InputError(f"{scene.href}: {len(bands)} band(s), but {loaded[0][1].href} has {len(first_bands)}; "
                             "train on scenes with the same bands (--bands)")
    return [g for g, _, _ in loaded], [s for _, s, _ in loaded], list(first_bands)


def train(request: TrainRequest, *, progress: Callable[[int, int, float], None] | None = None) -> TrainReport:
    """Train on the request's scenes and write ``model.pt`` then ``model.json`` into ``out``."""
    out = check_output_dir(request.out)  # before reading or training: a model that cannot be written costs nothing
    grounds, scenes, bands = load_scenes(request)
    masks = [g.valid.all(axis=0) for g in grounds]
    model_config = ConvNPConfig(bands=len(bands), channels=request.channels)
    log.info("training on %d scene(s), %d band(s), %d steps", len(grounds), len(bands), request.train.steps)
    result = train_convnp(grounds, masks, model_config, request.train, progress=progress,
                          meta={"bands": bands, "scenes": [s.id for s in scenes]})
    sha = model_sha256(result.model_bytes)
    model_id = sanitize_id(request.model_id or f"convnp-{sha[:12]}")
    folder = as_path(out)
    folder.mkdir(parents=True, exist_ok=True)  # nothing to make on object storage
    weights = folder / WEIGHTS_NAME
    write_bytes(weights, result.model_bytes)
    record = ModelRecord(item_id=model_id, weights_href=f"./{WEIGHTS_NAME}", sha256=sha, size=len(result.model_bytes),
                         bands=bands, model_config=model_config.to_dict(), train_config=request.train.to_dict(),
                         metrics=result.metrics, parameters=int(result.metrics["parameters"]), scenes=scenes,
                         framework_version=framework_version(), seconds=result.seconds)
    item_path = folder / ITEM_NAME
    write_json(item_path, model_item(record))  # last: an item means a complete model
    return TrainReport(model_id=model_id, weights=str(weights), item=str(item_path), sha256=sha,
                       metrics=dict(result.metrics), seconds=result.seconds, scenes=[s.id for s in scenes])


def model_options(path: str, *, batch: int | None = None, device: str | None = None) -> dict[str, Any]:
    """``engine_options`` for ``--engine convnp --model PATH``, checked now (one line for a
    bad path or a file that is no model): the path, the weights' sha256 (so the output item
    records which model filled it, and a changed model changes the config hash) and the
    model id from its item."""
    from dipfill.engines.convnp import model_from_bytes

    data = read_model(path)
    model, meta = model_from_bytes(data, what=f"--model {path}")
    _, item = resolve_model(path)
    model_id = None
    if item:
        try:
            model_id = read_json(item).get("id")
        except (OSError, ValueError):
            model_id = None
    opts: dict[str, Any] = {"model": os.path.abspath(path) if "://" not in path else path,
                            "model_sha256": model_sha256(data), "model_id": model_id or os.path.basename(path),
                            "bands": int(model.config.bands)}
    if batch is not None:
        opts["batch"] = batch
    if device is not None:
        opts["device"] = device
    return opts
