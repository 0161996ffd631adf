"""Describe a trained ConvNP model as a STAC item (the Machine Learning Model extension).

`dipfill train` writes the weights and this item beside them: which scenes the model
learnt from (``derived_from`` links to their items when they came from a catalog, the
files otherwise), its configuration, the training task and its metrics, and the weights
as an asset with the MLM fields a model catalog reads (``mlm:name``, ``mlm:architecture``,
``mlm:framework``, ``mlm:input``/``mlm:output``, ``mlm:artifact_type``). Plain values in,
a dict out: this room speaks STAC and knows nothing of torch.

The item's geometry is the union of the training scenes' bounding boxes (lon/lat) when
they are known, else null (STAC allows an item without geometry); its ``datetime`` is
null with ``start_datetime``/``end_datetime`` spanning the scenes' dates when known, else
the training time.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from dipfill import __version__
from dipfill.stac.item import FILE_SCHEMA

__all__ = ["MLM_SCHEMA", "TrainingScene", "ModelRecord", "model_item", "WEIGHTS_ASSET", "ARTIFACT_TYPE"]

MLM_SCHEMA = "https://stac-extensions.github.io/mlm/v1.4.0/schema.json"
WEIGHTS_ASSET = "weights"
#: How the weights were written: ``torch.save`` of a dict (format, config, meta, state dict)
#: loaded with ``torch.load(weights_only=True)``. (safetensors is not a dependency.)
ARTIFACT_TYPE = "torch.save"
MEDIA_TYPE = "application/octet-stream; application=pytorch"


@dataclass(frozen=True)
class TrainingScene:
    """One scene the model learnt from: its id, where it was read from, its date and lon/lat bbox."""

    id: str
    href: str
    datetime: str | None = None
    bbox: Sequence[float] | None = None
    item_href: str | None = None  # its STAC item, when it came from a catalog


@dataclass(frozen=True)
class ModelRecord:
    """What the model item says, as plain values."""

    item_id: str
    weights_href: str  # relative to the item
    sha256: str
    size: int
    bands: Sequence[str]
    model_config: Mapping[str, Any]
    train_config: Mapping[str, Any]
    metrics: Mapping[str, Any]
    parameters: int
    scenes: Sequence[TrainingScene]
    framework_version: str
    seconds: float
    created: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))


def _union_bbox(boxes: Sequence[Sequence[float]]) -> list[float] | None:
    boxes = [list(b)[:4] if len(b) == 4 else [b[0], b[1], b[3], b[4]] for b in boxes if b]
    if not boxes:
        return None
    return [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]


def model_item(record: ModelRecord) -> dict[str, Any]:
    """The STAC item (a dict, STAC 1.1) of a trained model."""
    bbox = _union_bbox([s.bbox for s in record.scenes if s.bbox])
    geometry = None
    if bbox:
        w, s, e, n = bbox
        geometry = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    dates = sorted(s.datetime for s in record.scenes if s.datetime)
    times: dict[str, Any] = ({"datetime": None, "start_datetime": dates[0], "end_datetime": dates[-1]} if dates
                             else {"datetime": record.created})
    c = len(record.bands)
    properties = {
        **times,
        "created": record.created,
        "description": "ConvNP gap filler (paper 002; Gordon et al. 2020 on-the-grid ConvCNP) trained by dipfill "
                       "on the observed pixels of the listed scenes, with real gap masks of those scenes "
                       "transplanted onto observed ground; fill with `dipfill fill --engine convnp --model`",
        "mlm:name": record.item_id,
        "mlm:architecture": "ConvCNP (set convolution, U-Net, Gaussian mean/std heads)",
        "mlm:tasks": ["regression"],
        "mlm:framework": "pytorch",
        "mlm:framework_version": record.framework_version,
        "mlm:total_parameters": int(record.parameters),
        "mlm:pretrained": False,
        "mlm:accelerator": None,
        "mlm:input": [{
            "name": "context",
            "bands": list(record.bands),
            "input": {"shape": [-1, c, -1, -1], "dim_order": ["batch", "bands", "height", "width"],
                      "data_type": "float32"},
            "description": "each band of each patch scaled from its observed pixels' 1st/99th percentiles to "
                           "0.1/0.9; gap pixels 0, with the observed mask as a second input",
        }],
        "mlm:output": [{
            "name": "gaussian",
            "tasks": ["regression"],
            "result": {"shape": [-1, 2 * c, -1, -1], "dim_order": ["batch", "bands", "height", "width"],
                       "data_type": "float32"},
            "description": "per band a mean and a standard deviation, mapped back to the input's units",
        }],
        "dipfill:version": __version__,
        "dipfill:model_sha256": record.sha256,
        "dipfill:model_config": dict(record.model_config),
        "dipfill:train_config": dict(record.train_config),
        "dipfill:metrics": dict(record.metrics),
        "dipfill:train_seconds": round(float(record.seconds), 2),
        "dipfill:training_scenes": [{"id": s.id, "href": s.href, "datetime": s.datetime} for s in record.scenes],
    }
    links = [{"rel": "derived_from", "href": s.item_href or s.href, "title": s.id,
              **({"type": "application/geo+json"} if s.item_href else {})} for s in record.scenes]
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [MLM_SCHEMA, FILE_SCHEMA],
        "id": record.item_id,
        "geometry": geometry,
        **({"bbox": bbox} if bbox else {}),
        "properties": properties,
        "links": links,
        "assets": {WEIGHTS_ASSET: {
            "href": record.weights_href,
            "type": MEDIA_TYPE,
            "title": "ConvNP weights",
            "roles": ["mlm:model", "mlm:weights", "data"],
            "mlm:artifact_type": ARTIFACT_TYPE,
            "file:size": int(record.size),
            "file:checksum": "1220" + record.sha256,
        }},
    }
