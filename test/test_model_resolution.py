"""The node's `model` parameter: 'tiny', a folder, or a model bundled under models/."""
from __future__ import annotations

import pytest

from autoprune_ros.paths import resolve_model, share_dir


def test_tiny_and_folders_pass_through(tmp_path):
    assert resolve_model("tiny") == "tiny"
    assert resolve_model(str(tmp_path)) == str(tmp_path)


def test_bundled_names_resolve_under_models():
    bundled = sorted(p for p in (share_dir() / "models").iterdir() if p.is_dir())
    if not bundled:
        pytest.skip("no bundled model folder")
    assert resolve_model(bundled[0].name) == str(bundled[0])


def test_unknown_model_names_the_choices(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a folder nor a bundled model"):
        resolve_model("no_such_model")
    with pytest.raises(FileNotFoundError, match="neither a folder"):
        resolve_model(str(tmp_path / "missing" / "dir"))
