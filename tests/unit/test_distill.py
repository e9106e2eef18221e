"""argen-distill goes through the pipeline: a generator or sampler that needs its tokenizer (VAR's
accumulate step, LANTERN's codebook) is bound to the one the export records, and sample i of a split is
the pipeline's sample i (its own seed, whatever the batch size). Tiny untrained exports, a hand-written
code cache: seconds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from argen.cli.common import ConfigError, compose_config
from argen.cli.distill import SPLIT_SEED_OFFSET
from argen.cli.distill import run as distill_run
from argen.data.codes import CodeDataset, publish_cache, write_shard
from argen.pipeline import Pipeline
from tests.e2e.test_tokenize_and_bad_input import export_tokenizer
from tests.fixtures import RASTER_TINY, VAR_TINY, export_generator, export_msvq_tokenizer
from tokenizers_vq.io import load_pretrained, read_meta

LABELS = [2, 0, 1]  # the source cache's rows; distilled samples take them in order, cycled


def code_cache(out: Path, tokenizer: Path) -> Path:
    """A code cache of the tokenizer's layout, train and val splits of three class-labelled rows."""
    layout, tmp = load_pretrained(tokenizer).layout, out.with_name(f".{out.name}.partial")
    splits = {}
    for split in ("train", "val"):
        (tmp / split).mkdir(parents=True)
        write_shard(tmp / split, "shard_00000", {"tokens": [torch.zeros(3, layout.length, dtype=torch.long)],
                                                 "label": [torch.tensor(LABELS)], "index": [torch.tensor([7, 8, 9])],
                                                 "caption": [""] * 3, "metadata": [{}] * 3})
        splits[split] = {"shards": ["shard_00000"], "count": 3, "skipped": 0}
    record = {"path": str(tokenizer), "sha256": read_meta(tokenizer)["sha256"]}
    return publish_cache(tmp, out, tokenizer=record, layout=layout.to_dict(), preprocessing={}, splits=splits)


# generator config, tokenizer export, sampler, its options: each needs the tokenizer bound
NEEDS_TOKENIZER: dict[str, tuple[dict[str, Any], Any, str, dict[str, Any]]] = {
    "var": (VAR_TINY, export_msvq_tokenizer, "var", {}),
    "raster-lantern": (RASTER_TINY, export_tokenizer, "lantern_jacobi", {"window": 3, "lantern_k": 3}),
}


@pytest.mark.parametrize("name", sorted(NEEDS_TOKENIZER))
def test_distills_with_the_tokenizer_bound_where_the_generator_or_sampler_needs_it(name: str, tmp_path: Path) -> None:
    config, export_tok, sampler, options = NEEDS_TOKENIZER[name]
    tok = export_tok(tmp_path / "tok", 0)
    gen = export_generator(tmp_path / "gen", config, tok)
    codes = code_cache(tmp_path / "codes", tok)
    cfg = compose_config("distill", [f"generator_path={gen}", f"codes_dir={codes}", f"output_dir={tmp_path / 'out'}",
                                     "splits={train: 5, val: 2}", "batch_size=2", "shard_size=4", "device=cpu",
                                     f"sampler={sampler}", *(f"sampler.{k}={v}" for k, v in options.items())])
    out = distill_run(cfg)
    pipe = Pipeline.from_export(gen, sampler=sampler, sampler_options=options)
    for split, count in (("train", 5), ("val", 2)):
        got = CodeDataset(root=str(out), split=split, tokenizer_sha256=read_meta(tok)["sha256"])
        labels = [LABELS[i % 3] for i in range(count)]
        assert got.labels.tolist() == labels and got.indices.tolist() == [7, 8, 9, 7, 8][:count]
        alone = pipe.sample_tokens(labels, seed=SPLIT_SEED_OFFSET[split], batch_size=1).tokens
        assert torch.equal(got.tokens, alone)  # batches of 2 in shards of 4: each sample as drawn alone
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["preprocessing"]["distilled"]["sampler"] == pipe.sampler.settings()
    assert manifest["preprocessing"]["distilled"]["generator_sha256"] == read_meta(gen)["sha256"]
    assert len(manifest["splits"]["train"]["shards"]) == 2


def test_a_missing_recorded_tokenizer_is_named_and_another_folder_can_be_passed(tmp_path: Path) -> None:
    tok = export_msvq_tokenizer(tmp_path / "tok", 0)
    gen = export_generator(tmp_path / "gen", VAR_TINY, tok)
    codes = code_cache(tmp_path / "codes", tok)
    tok.rename(tmp_path / "moved")
    args = [f"generator_path={gen}", f"codes_dir={codes}", f"output_dir={tmp_path / 'out'}", "splits={train: 2}",
            "device=cpu"]
    with pytest.raises(ConfigError, match=r"is not there .*pass \+tokenizer_path="):
        distill_run(compose_config("distill", args))
    out = distill_run(compose_config("distill", [*args, f"+tokenizer_path={tmp_path / 'moved'}"]))
    assert len(CodeDataset(root=str(out), split="train")) == 2
