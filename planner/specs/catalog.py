"""Preset catalogs (data files under planner/data) and loaders for `--model` / `--cluster` arguments."""

from __future__ import annotations

import json
import os
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from planner.errors import SpecError
from planner.io import load_json
from planner.specs.cluster import ClusterSpec, GPUSpec, LinkSpec
from planner.specs.hf import from_hf_config, looks_like_hf
from planner.specs.model import ModelSpec, show

LOCALHOST = "localhost-cpu"


@cache
def _data(name: str) -> dict[str, Any]:
    text = resources.files("planner.data").joinpath(name).read_text(encoding="utf-8")
    return json.loads(text)


def model_catalog() -> dict[str, dict[str, Any]]:
    """Raw preset entries, including their `published_params` reference values."""
    return _data("models.json")["models"]


def model_names() -> list[str]:
    return list(model_catalog())


def _entry(table: dict[str, Any], name: Any, what: str, field: str, known: list[str]) -> dict[str, Any]:
    entry = table.get(name) if isinstance(name, str) else None
    if entry is None:
        raise SpecError(f"unknown {what} {show(name)} (known: {', '.join(known)})", field=field)
    return entry


def model_preset(name: str) -> ModelSpec:
    entry = _entry(model_catalog(), name, "model preset", "model", model_names())
    fields = {k: v for k, v in entry.items() if not k.startswith("published")}
    return ModelSpec(name=name, **fields)


def gpu_names() -> list[str]:
    return list(_data("gpus.json")["gpus"])


def gpu_preset(name: str) -> GPUSpec:
    entry = _entry(_data("gpus.json")["gpus"], name, "GPU", "gpu", gpu_names())
    # (from_dict: a power-limited part takes what it does not state from the part its efficiencies_of names)
    return GPUSpec.from_dict({"name": name, **entry}, where=f"gpu[{name}]")


def supported_precisions(gpu: GPUSpec | str) -> tuple[str, ...]:
    """The training precisions (planner.precision recipes) a GPU can run, read from the peak FLOP/s it
    lists: fp8 needs an `fp8` peak (Hopper, Ada, Blackwell, MI300 and later), mxfp8 an `mxfp8` peak
    (block-scaled tensor cores: Blackwell, MI355X), nvfp4 an `nvfp4` peak (Blackwell)."""
    from planner.precision import PRECISIONS, supports

    spec = gpu_preset(gpu) if isinstance(gpu, str) else gpu
    return tuple(p for p in PRECISIONS if supports(spec.peak_flops, p))


def gpus_supporting(precision: str) -> list[str]:
    """Catalog GPUs that can train in `precision` (SpecError for an unknown precision)."""
    from planner.precision import PRECISIONS

    if precision not in PRECISIONS:
        raise SpecError(f"unknown precision {show(precision)} (known: {', '.join(PRECISIONS)})", field="dtype")
    return [name for name in gpu_names() if precision in supported_precisions(gpu_preset(name))]


def link_names() -> list[str]:
    return list(_data("clusters.json")["links"])


def link_preset(name: str) -> LinkSpec:
    entry = _entry(_data("clusters.json")["links"], name, "link", "link", link_names())
    return LinkSpec(name=name, **entry)


def cluster_names() -> list[str]:
    return [*_data("clusters.json")["clusters"], LOCALHOST]


def _host_memory_bytes() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def localhost_cpu() -> ClusterSpec:
    """This host's CPU cores as ranks, gloo over loopback.

    Defaults measured on the 2-core development VM (shared/research notes): ~80 GFLOP/s fp32 per
    single-threaded rank, gloo all-reduce alpha ~0.75 ms per step and ~0.8 GB/s bus bandwidth.
    `planner calibrate` replaces all of these with numbers measured on the user's machine.
    """
    cores = os.cpu_count() or 1
    mem_per_rank = _host_memory_bytes() / cores
    gpu = GPUSpec(
        name="cpu-core",
        peak_flops={"fp32": 96e9, "bf16": 96e9, "fp16": 96e9},
        memory_bytes=mem_per_rank,
        memory_bandwidth=12e9,
        gemm_efficiency=0.85,
        gemm_overhead_s=20e-6,
        memory_efficiency=0.8,
        kernel_overhead_s=10e-6,
        source="one AVX2 core: 2 FMA units x 8 fp32 lanes x 2 FLOP x ~3 GHz = 96 GFLOP/s; 65-88 GFLOP/s "
               "measured single-threaded (shared/research/torch-cpu-feasibility.md)",
    )
    loop = LinkSpec(name="loopback-gloo", bandwidth=1.0e9, latency=0.75e-3, efficiency=0.8,
                    source="gloo over loopback on the 2-vCPU VM: ~1.5 ms for a small all-reduce at W=2, "
                           "0.8 GB/s for large ones (shared/research/torch-cpu-feasibility.md)")
    return ClusterSpec(name=LOCALHOST, gpu=gpu, gpus_per_node=64, intra_node=loop, inter_node=loop,
                       compute_slots_per_node=cores, reserved_memory_bytes=0.25 * 2**30,
                       device="cpu", backend="gloo",
                       source=f"this host: {cores} CPU cores, {mem_per_rank * cores / 2**30:.1f} GiB RAM")


def cluster_preset(name: str) -> ClusterSpec:
    if name == LOCALHOST:
        return localhost_cpu()
    entry = _entry(_data("clusters.json")["clusters"], name, "cluster preset", "cluster", cluster_names())
    # link and GPU names resolve to their presets; a topology's links are derived from its graph
    return ClusterSpec.from_dict({"name": name, **entry}, where=f"cluster[{name}]")


def _is_path(arg: str, presets: list[str] | None = None, field: str = "model") -> bool:
    """Whether `arg` names a file rather than a preset. A bare preset name that is also a file or model
    folder in the working directory is refused as ambiguous instead of silently reading either."""
    try:
        p = Path(arg)
        if arg.endswith(".json") or os.sep in arg:
            return True
        is_file = p.is_file()
        local = is_file or (p / "config.json").is_file()
    except (OSError, ValueError):  # e.g. an embedded NUL byte
        return False
    if local and presets is not None and arg in presets:
        raise SpecError(f"{arg!r} is both a {field} preset and {'a file' if is_file else 'a model folder'} "
                        f"in the working directory: write ./{arg} to read it, or rename it to use the "
                        f"preset", field=field)
    return local


def _model_file(arg: str) -> tuple[Path, str]:
    """The JSON file to read for `arg` and the model's name: a file, or a Hugging Face model folder
    holding `config.json` (the name is then the folder's)."""
    p = Path(arg)
    try:
        if p.is_dir() and (p / "config.json").is_file():
            return p / "config.json", p.resolve().name or "model"
    except (OSError, ValueError):
        pass
    name = p.parent.resolve().name if p.stem == "config" else p.stem
    return p, name or "model"


def load_model(arg: str | os.PathLike[str] | ModelSpec | dict[str, Any],
               seq_len: int | None = None, packed_samples: int | None = None) -> ModelSpec:
    """A model from a preset name, a ModelSpec JSON file, a Hugging Face config.json or a folder
    holding one; at `seq_len`, and trained on rows packing samples of `packed_samples` tokens."""
    if isinstance(arg, ModelSpec):
        model = arg
    elif isinstance(arg, dict):
        model = model_from_json(arg, "model")
    elif not isinstance(arg, (str, os.PathLike)):
        raise SpecError(f"expected a preset name or a JSON file, got {type(arg).__name__}", field="model")
    elif isinstance(arg, os.PathLike) or _is_path(arg, model_names(), "model"):
        path, name = _model_file(os.fspath(arg))
        model = model_from_json(_document(path, "model"), name)
    else:
        model = model_preset(arg)
    if seq_len is not None:
        model = model.with_seq_len(seq_len)
    if packed_samples is not None:
        model = model.with_packed_samples(packed_samples)
    return model


def _document(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in `path`; another kind of file (a list, a measured result, a validation
    report; for a model also a plan) is named as such instead of as a list of unknown fields."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise SpecError(f"{path.name}: expected a JSON object (a {what} description), got "
                        f"{type(data).__name__}", field=what)
    kind = data.get("kind")
    if isinstance(kind, str) and (what == "model" or "cluster" not in data):
        raise SpecError(f"{path.name} is a {show(kind)} file, not a {what} description", field=what)
    other = "cluster" if what == "model" else "model"
    looks_like_cluster = {"gpu", "gpus_per_node"} <= data.keys()
    looks_like_model = {"num_layers", "hidden"} <= data.keys() or looks_like_hf(data)
    if (what == "model" and looks_like_cluster) or (what == "cluster" and looks_like_model):
        raise SpecError(f"{path.name} is a {other} description, not a {what} one", field=what)
    return data


def model_from_json(data: Any, name: str) -> ModelSpec:
    if looks_like_hf(data):
        return from_hf_config(data, name=name)
    if isinstance(data, dict) and "name" not in data:
        data = {"name": name, **data}
    return ModelSpec.from_dict(data, source=name)


def load_cluster(arg: str | os.PathLike[str] | ClusterSpec | dict[str, Any],
                 gpus: int | None = None) -> ClusterSpec:
    """A cluster from a preset name or a JSON profile (e.g. written by `planner calibrate`)."""
    if isinstance(arg, ClusterSpec):
        cluster = arg
    elif isinstance(arg, dict):
        cluster = ClusterSpec.from_dict(arg)
    elif not isinstance(arg, (str, os.PathLike)):
        raise SpecError(f"expected a preset name or a JSON file, got {type(arg).__name__}", field="cluster")
    elif isinstance(arg, os.PathLike) or _is_path(arg, cluster_names(), "cluster"):
        data = _document(Path(arg), "cluster")
        if "cluster" in data and "gpu" not in data:
            data = data["cluster"]  # a plan or profile wrapper
        cluster = ClusterSpec.from_dict(data, where=Path(arg).name)
    else:
        cluster = cluster_preset(arg)
    if gpus is not None:
        cluster = cluster.with_gpus(gpus)
    return cluster
