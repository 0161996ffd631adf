"""The amortised engine: an on-the-grid convolutional conditional neural process (paper 002).

Paper 002 (Pondaven et al., "Convolutional Neural Processes for Inpainting Satellite
Images") treats every image as its own regression task: the observed pixels are the
context set, the gap pixels the targets, and a network trained over many such tasks
predicts the targets of a new image in one forward pass. Its model is the ConvCNP of
Gordon et al. (2020), on the grid:

1. a *set convolution* turns the context into two channels per band: the density
   ``h0 = ψ * m`` (how much context is near each pixel) and the signal
   ``h1 = ψ * (m·y) / (h0 + ε)`` (the context interpolated by a positive kernel ψ);
2. a CNN (here a small U-Net: the gaps of a real scene are tens of pixels wide, so the
   receptive field must be wider than a ResNet of the same size reaches) maps the
   ``2C`` channels to ``2C`` outputs;
3. heads give each pixel a Gaussian: mean ``h1 + Δ`` (the CNN corrects the
   interpolation, which is already a fair first guess) and standard deviation
   ``σ_min + softplus(·)``; training maximises its likelihood at hidden pixels
   (:mod:`dipfill.engines.convnp_train`).

Each band of each patch is normalised from its own observed pixels
(:mod:`dipfill.engines.normalize`, as DIP does), so a model trained on one sensor's
reflectance sees the same value range on another's digital numbers: that is what lets
it run out of distribution at all.

A model is a band count plus weights: :func:`model_to_bytes` / :func:`model_from_bytes`
are the one serialisation (``torch.save`` of a plain dict: format tag, config, state
dict; loaded with ``weights_only=True``). The engine gets the bytes from its caller, as
the DIP engine gets its strategy cache: engines open no files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.nn import functional as F

from dipfill.engines.base import EngineResult, PatchDiagnostics, check_batch
from dipfill.engines.convnp_config import ConvNPConfig
from dipfill.engines.normalize import denormalize, normalize
from dipfill.errors import InputError

__all__ = [
    "ConvNPConfig", "ConvCNP", "ConvNPEngine", "FORMAT", "model_to_bytes", "model_from_bytes", "model_sha256",
    "normalise_batch", "make_convnp_engine", "framework_version", "parameter_count",
]

#: Tag of the serialised model dict; a file without it is not a dipfill ConvNP model.
FORMAT = "dipfill-convnp/1"


#: δ of the set convolution's signal channel: the density (ψ sums to 1 at the start) below
#: which the signal leans on the context mean rather than on a few far pixels.
_SHRINK = 0.01


class _Block(nn.Sequential):
    """Two 3×3 convolutions with ReLU: one U-Net level."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))


class ConvCNP(nn.Module):
    """Set convolution → U-Net → Gaussian heads (mean, std) per band and pixel."""

    def __init__(self, config: ConvNPConfig) -> None:
        super().__init__()
        self.config = config
        c, k = config.bands, config.kernel
        # ψ per band: a depthwise kernel kept positive (exp of a free parameter), started as
        # a Gaussian of width k/4 so the first density and signal are already sensible
        r = torch.arange(k, dtype=torch.float32) - k // 2
        g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * (k / 4) ** 2))
        self.log_psi = nn.Parameter(torch.log(g / g.sum()).expand(c, 1, k, k).clone())
        widths = config.channels
        self.down = nn.ModuleList()
        cin = 2 * c
        for w in widths:
            self.down.append(_Block(cin, w))
            cin = w
        self.up = nn.ModuleList(_Block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(len(widths) - 1)))
        self.head = nn.Conv2d(widths[0], 2 * c, 1)
        nn.init.zeros_(self.head.weight)  # start from the set convolution's interpolation
        nn.init.zeros_(self.head.bias)

    @property
    def multiple(self) -> int:
        return 2 ** (len(self.config.channels) - 1)

    def encode(self, y: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The set convolution: density ``h0`` and normalised signal ``h1``, ``[B, C, H, W]`` each.

        ``h1`` is shrunk towards the patch band's context mean where the density is low
        (``(ψ*(m·y) + δ·ȳ) / (h0 + δ)``): far inside a wide gap the plain ratio is 0/0,
        and a mean that starts from 0 there costs the CNN most of its training to undo.
        """
        psi = torch.exp(self.log_psi)
        pad = self.config.kernel // 2
        h0 = F.conv2d(m, psi, padding=pad, groups=self.config.bands)
        ybar = (m * y).sum(dim=(2, 3), keepdim=True) / m.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
        h1 = (F.conv2d(m * y, psi, padding=pad, groups=self.config.bands) + _SHRINK * ybar) / (h0 + _SHRINK)
        return h0, h1

    def forward(self, y: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation ``[B, C, H, W]`` for context values ``y`` where ``m`` is 1."""
        h, w = y.shape[-2:]
        k = self.multiple
        ph, pw = (-h) % k, (-w) % k
        if ph or pw:  # zero context beyond the edge: the density says it is empty
            y, m = F.pad(y, (0, pw, 0, ph)), F.pad(m, (0, pw, 0, ph))
        h0, h1 = self.encode(y, m)
        x = torch.cat([h0, h1], dim=1)
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.avg_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = block(torch.cat([x, skip], dim=1))
        out = self.head(x)
        c = self.config.bands
        mean = h1 + out[:, :c]
        std = self.config.min_std + F.softplus(out[:, c:] + 0.5413)  # softplus(0.5413) ≈ 1: σ starts at ~1
        return mean[..., :h, :w], std[..., :h, :w]


def framework_version() -> str:
    """The torch release that wrote a model (the model item's ``mlm:framework_version``)."""
    return torch.__version__.split("+")[0]


def parameter_count(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def model_to_bytes(model: ConvCNP, meta: Mapping[str, Any] | None = None) -> bytes:
    """The model as ``torch.save`` bytes of ``{format, config, meta, state_dict}``.

    The state dict's tensors are made contiguous CPU copies first, so the same weights
    give the same bytes whatever device trained them.
    """
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "config": model.config.to_dict(), "meta": dict(meta or {}), "state_dict": state}, buf)
    return buf.getvalue()


def model_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_from_bytes(data: bytes, *, what: str = "model") -> tuple[ConvCNP, dict[str, Any]]:
    """The model and its ``meta`` from :func:`model_to_bytes` bytes; :class:`InputError`
    naming ``what`` for anything else (another file, another format, damaged weights)."""
    try:
        doc = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a file that is not its zip
        raise InputError(f"{what}: not a dipfill ConvNP model (torch.load failed: {str(exc).splitlines()[0]}); "
                         "make one with `dipfill train`") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise InputError(f"{what}: not a dipfill ConvNP model (format {found!r}, expected {FORMAT!r}); "
                         "make one with `dipfill train`")
    config = ConvNPConfig.from_dict(doc["config"])
    model = ConvCNP(config)
    try:
        model.load_state_dict(doc["state_dict"])
    except RuntimeError as exc:
        raise InputError(f"{what}: weights do not fit its config ({str(exc).splitlines()[0]})") from None
    model.eval()
    return model, dict(doc.get("meta") or {})


def normalise_batch(values: NDArray, observed: NDArray[np.bool_]) -> tuple[NDArray[np.float32], Any]:
    """Each band of each patch mapped from its observed pixels (DIP's normalisation);
    non-observed pixels set to 0 (they carry no value into the set convolution)."""
    norm, params = normalize(np.where(observed, values, 0.0), observed)
    return np.where(observed, norm, 0.0).astype(np.float32), params


@dataclass(frozen=True)
class ConvNPEngine:
    """Fill patches with one forward pass of a trained :class:`ConvCNP`.

    Built from the model bytes (:func:`model_from_bytes`); ``batch`` patches go through the
    network at once. Every patch is run at the same batch position against zero-padded
    neighbours of a fixed-size batch, so a patch's values do not depend on which other
    patches shared its call (the protocol's promise: resumed runs give the same bytes).
    Bands without an observed pixel in a patch come back NaN (unfilled); observed pixels
    are returned as given. Seeds are unused: the fill is deterministic.
    """

    model_bytes: bytes = dataclasses.field(repr=False)
    batch: int = 4
    device: str = "cpu"
    model_id: str = ""

    name = "convnp"
    uses_guides = False

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise InputError(f"convnp batch must be >= 1, got {self.batch}")
        model, meta = model_from_bytes(self.model_bytes, what=self.model_id or "convnp model")
        object.__setattr__(self, "_model", model.to(self._device()))
        object.__setattr__(self, "meta", meta)
        object.__setattr__(self, "sha256", model_sha256(self.model_bytes))

    def __getstate__(self) -> dict[str, Any]:  # pickled for Ray: the bytes travel, the module is rebuilt
        return {"model_bytes": self.model_bytes, "batch": self.batch, "device": self.device, "model_id": self.model_id}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)
        self.__post_init__()

    def _device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    @property
    def config(self) -> ConvNPConfig:
        return self._model.config  # type: ignore[attr-defined]

    def predict(self, patches: NDArray, observed: NDArray[np.bool_]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Mean and standard deviation of every pixel (data units, float64), ``[B, C, H, W]``."""
        bands = self.config.bands
        if patches.shape[1] != bands:
            raise InputError(f"{self.model_id or 'convnp model'} was trained on {bands} band(s); the input has "
                             f"{patches.shape[1]}: give the bands it was trained on, in its order "
                             f"({', '.join(self.meta.get('bands', [])) or 'see the model item'})")
        values = np.asarray(patches, dtype=np.float64)
        obs = np.asarray(observed, dtype=bool) & np.isfinite(values)
        y, params = normalise_batch(values, obs)
        m = obs.astype(np.float32)
        model: ConvCNP = self._model  # type: ignore[attr-defined]
        device = next(model.parameters()).device
        means, stds = [], []
        with torch.no_grad():
            for i in range(0, len(y), self.batch):
                yb, mb = y[i : i + self.batch], m[i : i + self.batch]
                n = len(yb)
                if n < self.batch:  # a full batch always: results independent of the batch's size
                    pad = ((0, self.batch - n), (0, 0), (0, 0), (0, 0))
                    yb, mb = np.pad(yb, pad), np.pad(mb, pad)
                mu, sd = model(torch.from_numpy(yb).to(device), torch.from_numpy(mb).to(device))
                means.append(mu[:n].double().cpu().numpy())
                stds.append(sd[:n].double().cpu().numpy())
        mean = denormalize(np.concatenate(means), params)
        std = np.concatenate(stds) / np.abs(params.scale)[..., None, None]
        return mean, std

    def fill(
        self,
        patches: NDArray[np.float32],
        observed: NDArray[np.bool_],
        *,
        seeds: Sequence[int],
        guides: NDArray[np.float32] | None = None,
        guide_observed: NDArray[np.bool_] | None = None,
        guide_bands: Sequence[int] | None = None,
    ) -> EngineResult:
        """Fill every gap of every patch in one forward pass per ``batch`` patches."""
        check_batch(patches, observed, seeds, guides=guides, guide_observed=guide_observed, guide_bands=guide_bands)
        start = time.perf_counter()
        values = np.asarray(patches)
        obs = np.asarray(observed, dtype=bool) & np.isfinite(values)
        mean, std = self.predict(values, obs)
        empty = ~obs.any(axis=(2, 3))  # [B, C]: nothing to condition on
        out = np.where(obs, values, mean).astype(np.float32)
        out[~np.isfinite(out)] = np.nan
        out[empty] = np.nan
        seconds = (time.perf_counter() - start) / max(len(values), 1)
        diagnostics = []
        for b in range(len(values)):
            gap = ~obs[b] & ~empty[b][:, None, None]
            sd = float(np.mean(std[b][gap])) if gap.any() else float("nan")
            diagnostics.append(PatchDiagnostics(
                engine=self.name, steps=0, seconds=seconds,
                extra={"model_sha256": self.sha256, "mean_gap_std": sd, "unfilled_pixels": int(np.isnan(out[b]).sum())},
            ))
        return EngineResult(values=out, diagnostics=diagnostics)


def make_convnp_engine(*, model_reader: Callable[[str], bytes] | None = None, model: str | None = None,
                       model_sha256: str | None = None, model_id: str | None = None, bands: int | None = None,
                       batch: int = 4, device: str = "cpu") -> ConvNPEngine:
    """The engine for ``make_engine("convnp", model=PATH, ...)``: ``model_reader(PATH)``
    gives the bytes (the caller's storage: :func:`dipfill.pipeline.train.read_model`;
    engines read no files). ``model_sha256``, when given (the CLI records it), must match
    the bytes: a model replaced between planning and filling is an error, not a silent
    change. ``bands``, when given, must be the model's band count."""
    if not model:
        raise InputError("engine convnp needs --model MODEL (a model directory written by `dipfill train`)")
    if model_reader is None:
        raise InputError("engine convnp: the caller must pass model_reader to read the model (engines open no files)")
    data = model_reader(model)
    if model_sha256 and hashlib.sha256(data).hexdigest() != model_sha256:
        raise InputError(f"--model {model}: its bytes changed since the fill was planned (sha256 differs); rerun")
    engine = ConvNPEngine(model_bytes=data, batch=batch, device=device, model_id=model_id or str(model))
    if bands is not None and bands != engine.config.bands:
        raise InputError(f"--model {model}: a {engine.config.bands}-band model, recorded as {bands}-band")
    return engine
