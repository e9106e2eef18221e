"""scripts/bench_sampling.py: the quick run (raster tiny8 + VAR var8 + NAR nar8) writes the documented schema, merges
into an existing file and computes VAR's speedup over the raster run of the same final grid."""

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
VAR_KEYS = RUN_KEYS | {"preset", "grid", "scales", "speedup_vs_raster", "raster_images_per_s", "raster_counterpart"}
VAR16 = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]
SAME_RUN = {"sampler": "ancestral", "batch": 8, "device": "cpu", "dtype": "fp32", "cfg_scale": 1.0,
            "cfg_schedule": "constant", "threads": 1}


def raster_record(tokens: int, images_per_s: float, **kw: object) -> dict[str, object]:
    side = int(tokens**0.5)
    return {"generator": "raster_tiny", "family": "raster", "grid": f"{side}x{side}", "tokens_per_image": tokens,
            **SAME_RUN, "forward_passes_per_image": tokens, "images_per_s": images_per_s, **kw}


def var_record(scales: list[int], images_per_s: float, **kw: object) -> dict[str, object]:
    return {"generator": "var", "family": "var", "preset": "var_tiny", "grid": f"{scales[-1]}x{scales[-1]}",
            "scales": scales, "tokens_per_image": sum(s * s for s in scales), **SAME_RUN,
            "forward_passes_per_image": len(scales), "images_per_s": images_per_s, "speedup_vs_raster": None, **kw}


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
    threads = {"threads": bench.torch.get_num_threads()}  # what the quick run records
    # An earlier invocation's 16x16 pair (not re-measured: kept, and its speedup computed from the merged
    # raster record) and a stale var8 record (same identity as a run of the quick set: replaced).
    old_var16 = var_record(VAR16, 6.0, **threads)
    old_tiny16 = raster_record(256, 2.0, **threads)
    stale_var8 = var_record([1, 2, 3, 4, 6, 8], -1.0, **threads)
    (tmp_path / "sampling.json").write_text(json.dumps({"runs": [foreign, stale, old_var16, old_tiny16, stale_var8],
                                                        "other_top": 1}))

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
    ours = [r for r in runs if r["sampler"] == "ancestral" and r["family"] == "raster" and r["grid"] == "8x8"]
    assert sorted((r["batch"], r["cfg_scale"]) for r in ours) == [(1, 1.0), (8, 1.0), (8, 4.0)]
    cfg = next(r for r in ours if r["cfg_scale"] != 1.0)
    assert cfg["rows_per_pass"] == 16 and cfg["flops_per_image"] == 2 * ours[0]["flops_per_image"]
    for r in ours:
        assert RUN_KEYS <= r.keys()
        assert r["forward_passes_per_image"] == r["tokens_per_image"] == 64
        assert r["images_per_s"] > 0 and r["tokens_per_s"] == r["images_per_s"] * 64

    # VAR var8: 6 scales (6 passes per image), 130 pyramid tokens, speedup over raster_tiny 8x8 of this run.
    var8 = [r for r in runs if r["family"] == "var" and r["grid"] == "8x8"]
    assert sorted((r["batch"], r["cfg_scale"]) for r in var8) == [(1, 1.0), (8, 1.0), (8, 4.0)]
    assert all(r["images_per_s"] > 0 for r in var8)  # the stale -1 record is gone
    for r in var8:
        raster = next(o for o in ours if (o["batch"], o["cfg_scale"]) == (r["batch"], r["cfg_scale"]))
        assert VAR_KEYS <= r.keys()
        assert r["generator"] == "var" and r["preset"] == "var_tiny" and r["scales"] == [1, 2, 3, 4, 6, 8]
        assert r["forward_passes_per_image"] == 6 and r["tokens_per_image"] == 130
        assert abs(r["tokens_per_s"] - r["images_per_s"] * 130) < 1e-9 * r["tokens_per_s"]
        assert isinstance(r["speedup_vs_raster"], float) and r["speedup_vs_raster"] > 0
        assert abs(r["speedup_vs_raster"] - r["images_per_s"] / raster["images_per_s"]) < 1e-9
        assert r["raster_counterpart"] == "raster_tiny 8x8"
    var_cfg = next(r for r in var8 if r["cfg_scale"] != 1.0)
    assert var_cfg["flops_per_image"] == 2 * var8[0]["flops_per_image"] > 0
    # var16 from the earlier invocation is kept apart from var8 and gets its speedup from merged records.
    var16 = [r for r in runs if r["family"] == "var" and r["grid"] == "16x16"]
    assert len(var16) == 1 and var16[0]["forward_passes_per_image"] == 10 and var16[0]["speedup_vs_raster"] == 3.0
    assert old_tiny16 in runs
    assert not any("speedup_vs_raster is null" in n for n in report["notes"])

    # NAR nar8: 15 anti-diagonals (passes) for 64 tokens, speedup over raster_tiny 8x8 of this run.
    nar8 = [r for r in runs if r["family"] == "nar" and r["grid"] == "8x8"]
    assert sorted((r["batch"], r["cfg_scale"]) for r in nar8) == [(1, 1.0), (8, 1.0), (8, 4.0)]
    for r in nar8:
        raster = next(o for o in ours if (o["batch"], o["cfg_scale"]) == (r["batch"], r["cfg_scale"]))
        assert r["generator"] == "nar" and r["preset"] == "nar_tiny"
        assert r["forward_passes_per_image"] == 15 and r["tokens_per_image"] == 64
        assert abs(r["speedup_vs_raster"] - r["images_per_s"] / raster["images_per_s"]) < 1e-9
        assert r["raster_counterpart"] == "raster_tiny 8x8"
        assert r["flops_per_image"] > ours[0]["flops_per_image"]  # one more block and a second head


def test_merge_runs_replaces_same_identity_only() -> None:
    bench = load_script()
    old = [{"generator": "g", "sampler": "s", "batch": 1, "k": 2, "v": 0},
           {"generator": "g", "sampler": "s", "batch": 1, "k": 3, "v": 0}]
    new = [{"generator": "g", "sampler": "s", "batch": 1, "k": 2, "v": 1}]
    assert bench.merge_runs(old, new) == [old[1], new[0]]


def test_speedup_needs_a_matching_raster_run() -> None:
    bench = load_script()
    runs = [raster_record(64, 4.0), raster_record(64, 1.0, batch=64),
            var_record([1, 2, 3, 4, 6, 8], 10.0), var_record([1, 2, 3, 4, 6, 8], 9.0, batch=64, threads=2),
            var_record(VAR16, 5.0)]
    notes = bench.fill_speedups(runs)
    assert runs[2]["speedup_vs_raster"] == 2.5 and runs[2]["raster_images_per_s"] == 4.0
    assert runs[3]["speedup_vs_raster"] is None  # other CPU threads than the raster run
    assert runs[4]["speedup_vs_raster"] is None  # no raster 16x16 run
    assert len(notes) == 1 and "var_tiny 8x8 batch 64" in notes[0] and "var_tiny 16x16 batch 8" in notes[0]
    # var8 and var16 (and raster) records of one batch are distinct identities: merging keeps them all.
    assert bench.merge_runs(runs, [var_record(VAR16, 7.0)])[-2:] == [runs[3], var_record(VAR16, 7.0)]
    assert len({bench.identity(r) for r in runs}) == len(runs)


def test_select_defaults() -> None:
    bench = load_script()

    def names(argv: list[str]) -> list[str]:
        return [s.name for s in bench.select(bench.parse_args(["--out", "x", *argv]))[0]]

    assert names(["--quick"]) == ["tiny8", "var8", "nar8"]
    assert names([]) == ["tiny8", "tiny16", "gpt_b", "var8", "var16", "nar8", "nar16", "nar_b"]
    assert names(["--generators", "var,tiny16"]) == ["var8", "var16", "tiny16"]


def test_token_shuffle_records_carry_the_window_positions_and_speedup(tmp_path: Path) -> None:
    """Token-Shuffle s = 2 and s = 4 against raster_nano at 16x16 (64 px): L / s^2 trunk positions = passes, a
    training-step time, and the speed-up over raster of this run."""
    bench = load_script()
    bench.main(["--out", str(tmp_path), "--generators", "nano64,ts64_s2,ts64_s4", "--batches", "2", "--cfg-batch", "0",
                "--repeats", "1", "--kv-repeats", "1", "--matmul-budget", "0.2", "--train-batch", "2"])
    runs = json.loads((tmp_path / "sampling.json").read_text())["runs"]
    raster = next(r for r in runs if r["family"] == "raster")
    assert raster["generator"] == "raster_nano" and raster["forward_passes_per_image"] == 256
    for s in (2, 4):
        r = next(r for r in runs if r["family"] == "token_shuffle" and r["s"] == s)
        assert r["generator"] == "token_shuffle" and r["grid"] == "16x16" and r["px"] == 64
        assert r["trunk_positions_per_image"] == r["forward_passes_per_image"] == 256 // (s * s)
        assert r["tokens_per_image"] == 256 and r["train_step_s"] > 0 and r["train_batch"] == 2
        assert r["speedup_vs_raster"] == r["images_per_s"] / raster["images_per_s"]
        assert r["raster_counterpart"] == "raster_nano 16x16"
    assert (tmp_path / "token_shuffle.png").stat().st_size > 0


def test_xar_records_carry_the_entity_and_ar_steps_times_flow_steps(tmp_path: Path) -> None:
    """xAR on the 8x8x4 latent grid: cell and scale entities are 4 AR steps, image 1; passes = AR steps x (flow
    steps + 1 commit pass), doubled rows under CFG; a per-pass step time and model FLOPs that grow with them."""
    bench = load_script()
    bench.main(["--out", str(tmp_path), "--generators", "xar8_cell,xar8_scale,xar8_image", "--batches", "1,2",
                "--cfg-batch", "2", "--flow-steps", "3", "--repeats", "1", "--matmul-budget", "0.2"])
    runs = json.loads((tmp_path / "sampling.json").read_text())["runs"]
    xar = [r for r in runs if r["family"] == "xar"]
    assert {(r["entity"], r["batch"], r["cfg_scale"]) for r in xar} == {
        (e, b, c) for e in ("cell", "scale", "image") for b, c in ((1, 1.0), (2, 1.0), (2, 4.0))}
    for r in xar:
        steps = {"cell": 4, "scale": 4, "image": 1}[r["entity"]]
        assert r["generator"] == "xar" and r["preset"] == "xar_nano" and r["grid"] == "8x8"
        assert r["ar_steps"] == steps and r["flow_steps"] == 3 and r["forward_passes_per_image"] == steps * 4
        assert r["sampler"] == "flow" and r["images_per_s"] > 0 and r["step_ms"] > 0
        assert r["rows_per_pass"] == r["batch"] * (2 if r["cfg_scale"] != 1.0 else 1)
    cell = {(r["batch"], r["cfg_scale"]): r["flops_per_image"] for r in xar if r["entity"] == "cell"}
    assert cell[(2, 4.0)] == 2 * cell[(2, 1.0)] > 0  # CFG doubles the rows
    image = next(r for r in xar if r["entity"] == "image" and r["cfg_scale"] == 1.0)
    assert image["flops_per_image"] > cell[(1, 1.0)]  # one entity attends over all 64 tokens: more attention
    assert (tmp_path / "sampling.png").stat().st_size > 0
