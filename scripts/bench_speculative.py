"""Trained-model sampler sweep of ``scripts/bench_sampling.py --trained EXPORT``: speed and quality
of ancestral sampling, SJD, LANTERN-Jacobi and drafter speculative decoding (exact / LANTERN) on one
exported shapes generator, through ``argen-sample`` itself.

Per sampler setting (``--sweep``):
- ShapesEval at batch 1: the shapes prompt suite (``--suite-per-tag`` prompts per task x
  ``--n-per-prompt`` images), judged by the exact shapes judge -> ``shapes_overall`` (+ 95% CI),
  and the batch-1 speed figures;
- ``fd_shapes`` at batch ``--fd-batch``: one image per caption of the first ``--fd-prompts``
  ShapesDataset test scenes (0 skips it), against the shapes feature network ``--feature-net``,
  and the speed figures at that batch.
Seeds are argen-sample's (sample i gets hash(seed, i)), so every setting sees the same prompts and
seeds. One ``runs`` record per (setting, batch) carries both quality figures (``quality_batches``
says where each was measured), ``forward_passes_per_image`` (target passes; the drafter's own
passes are not counted), ``accepted_per_pass`` (tokens decided per target pass), wall
``seconds_per_image`` and ``images_per_s`` of the sampler alone (argen-sample's ``sampler_seconds``
and ``sampler_images_per_s``), and the speed-ups over the ancestral record of the same batch. A
second figure, ``speculative.png``, plots quality against speed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# sweep names -> argen-sample sampler configs and their knobs (k / delta are LANTERN's)
KNOBS = {"window": "window", "draft_len": "draft_len", "draft": "draft", "k": "lantern_k", "delta": "lantern_delta",
         "init": "init"}
SAMPLERS = ("ancestral", "sjd", "lantern_jacobi", "speculative", "speculative_lantern")
DEFAULT_SWEEP = ("ancestral; sjd:window=5; sjd:window=9; sjd:window=17; sjd:window=33; "
                 "lantern_jacobi:window=17,k=50,delta=0.1; lantern_jacobi:window=17,k=1000,delta=0.1; "
                 "speculative:draft_len=4; speculative_lantern:draft_len=4,k=50,delta=0.05; "
                 "speculative_lantern:draft_len=4,k=50,delta=0.1; speculative_lantern:draft_len=4,k=1000,delta=0.1")


def parse_sweep(text: str) -> list[dict[str, Any]]:
    """``"sjd:window=5; speculative:draft_len=4,k=50"`` -> [{"sampler": "sjd", "window": 5}, ...]."""
    settings = []
    for item in (part.strip() for part in text.split(";")):
        if not item:
            continue
        name, _, rest = item.partition(":")
        name = name.strip()
        if name not in SAMPLERS:
            raise SystemExit(f"unknown sampler {name!r} in --sweep; choose from {SAMPLERS}")
        setting: dict[str, Any] = {"sampler": name}
        for pair in filter(None, (p.strip() for p in rest.split(","))):
            key, _, value = pair.partition("=")
            if key not in KNOBS:
                raise SystemExit(f"unknown knob {key!r} in --sweep item {item!r}; choose from {sorted(KNOBS)}")
            setting[key] = value if key in ("draft", "init") else (float(value) if key == "delta" else int(value))
        settings.append(setting)
    return settings


def overrides(setting: dict[str, Any], cfg_scale: float, drafter: str | None, cache: Path) -> list[str]:
    """argen-sample overrides of one sweep setting."""
    out = [f"sampler={setting['sampler']}", f"sampler.cfg_scale={cfg_scale}"]
    out += [f"sampler.{KNOBS[k]}={v}" for k, v in setting.items() if k in KNOBS]
    if setting["sampler"].startswith("speculative"):
        if not drafter:
            raise SystemExit(f"{setting['sampler']} needs --drafter <exported drafter>")
        out.append(f"sampler.drafter={drafter}")
    if "lantern" in setting["sampler"]:
        out.append(f"sampler.neighbours_cache={cache}")
    return out


def label(setting: dict[str, Any]) -> str:
    knobs = ",".join(f"{k}={v}" for k, v in setting.items() if k != "sampler")
    return setting["sampler"] + (f"[{knobs}]" if knobs else "")


def folder_name(setting: dict[str, Any]) -> str:
    return label(setting).replace("[", "_").replace("]", "").replace(",", "_").replace("=", "")


def write_fd_prompts(path: Path, count: int) -> Path:
    """The captions of the first ``count`` ShapesDataset test scenes (fd_shapes' reference split)."""
    from argen.data.shapes import ShapesDataset

    data = ShapesDataset(split="test", size=count, image_size=32, seed=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(data.scene(i).prompt for i in range(count)) + "\n")
    return path


def sample_once(generator: str, out: Path, extra: list[str], reuse: bool = True) -> dict[str, Any]:
    """argen-sample into ``out``; a finished run there with exactly this config is reused (a killed
    sweep resumes where it stopped), unless ``reuse`` is False."""
    from argen.cli.common import compose_config, to_plain
    from argen.cli.sample import run as sample_run

    cfg = compose_config("sample", [f"generator_path={generator}", f"output_dir={out}", "overwrite=true",
                                    "save_images=false", *extra])
    done = out / "settings.json"
    if reuse and done.is_file():
        written = json.loads(done.read_text())
        evaluated = "evaluation" in written or not cfg.get("eval")  # settings.json precedes the evaluation
        if evaluated and written.get("config") == json.loads(json.dumps(to_plain(cfg), default=str)):
            return written
    return sample_run(cfg)


def record(setting: dict[str, Any], written: dict[str, Any], batch: int, meta: dict[str, Any]) -> dict[str, Any]:
    """One ``runs`` record from argen-sample's settings.json of a run at ``batch``."""
    s, stats = written["sampler"], written["stats"]
    images = written["num_images"]
    window = s.get("window")
    return {
        "generator": meta["name"], "family": "raster", "trained": meta["path"], "generator_sha256": meta["sha256"],
        "tokens_per_image": meta["tokens"], "grid": meta["grid"], "sampler": s["sampler"], "batch": batch,
        "device": meta["device"], "dtype": meta["dtype"], "threads": meta["threads"], "cfg_scale": s["cfg_scale"],
        "cfg_schedule": s["cfg_schedule"], "temperature": s["temperature"], "top_k": s["top_k"], "top_p": s["top_p"],
        "window": window, "drafts_per_pass": None if window is None else window - 1, "draft": s.get("draft"),
        "k": s.get("k"), "delta": s.get("delta"), "init": s.get("init"),
        "forward_passes_per_image": stats["forward_passes_per_image"], "accepted_per_pass": stats["tokens_per_pass"],
        "images": images, "seconds_per_image": stats["sampler_seconds"] / images,
        "images_per_s": stats["sampler_images_per_s"], "tokens_per_s": stats["sampler_images_per_s"] * meta["tokens"],
        "max_tvd": stats.get("max_tvd"), "wall_s": stats["sampler_seconds"],
        "drafter": (written["config"].get("sampler") or {}).get("drafter"),
    }


def quality(suite: dict[str, Any] | None, fd: dict[str, Any] | None, suite_batch: int,
            fd_batch: int) -> dict[str, Any]:
    q: dict[str, Any] = {"quality_batches": {}}
    if suite is not None:
        ev = suite["evaluation"]
        q.update(shapes_overall=ev["overall"], shapes_overall_ci95=[ev["ci_low"], ev["ci_high"]],
                 shapes_task_scores=ev["task_scores"], shapes_images=ev["n_images"])
        q["quality_batches"]["shapes_overall"] = suite_batch
    if fd is not None:
        ev = fd["evaluation"]
        q.update(fd_shapes=ev["fd"], fd_shapes_ci95=ev["fd_ci95"], fd_shapes_floor=ev["floor"]["fd"],
                 fd_images=ev["num_fake"])
        q["quality_batches"]["fd_shapes"] = fd_batch
    return q


def fill_ratios(runs: list[dict[str, Any]]) -> None:
    """``passes_vs_ancestral`` / ``time_vs_ancestral``: how many times fewer target passes / less wall
    time per image than the ancestral record of the same trained generator, batch and cfg."""
    for r in runs:
        if not r.get("trained"):
            continue
        base = next((a for a in runs if a.get("trained") == r["trained"] and a["sampler"] == "ancestral"
                     and a["batch"] == r["batch"] and a.get("cfg_scale") == r.get("cfg_scale")
                     and a.get("generator_sha256") == r.get("generator_sha256")), None)
        if base is None:
            r.update(passes_vs_ancestral=None, time_vs_ancestral=None)
            continue
        r.update(passes_vs_ancestral=base["forward_passes_per_image"] / r["forward_passes_per_image"],
                 time_vs_ancestral=base["seconds_per_image"] / r["seconds_per_image"])


def run_trained(args: Any, on_record: Any, save: Any) -> list[dict[str, Any]]:
    """Every sweep setting: ShapesEval at batch 1 and fd_shapes at ``args.fd_batch``; ``save(runs)``
    after each setting, so a crash loses nothing measured."""
    import torch
    from tqdm.auto import tqdm

    from tokenizers_vq.io import read_meta

    export = Path(args.trained)
    gen_meta = read_meta(export)
    layout = gen_meta.get("layout") or {}
    h, w = layout.get("shapes", [[0, 0]])[0]
    meta = {"name": gen_meta.get("name") or export.parent.name, "path": str(export), "sha256": gen_meta.get("sha256"),
            "tokens": h * w, "grid": f"{h}x{w}", "device": args.device, "dtype": args.dtype,
            "threads": torch.get_num_threads()}
    dtype = {"fp32": "float32", "bf16": "bfloat16"}[args.dtype]
    common = [f"device={args.device}", f"dtype={dtype}", f"seed={args.seed}"]
    samples = args.out / "samples"
    fd_prompts = None
    if args.fd_prompts:
        fd_prompts = write_fd_prompts(samples / f"fd_prompts_{args.fd_prompts}.txt", args.fd_prompts)
    runs = []
    sweep = parse_sweep(args.sweep or DEFAULT_SWEEP)
    for setting in tqdm(sweep, desc="sampler settings", unit="setting"):
        extra = overrides(setting, args.cfg_scale_trained, args.drafter, args.out / "neighbours") + common
        name = folder_name(setting)
        suite = sample_once(str(export), samples / f"{name}_suite",
                            [*extra, "suite=shapes", f"suite_per_tag={args.suite_per_tag}",
                             f"n_per_condition={args.n_per_prompt}", "eval=shapes", "batch_size=1"], args.reuse)
        fd = None
        if fd_prompts is not None:
            fd = sample_once(str(export), samples / f"{name}_fd",
                             [*extra, f"prompt_file={fd_prompts}", "n_per_condition=1", "eval=fd_shapes",
                              f"eval.extractor.path={args.feature_net}", f"batch_size={args.fd_batch}"],
                             args.reuse)
        q = quality(suite, fd, 1, args.fd_batch)
        for written, batch in ((suite, 1), (fd, args.fd_batch)):
            if written is not None:
                r = {**record(setting, written, batch, meta), **q}
                r["setting"] = label(setting) + (f" @{Path(r['drafter']).parent.name}" if r["drafter"] else "")
                runs.append(r)
                on_record(r)
        save(runs)
    fill_ratios(runs)
    return runs


def plot_quality(runs: list[dict[str, Any]], path: Path) -> None:
    """ShapesEval overall (95% CI) vs target forward passes per image at batch 1, and fd_shapes vs wall
    seconds per image at the fd batch, one marker per sampler family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    trained = [r for r in runs if r.get("trained")]
    if not trained:
        return
    markers = {"ancestral": "o", "sjd": "s", "lantern_jacobi": "D", "speculative": "^", "speculative_lantern": "v"}
    settings = list(dict.fromkeys(r["setting"] for r in trained))
    cmap = plt.get_cmap("tab20")
    colour = {name: cmap(i % 20) for i, name in enumerate(settings)}
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5 + 0.16 * len(settings)))
    panels = ((axes[0], "shapes_overall", lambda r: r["forward_passes_per_image"],
               "target forward passes per image (batch 1)", "ShapesEval overall (95% CI)"),
              (axes[1], "fd_shapes", lambda r: r["seconds_per_image"],
               "wall seconds per image (fd batch)", "fd_shapes (95% CI; lower is better)"))
    handles: dict[str, Any] = {}
    for ax, key, x_of, xlabel, ylabel in panels:
        for r in trained:
            if r.get(key) is None or r["batch"] != r.get("quality_batches", {}).get(key):
                continue
            ci = r.get(f"{key}_ci95") or [r[key], r[key]]
            handles[r["setting"]] = ax.errorbar([x_of(r)], [r[key]], yerr=[[r[key] - ci[0]], [ci[1] - r[key]]],
                                                marker=markers.get(r["sampler"], "x"), color=colour[r["setting"]],
                                                capsize=3, label=r["setting"])
        ax.set(xscale="log", xlabel=xlabel, ylabel=ylabel)
        for formatter in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
            formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.grid(True, which="both", alpha=0.3)
        if not ax.get_legend_handles_labels()[0]:
            ax.text(0.5, 0.5, f"{key} not measured", ha="center", va="center", transform=ax.transAxes)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=2, fontsize=7, frameon=False)
    name = trained[0]["generator"]
    fig.suptitle(f"{name}: speed vs quality (cfg {trained[0]['cfg_scale']}, {trained[0]['device']})")
    fig.tight_layout(rect=(0, 0.09 * len(settings) / 8 if len(settings) > 2 else 0.1, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_lines(runs: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in runs:
        if not r.get("trained"):
            continue
        lines.append(json.dumps({k: r.get(k) for k in ("setting", "batch", "forward_passes_per_image",
                                                       "accepted_per_pass", "seconds_per_image", "shapes_overall",
                                                       "fd_shapes", "max_tvd", "passes_vs_ancestral",
                                                       "time_vs_ancestral")}))
    return lines
