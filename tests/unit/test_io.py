"""Export folders: bit-exact round trip, strict loading, refused untrusted targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import argen
from tokenizers_vq.io import load_pretrained, save_pretrained
from tokenizers_vq.vq import VQTokenizer

CONFIG = {"_target_": "tokenizers_vq.vq.VQTokenizer", "image_size": 16, "codebook_size": 32, "embed_dim": 4,
          "base_channels": 8, "channel_multipliers": [1, 2], "z_channels": 8, "norm_groups": 4}


def make() -> VQTokenizer:
    args = {k: v for k, v in CONFIG.items() if k != "_target_"}
    return VQTokenizer(**args)  # type: ignore[arg-type]


def test_roundtrip_is_bit_exact(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = make().eval()
    out = save_pretrained(model, tmp_path / "exp", config=CONFIG, meta={"kind": "tokenizer"})
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "meta.json", "model.safetensors"]
    meta = json.loads((out / "meta.json").read_text())
    assert len(meta["sha256"]) == 64 and meta["kind"] == "tokenizer"
    loaded = argen.load(out)
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(model.encode(x), loaded.encode(x))
    # a lone weights file carries its config in the safetensors header
    (out / "config.yaml").unlink()
    assert isinstance(load_pretrained(out / "model.safetensors"), VQTokenizer)


def test_export_refuses_overwrite(tmp_path: Path) -> None:
    save_pretrained(make(), tmp_path / "e", config=CONFIG)
    with pytest.raises(FileExistsError, match="overwrite"):
        save_pretrained(make(), tmp_path / "e", config=CONFIG)
    save_pretrained(make(), tmp_path / "e", config=CONFIG, overwrite=True)


def test_strict_loading_reports_mismatch(tmp_path: Path) -> None:
    out = save_pretrained(make(), tmp_path / "e", config=CONFIG)
    cfg = dict(CONFIG, attention=False)  # drops the attention blocks -> unexpected keys
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(RuntimeError, match="unexpected keys"):
        argen.load(out)


def test_untrusted_target_is_refused(tmp_path: Path) -> None:
    out = save_pretrained(make(), tmp_path / "e", config=CONFIG)
    (out / "config.yaml").write_text(yaml.safe_dump({"_target_": "os.system", "command": "echo pwned"}))
    with pytest.raises(ValueError, match="untrusted _target_"):
        argen.load(out)


def test_missing_export_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="argen-export"):
        argen.load(tmp_path / "nope")
