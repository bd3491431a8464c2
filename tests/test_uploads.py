"""Uploaded files to specs (planner.uploads): hostile bytes become one PlannerError naming the file,
and Hugging Face configs give the same model as the CLI's loader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from planner import uploads
from planner.errors import PlannerError
from planner.specs.catalog import load_cluster, load_model
from planner.specs.model import ModelSpec

HF = Path(__file__).resolve().parent / "fixtures" / "hf"


HOSTILE: list[tuple[str, bytes, str]] = [
    ("binary", b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8"),
    ("truncated", b'{"model_type": "llama", "hidden_size": ', "malformed JSON"),
    ("nan", b'{"model_type": "llama", "hidden_size": NaN}', "malformed JSON"),
    ("huge-number", b'{"model_type": "llama", "hidden_size": 1e400}', "out of the float range"),
    ("duplicate", b'{"a": 1, "a": 2}', "duplicate key"),
    ("deep", b"[" * 100 + b"]" * 100, "nested"),
    ("list", b"[1, 2, 3]", "expected a JSON object"),
    ("oversize", b" " * (4 * 2**20 + 1), "larger than 4 MiB"),
]


@pytest.mark.parametrize(("case", "data", "message"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_model_uploads_raise_planner_errors(case: str, data: bytes, message: str) -> None:
    with pytest.raises(PlannerError, match=message):
        uploads.model_from_upload(data, f"{case}.json")


@pytest.mark.parametrize(("data", "message"), [
    (b'{"model_type": "llama", "hidden_size": "big", "num_attention_heads": 32, "num_hidden_layers": 2,'
     b' "intermediate_size": 11008, "vocab_size": 32000}', "hidden_size"),
    (b'{"model_type": "llama"}', r"config\.json: (num_attention_heads|num_hidden_layers): missing"),
    (b'{"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 7, "num_hidden_layers": 2,'
     b' "intermediate_size": 11008, "vocab_size": 32000}', "divisible"),
    (b'{"name": "x", "num_layers": 2}', "missing required field"),
    (b'{"architectures": ["Foo"], "model_type": "unknown-arch"}', "unknown-arch"),
])
def test_invalid_model_configs_name_the_problem(data: bytes, message: str) -> None:
    with pytest.raises(PlannerError, match=message):
        uploads.model_from_upload(data, "config.json")


def test_hf_configs_upload_like_the_cli() -> None:
    def fields(m: ModelSpec) -> dict[str, Any]:
        return {k: v for k, v in m.to_dict().items() if k not in ("name", "source")}

    for path in sorted(HF.glob("*.json")):
        uploaded = uploads.model_from_upload(path.read_bytes(), "config.json")
        assert uploaded.name == "uploaded-model"
        assert fields(uploaded) == fields(load_model(str(path)))
    named = uploads.model_from_upload((HF / "gpt2.json").read_bytes(), "gpt2.json", seq_len=512)
    assert named.name == "gpt2" and named.seq_len == 512


def test_cluster_uploads() -> None:
    preset = load_cluster("dgx-a100-80gb")
    data = json.dumps(preset.to_dict()).encode()
    assert uploads.cluster_from_upload(data, "profile.json", gpus=16) == load_cluster("dgx-a100-80gb", gpus=16)
    wrapped = json.dumps({"cluster": preset.to_dict(), "kind": "profile"}).encode()
    assert uploads.cluster_from_upload(wrapped, "wrapped.json").gpu == preset.gpu
    for bad, message in ((b'{"name": "x"}', "missing required field"),
                         (json.dumps({**preset.to_dict(), "gpus_per_node": -1}).encode(), "gpus_per_node"),
                         (b"null", "expected a JSON object")):
        with pytest.raises(PlannerError, match=message):
            uploads.cluster_from_upload(bad, "bad.json")
    with pytest.raises(PlannerError, match="not a whole number"):
        uploads.cluster_from_upload(data, "profile.json", gpus=12)
