"""scripts/bench_sampling.py: the quick run writes the documented schema and merges into an existing file."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
TOP_KEYS = {"kv_step_cost_ratio", "matmul_peak_gflops", "achieved_gflops", "flop_utilization", "runs"}
RUN_KEYS = {"generator", "sampler", "batch", "forward_passes_per_image", "images_per_s", "tokens_per_s",
            "family", "cfg_scale", "tokens_per_image", "seconds_per_image", "wall_s", "device", "dtype",
            "parameters", "flops_per_image", "achieved_gflops"}


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_sampling", REPO / "scripts" / "bench_sampling.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_sampling", module)
    spec.loader.exec_module(module)
    return module


def test_quick_run_schema_and_merge(tmp_path: Path) -> None:
    bench = load_script()
    foreign = {"generator": "raster_tiny", "family": "raster", "tokens_per_image": 64, "sampler": "speculative",
               "window": 4, "batch": 8, "device": "cpu", "dtype": "fp32", "cfg_scale": 1.0,
               "forward_passes_per_image": 20, "images_per_s": 1.0, "tokens_per_s": 64.0}
    stale = {k: v for k, v in foreign.items() if k != "window"}
    stale.update(sampler="ancestral", images_per_s=-1.0)  # re-measured by the run: replaced
    (tmp_path / "sampling.json").write_text(json.dumps({"runs": [foreign, stale], "other_top": 1}))

    bench.main(["--out", str(tmp_path), "--quick"])

    report = json.loads((tmp_path / "sampling.json").read_text())
    assert (tmp_path / "sampling.png").stat().st_size > 0
    assert TOP_KEYS <= report.keys() and report["other_top"] == 1
    assert report["kv_step_cost_ratio"] > 0
    assert report["matmul_peak_gflops"] > 0 and report["achieved_gflops"] > 0
    assert abs(report["flop_utilization"] - report["achieved_gflops"] / report["matmul_peak_gflops"]) < 1e-9
    assert len(report["kv_step_probe"]["step_ms"]) == 64
    runs = report["runs"]
    assert foreign in runs
    assert stale not in runs
    ours = [r for r in runs if r["sampler"] == "ancestral"]
    assert sorted((r["batch"], r["cfg_scale"]) for r in ours) == [(1, 1.0), (8, 1.0), (8, 4.0)]
    cfg = next(r for r in ours if r["cfg_scale"] != 1.0)
    assert cfg["rows_per_pass"] == 16 and cfg["flops_per_image"] == 2 * ours[0]["flops_per_image"]
    for r in ours:
        assert RUN_KEYS <= r.keys()
        assert r["forward_passes_per_image"] == r["tokens_per_image"] == 64
        assert r["images_per_s"] > 0 and r["tokens_per_s"] == r["images_per_s"] * 64


def test_merge_runs_replaces_same_identity_only() -> None:
    bench = load_script()
    old = [{"generator": "g", "sampler": "s", "batch": 1, "k": 2, "v": 0},
           {"generator": "g", "sampler": "s", "batch": 1, "k": 3, "v": 0}]
    new = [{"generator": "g", "sampler": "s", "batch": 1, "k": 2, "v": 1}]
    assert bench.merge_runs(old, new) == [old[1], new[0]]
