"""GPU check and benchmark of the DIP engine, in one call that fits a short device lease.

1. float64: M packed members vs M separately built networks on CUDA (max abs difference).
2. Cost: seconds per patch per Adam step at 256x256 for each preset, loop vs packed,
   fp32 vs bf16 autocast (channels_last and fused Adam on), eager; then torch.compile for
   the light and the paper network, with the compile time.
2b. Roofline (dipfill.engines.roofline): each cost row's achieved TFLOP/s and GB/s against
   the device's datasheet peak, from counted FLOPs/bytes of one step.
2c. Saturation: packed width raised (8, 16, 32, ...) for the light and the paper network
   in bf16 until ms/patch-step stops improving by 5 % or memory runs out; the best width
   per network is what ``--batch-size`` should be on this device.
2d. At the best width: cuDNN's autotuner on (grouped convolutions have algorithms of very
   different speed), then the packed step (forward, loss, backward, capturable Adam)
   captured once as a CUDA graph and replayed — the launch-overhead test.
3. What ``strategy="auto"`` picks for the paper network and how long measuring took.
4. Quality on the transplanted ARG25 tiles (``.gpu/cases.npz``, written from the committed
   crops by ``python scripts/gpu_check.py --prepare``): the paper configuration at 1500
   steps in fp32 and bf16, and with hold-out early stopping; per-band r² on hidden pixels.

Each section is skipped when the time budget (GPU_CHECK_BUDGET seconds) runs low. Prints a
summary and writes everything to $OUT/gpu_check.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dipfill.engines import make_engine  # noqa: E402
from dipfill.engines.dip import preset  # noqa: E402
from dipfill.engines.dipnet import pack_members  # noqa: E402
from dipfill.engines.config import padded_size  # noqa: E402
from dipfill.engines.fit import fit_members  # noqa: E402
from dipfill.engines.losses import masked_loss  # noqa: E402
from dipfill.engines.roofline import count_step, device_peak, utilisation  # noqa: E402
from dipfill.engines.strategy import Plan, _time_candidate, prepare_net, resolve_plan  # noqa: E402
from dipfill.storage import JsonFileCache, default_strategy_cache_path  # noqa: E402
from dipfill.eval.metrics import r2  # noqa: E402

CASES = REPO / ".gpu" / "cases.npz"
T0 = time.time()
BUDGET = float(os.environ.get("GPU_CHECK_BUDGET", "420"))
SIZE = int(os.environ.get("GPU_CHECK_SIZE", "256"))  # patch side; CPU dry runs use 64
MEMBERS = int(os.environ.get("GPU_CHECK_MEMBERS", "8"))  # packed width of the cost table
WIDTHS = [int(w) for w in os.environ.get("GPU_CHECK_WIDTHS", "8,16,32,64,128").split(",")]
results: dict = {}


def left() -> float:
    return BUDGET - (time.time() - T0)


def save() -> None:
    out = Path(os.environ.get("OUT", "/tmp"))
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))


def prepare() -> None:
    from tests._data import arg25_transplant

    arrays = {}
    for name, reverse in (("feb_truth", False), ("jan_truth", True)):
        t = arg25_transplant(reverse=reverse)
        for k in ("truth", "values", "observed", "hidden"):
            arrays[f"{name}_{k}"] = getattr(t, k)
    CASES.parent.mkdir(exist_ok=True)
    np.savez_compressed(CASES, **arrays)


def float64_equivalence(dev: torch.device) -> float:
    cfg = preset("landsat2020", channels_down=(16,) * 4, channels_up=(16,) * 4, channels_skip=(4,) * 4,
                 input_channels=8, steps=5, reg_noise_std=0.05)
    seeds = [3, 4, 5, 6]
    g = torch.Generator().manual_seed(0)
    z = (torch.rand((4, 8, 64, 64), generator=g, dtype=torch.float64) * 0.1).to(dev)
    target = torch.rand((4, 3, 64, 64), generator=g, dtype=torch.float64).to(dev)
    mask = (torch.rand((4, 3, 64, 64), generator=g) > 0.3).double().to(dev)
    packed = pack_members(cfg, 3, seeds).double().to(dev)
    fit_members(cfg, packed, z, target, mask, None, [torch.Generator(device=dev).manual_seed(s) for s in seeds])
    worst = 0.0
    out = packed(z)
    for j, s in enumerate(seeds):
        net = pack_members(cfg, 3, [s]).double().to(dev)
        fit_members(cfg, net, z[j : j + 1], target[j : j + 1], mask[j : j + 1], None,
                    [torch.Generator(device=dev).manual_seed(s)])
        worst = max(worst, float((out[j] - net(z[j : j + 1])[0]).detach().abs().max()))
    return worst


def cost(dev: torch.device, members: int) -> None:
    rows = results.setdefault("seconds_per_patch_step", {})
    for name in ("mcpn-core", "ndvi2024", "sar2023", "landsat2020"):
        for bf16 in (False, True):
            if left() < 60:
                return
            base = Plan("loop", False, bf16, channels_last=True, fused_adam=True)
            cfg = preset(name)
            key = f"{name} {'bf16' if bf16 else 'fp32'}"
            rows[key] = {
                "loop": _time_candidate(cfg, dev, (3, SIZE, SIZE), members, base, "loop", False),
                f"packed{members}": _time_candidate(cfg, dev, (3, SIZE, SIZE), members, base, "packed", False),
            }
            print(key, {k: round(v * 1000, 2) for k, v in rows[key].items()}, "ms", flush=True)
            roof = results.setdefault("roofline", {})[key] = {k: roofline(name, v, dev, bf16) for k, v in rows[key].items()}
            print("  roofline", roof, flush=True)
            save()
    for name in ("mcpn-core", "landsat2020"):
        for strategy in ("loop", "packed"):
            if left() < 150:
                return
            base = Plan("loop", False, True, channels_last=True, fused_adam=True)
            start = time.time()
            t = _time_candidate(preset(name), dev, (3, SIZE, SIZE), members, base, strategy, True)
            rows[f"{name} bf16 compiled {strategy}"] = {"s_per_patch_step": t, "compile_and_measure_s": time.time() - start}
            print(name, "compiled", strategy, round(t * 1000, 2), "ms/patch-step; compile+measure",
                  round(time.time() - start, 1), "s", flush=True)
            save()


def roofline(name: str, seconds: float, dev: torch.device, bf16: bool) -> dict:
    """Achieved rates of a measured step, and fractions of the device's datasheet peak."""
    peak = device_peak(results["device"]) if dev.type == "cuda" else None
    cost = count_step(preset(name), (3, SIZE, SIZE), bf16=bf16)
    return {k: round(v, 4) for k, v in utilisation(cost, seconds, peak, bf16=bf16).items()}


def saturation(dev: torch.device) -> dict[str, int]:
    """Packed width raised until ms/patch-step stops improving (5 %) or memory runs out."""
    rows = results.setdefault("saturation", {})
    best: dict[str, int] = {}
    for name in ("mcpn-core", "landsat2020"):
        base = Plan("loop", False, dev.type == "cuda", channels_last=dev.type == "cuda", fused_adam=dev.type == "cuda")
        previous = None
        for width in WIDTHS:
            if left() < 90:
                return best
            try:
                t = _time_candidate(preset(name), dev, (3, SIZE, SIZE), width, base, "packed", False)
            except torch.OutOfMemoryError:
                rows[f"{name} x{width}"] = "out of memory"
                print(name, "x", width, "out of memory", flush=True)
                break
            finally:
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            rows[f"{name} x{width}"] = {"s_per_patch_step": t, "roofline": roofline(name, t, dev, base.bf16)}
            print(name, "packed x", width, round(t * 1000, 3), "ms/patch-step", rows[f"{name} x{width}"]["roofline"],
                  flush=True)
            save()
            if previous is not None and t > 0.95 * previous[1]:
                break
            previous = (width, t) if previous is None or t < previous[1] else previous
        best[name] = previous[0] if previous else WIDTHS[0]
    results["best_width"] = best
    return best


def graphed_seconds(name: str, dev: torch.device, members: int, steps: int = 20) -> float:
    """Seconds per patch-step of the packed step captured in one CUDA graph and replayed.

    The whole step — forward, masked loss, backward, Adam (``capturable=True``) — is one
    graph, so one replay is one launch; the per-step input noise is written into the
    graph's static input outside it, as the engine draws it."""
    cfg = preset(name)
    ph = pw = padded_size(SIZE, cfg.depth)
    net = prepare_net(pack_members(cfg, 3, range(members)), dev, Plan("packed", False, True, True, True))
    gen = torch.Generator().manual_seed(0)
    z = (torch.rand((members, cfg.net_input_channels, ph, pw), generator=gen) * 0.1).to(dev)
    target = torch.rand((members, 3, ph, pw), generator=gen).to(dev)
    mask = (torch.rand((members, 3, ph, pw), generator=gen) > 0.3).float().to(dev)
    static_in = z.clone()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, capturable=True)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
            out = net(static_in)
        masked_loss(cfg.loss, out.float(), target, mask).sum().backward()
        opt.step()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph (allocator, cuDNN choices)
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        step()
    noise = torch.Generator(device=dev).manual_seed(1)
    torch.cuda.synchronize(dev)
    start = time.perf_counter()
    for _ in range(steps):
        static_in.copy_(z + cfg.reg_noise_std * torch.randn(z.shape, generator=noise, device=dev))
        graph.replay()
    torch.cuda.synchronize(dev)
    return (time.perf_counter() - start) / (steps * members)


def graphs(dev: torch.device, best: dict[str, int]) -> None:
    """At each network's best width: eager with cuDNN's autotuner (``cudnn.benchmark``:
    grouped convolutions have several algorithms of very different speed), then the step
    as one CUDA graph (with the autotuner still on)."""
    rows = results.setdefault("cuda_graphs", {})
    for name, width in best.items():
        if left() < 90:
            return
        torch.backends.cudnn.benchmark = True
        base = Plan("loop", False, True, channels_last=True, fused_adam=True)
        t = _time_candidate(preset(name), dev, (3, SIZE, SIZE), width, base, "packed", False)
        rows[f"{name} x{width} eager cudnn.benchmark"] = {"s_per_patch_step": t, "roofline": roofline(name, t, dev, True)}
        print(name, "x", width, "eager, cudnn.benchmark", round(t * 1000, 3), "ms/patch-step", flush=True)
        try:
            t = graphed_seconds(name, dev, width)
        except Exception as exc:  # noqa: BLE001 - a capture failure is a result to report
            rows[f"{name} x{width}"] = f"capture failed: {type(exc).__name__}: {exc}"[:300]
        else:
            eager = results["saturation"][f"{name} x{width}"]["s_per_patch_step"]
            rows[f"{name} x{width}"] = {"s_per_patch_step": t, "eager_s_per_patch_step": eager, "speedup": eager / t,
                                        "roofline": roofline(name, t, dev, True)}
        print(name, "cuda graph", rows[f"{name} x{width}"], flush=True)
        save()


def quality(dev: torch.device) -> None:
    data = np.load(CASES)
    cases = {n: {k: data[f"{n}_{k}"] for k in ("truth", "values", "observed", "hidden")}
             for n in ("feb_truth", "jan_truth")}
    variants = [
        ("landsat2020 fp32 1500", dict(precision="fp32")),
        ("landsat2020 bf16 1500", dict(precision="bf16")),
        ("landsat2020 bf16 holdout", dict(precision="bf16", stopping="holdout")),
        ("mcpn-core bf16 1500 reg0.03", dict(preset="mcpn-core", precision="bf16", reg_noise_std=0.03)),
        ("ndvi2024 bf16 (holdout)", dict(preset="ndvi2024", precision="bf16")),
    ]
    only = os.environ.get("GPU_CHECK_VARIANTS")
    if only:
        variants = [v for v in variants if v[0] in only.split(";")]
    seeds = [0, 1]
    q = results.setdefault("quality_r2", {})
    for label, opts in variants:
        if left() < 80:
            return
        if os.environ.get("GPU_CHECK_STEPS"):  # CPU dry runs of this script
            opts = {**opts, "steps": int(os.environ["GPU_CHECK_STEPS"])}
        eng = make_engine("dip", device=dev.type, strategy="packed", compile="off", **opts)
        vals = np.stack([c["values"] for c in cases.values() for _ in seeds])
        obs = np.stack([c["observed"] for c in cases.values() for _ in seeds])
        start = time.time()
        res = eng.fill(vals, obs, seeds=seeds * len(cases))
        wall = time.time() - start
        entry = {"wall_s": wall}
        for i, (name, c) in enumerate((n, c) for n, c in cases.items() for _ in seeds):
            score = r2(c["truth"], res.values[i], c["hidden"])
            entry.setdefault(name, []).append({"r2": np.round(score, 4).tolist(), "steps": res.diagnostics[i].steps,
                                               "best_step": res.diagnostics[i].extra["best_step"]})
        q[label] = entry
        print(label, f"{wall:.1f}s", {n: [(e["r2"], e["steps"]) for e in entry[n]] for n in cases}, flush=True)
        save()


def main() -> None:
    if "--prepare" in sys.argv:
        prepare()
        return
    dev = torch.device(os.environ.get("GPU_CHECK_DEVICE", "cuda"))
    results["device"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    results["torch"] = torch.__version__
    print(results, flush=True)
    results["float64_max_abs_diff"] = float64_equivalence(dev)
    print("float64 packed vs separate max abs diff", results["float64_max_abs_diff"], flush=True)
    save()
    if "--quality-first" in sys.argv:
        quality(dev)
        cost(dev, MEMBERS)
    elif not os.environ.get("GPU_CHECK_SKIP_COST"):
        cost(dev, MEMBERS)
        best = saturation(dev)
        if dev.type == "cuda":
            graphs(dev, best)
        quality(dev)
    else:
        quality(dev)
    if left() > 60:
        start = time.time()
        plan = resolve_plan(preset("landsat2020", compile="off"), dev, (3, 256, 256), 8,
                            cache=JsonFileCache(default_strategy_cache_path()))
        results["auto_plan_landsat2020_8"] = {"plan": plan.__dict__, "measure_s": time.time() - start}
        print("auto plan", results["auto_plan_landsat2020_8"], flush=True)
    save()
    print("total", round(time.time() - T0, 1), "s")


if __name__ == "__main__":
    main()
