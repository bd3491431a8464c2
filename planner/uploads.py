"""Uploaded files (bytes from a browser) to validated specs, with the CLI's parser and spec loaders.

The dashboard hands the bytes of an uploaded `config.json`, ModelSpec or cluster profile here; every
problem comes back as one `PlannerError` naming the file, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from planner.errors import InputFileError, PlannerError
from planner.io import parse_json_text
from planner.specs.catalog import load_cluster, load_model, model_from_json
from planner.specs.cluster import ClusterSpec
from planner.specs.model import ModelSpec

MAX_UPLOAD_BYTES = 4 * 2**20  # matches server.maxUploadSize = 4 (MB) in .streamlit/config.toml
T = TypeVar("T")


def read_json_bytes(data: bytes, name: str) -> Any:
    """Parse uploaded JSON strictly (bounded size and depth, no NaN, no duplicate keys)."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise InputFileError(f"{name}: file is larger than {MAX_UPLOAD_BYTES // 2**20} MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return parse_json_text(text, name)


def _guarded(name: str, build: Callable[[], T]) -> T:
    """Run a spec loader; its errors (and unexpected exceptions, as InputFileError) name the file."""
    try:
        return build()
    except PlannerError as exc:
        if str(exc).startswith(name):
            raise
        raise type(exc)(f"{name}: {exc}") from None
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError) as exc:
        raise InputFileError(f"{name}: not a usable file ({type(exc).__name__}: {exc})") from None


def model_from_upload(data: bytes, name: str, seq_len: int | None = None) -> ModelSpec:
    """A model from an uploaded Hugging Face `config.json` or ModelSpec JSON."""
    obj = read_json_bytes(data, name)
    stem = Path(name).stem
    model_name = "uploaded-model" if stem in ("", "config") else stem
    return _guarded(name, lambda: load_model(model_from_json(obj, model_name), seq_len=seq_len))


def cluster_from_upload(data: bytes, name: str, gpus: int | None = None) -> ClusterSpec:
    """A cluster from an uploaded profile (`planner calibrate` output, a ClusterSpec, or a plan)."""
    obj = read_json_bytes(data, name)
    if isinstance(obj, dict) and "cluster" in obj and "gpu" not in obj:
        obj = obj["cluster"]  # a plan or profile wrapper, as the CLI accepts
    return _guarded(name, lambda: load_cluster(ClusterSpec.from_dict(obj, where=name), gpus=gpus))
