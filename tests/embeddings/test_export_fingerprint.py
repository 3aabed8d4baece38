"""The ONNX export's name: the model's contents, not where it is installed."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from embeddings.onnx_export import model_fingerprint


def _model(root: Path) -> Path:
    (root / "1_Pooling").mkdir(parents=True)
    (root / "config.json").write_text('{"hidden_size": 8}')
    (root / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (root / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    return root


def test_a_copy_elsewhere_with_new_mtimes_reuses_the_export(tmp_path):
    a = _model(tmp_path / "venv-a" / "model")
    b = tmp_path / "venv-b" / "model"
    shutil.copytree(a, b)
    os.utime(b / "model.safetensors", (1, 1))
    assert model_fingerprint(a) == model_fingerprint(b)


def test_changed_weights_or_a_renamed_file_get_a_new_export(tmp_path):
    a = _model(tmp_path / "m")
    before = model_fingerprint(a)
    data = bytearray((a / "model.safetensors").read_bytes())
    data[100] ^= 1
    (a / "model.safetensors").write_bytes(bytes(data))
    changed = model_fingerprint(a)
    assert changed != before
    (a / "config.json").rename(a / "config2.json")
    assert model_fingerprint(a) not in (before, changed)
