"""argen-tokenize caches pinned to their tokenizer; corrupt images are skipped and counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from argen.cli.common import compose_config
from argen.cli.tokenize import run as tokenize_run
from argen.cli.train import run as train_run
from argen.data.codes import CodeCacheMismatchError, CodeDataset
from tests.conftest import TINY
from tokenizers_vq.io import read_meta, save_pretrained
from tokenizers_vq.vq import VQTokenizer

TOK = {"_target_": "tokenizers_vq.vq.VQTokenizer", "image_size": 32, "codebook_size": 16, "embed_dim": 4,
       "base_channels": 8, "channel_multipliers": [1, 2, 2], "z_channels": 8, "norm_groups": 4, "attention": False}


def export_tokenizer(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = VQTokenizer(**{k: v for k, v in TOK.items() if k != "_target_"})  # type: ignore[arg-type]
    return save_pretrained(model, path, config=TOK, meta={"kind": "tokenizer", "image_size": 32})


def tokenize(tmp_path: Path, tokenizer: Path, *extra: str) -> Path:
    cfg = compose_config("tokenize", [f"tokenizer_path={tokenizer}", f"output_dir={tmp_path / 'codes'}",
                                      "data.train.size=40", "data.val.size=8", "shard_size=16", "batch_size=8",
                                      *extra])
    return tokenize_run(cfg)


def test_tokenize_roundtrip_and_mismatch(tmp_path: Path) -> None:
    tok_a = export_tokenizer(tmp_path / "tok_a", 0)
    tok_b = export_tokenizer(tmp_path / "tok_b", 1)
    out = tokenize(tmp_path, tok_a)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["count"] == 40 and len(manifest["splits"]["train"]["shards"]) == 3
    assert manifest["tokenizer"]["sha256"] == read_meta(tok_a)["sha256"]
    ds = CodeDataset(root=str(out), split="train", tokenizer_sha256=read_meta(tok_a)["sha256"])
    assert len(ds) == 40 and ds[0]["tokens"].shape == (64,)
    assert ds[3]["caption"].startswith("a photo of") and json.loads(ds[3]["metadata"])["prompt"] == ds[3]["caption"]
    # the cached codes are exactly what the tokenizer produces for those images
    from argen.data.shapes import ShapesDataset
    import argen
    images = torch.stack([ShapesDataset(split="train", size=40, image_size=32, seed=0)[i]["image"] for i in range(4)])
    assert torch.equal(argen.load(tok_a).encode(images), ds.tokens[:4])
    with pytest.raises(CodeCacheMismatchError, match="re-run argen-tokenize"):
        CodeDataset(root=str(out), split="train", tokenizer_sha256=read_meta(tok_b)["sha256"])
    with pytest.raises(FileExistsError, match="overwrite=true"):
        tokenize(tmp_path, tok_a)
    with pytest.raises(FileNotFoundError, match="argen-tokenize"):
        CodeDataset(root=str(tmp_path / "nowhere"))


def test_training_on_a_folder_with_corrupt_files_counts_skips(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(14):
        Image.new("RGB", (48, 40), (10 * i, 80, 200 - 10 * i)).save(root / f"{i:02d}.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)  # truncated PNG
    (root / "empty.jpg").write_bytes(b"")
    cfg = compose_config("train", ["experiment=shapes_vq", *[o for o in TINY if not o.startswith("data.")],
                                   f"paths.output_root={tmp_path}", "data=folder", f"data.train.root={root}",
                                   "data.num_workers=0", "data.global_batch_size=8", "trainer.max_steps=6",
                                   "callbacks.reconstruction_grid=null", "export_after_training=false"])
    with caplog.at_level("WARNING"):
        result = train_run(cfg)  # 16 files / global batch 8: 6 steps are 3 epochs
    assert result["metrics"]["train/skipped_samples"] == 2.0  # counted every epoch ...
    messages = [r.getMessage() for r in caplog.records]
    summaries = [m for m in messages if "skipped 2 unreadable" in m]
    assert len(summaries) == 1, summaries  # ... said once, not every epoch
    assert len([m for m in messages if m.startswith("skipping unreadable image")]) == 2, messages


def test_data_image_size_must_match_the_tokenizer(tmp_path: Path) -> None:
    cfg = compose_config("train", ["experiment=shapes_vq", *TINY, f"paths.output_root={tmp_path}",
                                   "data.train.image_size=64", "trainer.max_steps=2"])
    with pytest.raises(ValueError, match="tokenizer was built for 32x32"):
        train_run(cfg)
