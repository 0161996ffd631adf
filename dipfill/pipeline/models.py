"""Where a trained model's files are: ``--model PATH`` resolved and read, without torch.

`dipfill train` writes ``model.pt`` (the weights) and ``model.json`` (its STAC item, last)
into one directory. ``--model`` takes that directory, the item or the weights file. The
engine room opens no files, so whoever builds the ``convnp`` engine (the fill, an engine
worker, a Ray actor) passes :func:`read_model` as its ``model_reader``; it reads through
:mod:`dipfill.storage`, so a model on object storage reads like a local one. Kept apart from
:mod:`dipfill.pipeline.train` so that the driver and the Ray executor load no torch.
"""

from __future__ import annotations

from dipfill.errors import InputError
from dipfill.stac.model_item import WEIGHTS_ASSET
from dipfill.storage import as_path, exists, read_bytes, read_json

__all__ = ["WEIGHTS_NAME", "ITEM_NAME", "WEIGHTS_ASSET", "resolve_model", "read_model"]

WEIGHTS_NAME = "model.pt"
ITEM_NAME = "model.json"


def resolve_model(path: str) -> tuple[str, str | None]:
    """``--model PATH`` as (weights path, item path or None): a directory written by
    `dipfill train`, its ``model.json`` item (the weights asset's href) or a weights file."""
    p = as_path(path)
    if str(path).endswith(".json"):
        if not exists(p):
            raise InputError(f"--model {path}: no such file; give a directory written by `dipfill train`")
        try:
            href = read_json(p)["assets"][WEIGHTS_ASSET]["href"]
        except (KeyError, TypeError, ValueError):
            raise InputError(f"--model {path}: not a model item (no '{WEIGHTS_ASSET}' asset)") from None
        return str(p.parent / href.removeprefix("./")) if "://" not in href else href, str(p)
    if exists(p / ITEM_NAME) or exists(p / WEIGHTS_NAME):
        return str(p / WEIGHTS_NAME), str(p / ITEM_NAME) if exists(p / ITEM_NAME) else None
    if not exists(p):
        raise InputError(f"--model {path}: no such file or directory; give a directory written by `dipfill train`")
    return str(p), None


def read_model(path: str) -> bytes:
    """The weights' bytes for ``--model PATH`` (what the convnp engine is given as ``model_reader``)."""
    weights, _ = resolve_model(path)
    try:
        return read_bytes(weights)
    except (FileNotFoundError, IsADirectoryError):
        raise InputError(f"--model {path}: no weights file {weights}; give a directory written by `dipfill train`") \
            from None
