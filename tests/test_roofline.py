"""Counted work of a DIP step (dipfill.engines.roofline): what the GPU check's utilisation
figures rest on, so the counting itself is checked here on small networks (no device)."""

import pytest

from dipfill.engines.dip import preset
from dipfill.engines.roofline import count_step, device_peak, utilisation

SMALL = dict(channels_down=(8,) * 3, channels_up=(8,) * 3, channels_skip=(4,) * 3, input_channels=8)


@pytest.fixture(scope="module")
def costs():
    cfg = preset("landsat2020", **SMALL)
    return {size: count_step(cfg, (3, size, size)) for size in (64, 128)} | {
        "bf16": count_step(cfg, (3, 64, 64), bf16=True)}


def test_convolution_flops_scale_with_pixels_and_adam_with_parameters(costs):
    small, big = costs[64], costs[128]
    assert small.params == big.params > 0
    conv_small, conv_big = small.flops - 10 * small.params, big.flops - 10 * big.params
    assert conv_small > 0 and conv_big == pytest.approx(4 * conv_small, rel=1e-9)
    # activations dominate traffic: 4x the pixels, close to 4x the bytes (parameters fixed)
    assert 3.5 < big.bytes / small.bytes < 4.0
    assert big.operators == small.operators > 50  # the eager step's kernel launches


def test_bf16_halves_activation_traffic_not_adam(costs):
    fp32, bf16 = costs[64], costs["bf16"]
    assert bf16.flops == fp32.flops
    assert fp32.bytes / 2 < bf16.bytes < fp32.bytes


def test_utilisation_against_the_roofline(costs):
    cost = costs[128]
    peak = device_peak("NVIDIA H200")
    assert peak.name == "H200" and device_peak("NVIDIA H100 80GB HBM3").name == "H100"
    assert device_peak("Tesla T4") is None
    at_floor = utilisation(cost, 1.0, peak, bf16=True)["floor_ms"] / 1e3
    u = utilisation(cost, at_floor, peak, bf16=True)
    bound = "fraction_of_flops_peak" if u["bound"] else "fraction_of_bandwidth"
    assert u[bound] == pytest.approx(1.0)  # a step at the floor uses all of its wall
    slow = utilisation(cost, 10 * at_floor, peak, bf16=True)
    assert slow[bound] == pytest.approx(0.1) and slow["tflops"] == pytest.approx(u["tflops"] / 10)
    assert set(utilisation(cost, 1.0)) == {"tflops", "gbytes_per_s"}  # unknown device: rates only
