"""The cost model of docs/scale.md (benchmarks.cost_model) against a hand computation."""

from __future__ import annotations

import math

import pytest

from benchmarks.cost_model import estimate

TIMINGS = {
    "n_params": 1e8,
    "weight_bytes": 4e8,
    "n_layers": 10,
    "n_heads": 4,
    "d_head": 16,
    "capture_s_per_example": 0.5,
    "probe_s_per_example_head": 0.001,
    "sweep_s_per_row_setting": 2.0,
    "peak_bytes_capture": None,
    "peak_bytes_sweep": None,
}


def test_estimate_by_hand():
    est = estimate(
        TIMINGS,
        descendants=5,
        examples=100,
        eval_rows=10,
        workers=2,
        settings=6,
        ancestor_settings=2,
        params=2e8,
        layers=20,
        heads=8,
        d_head=32,
        dtype_bytes=2,
    )
    capture = 100 * 0.5 * 2  # twice the parameters
    probe = 100 * (20 * 8) * 0.001 * 4  # 4x the heads, (32/16)^2 per head
    row = 10 * 2.0 * 2
    ancestor, descendant = capture + probe + 2 * row, capture + probe + 6 * row
    assert est.capture_h == pytest.approx(6 * capture / 3600)
    assert est.probe_h == pytest.approx(6 * probe / 3600)
    assert est.sweep_h == pytest.approx((2 + 5 * 6) * row / 3600)
    assert est.worker_hours == pytest.approx((ancestor + 5 * descendant) / 3600)
    assert est.wall_hours == pytest.approx((ancestor + math.ceil(5 / 2) * descendant) / 3600)
    assert est.memory_gib == pytest.approx(2e8 * 2 * 1.2 / 2**30)
    assert "assumed 20 %" in est.memory_note


def test_measured_cuda_peak_sets_the_overhead():
    timings = {**TIMINGS, "peak_bytes_sweep": 6e8}  # 50 % above the weights
    est = estimate(timings, descendants=1, examples=10, eval_rows=2, workers=1)
    assert est.memory_gib == pytest.approx(4e8 * 1.5 / 2**30)
    assert "measured activation overhead 50%" in est.memory_note
