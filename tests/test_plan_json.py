"""The plan JSON contract: round trips, the shipped schema, hostile documents, atomic saving."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from planner.cost import estimate
from planner.errors import InputFileError, PlanError, PlannerError, SpecError
from planner.io import dumps, parse_json_text
from planner.plan import (
    SCHEMA_VERSION,
    Plan,
    PlanDocument,
    document_from_json,
    load_plan,
    plan_hash,
    save_plan,
    schema,
    validate_document,
)
from planner.specs.catalog import cluster_preset, model_preset

GPT2 = model_preset("gpt2")
DGX8 = cluster_preset("dgx-a100-80gb").with_gpus(8)
PLAN = Plan(tp=2, dp=4, micro_batch=2, global_batch=16)

DOCS = [
    ("gpt2", 8, PLAN),
    ("gpt2", 8, Plan(tp=2, pp=2, dp=2, vpp=3, micro_batch=1, global_batch=16, schedule="interleaved-1f1b",
                     recompute="selective", sequence_parallel=True, zero_stage=1,
                     placement=("dp", "tp", "cp", "pp"))),
    ("mixtral-8x7b", 32, Plan(tp=2, pp=2, dp=8, ep=4, micro_batch=1, global_batch=32, zero_stage=3,
                              recompute="full", flash_attention=False)),
    ("llama3-8b", 16, Plan(tp=2, cp=2, dp=4, global_batch=8, schedule="gpipe", dtype="fp16")),
    ("tiny", 1, Plan(global_batch=4, dtype="fp32")),
]


def document(name: str = "gpt2", n: int = 8, plan: Plan = PLAN, predict: bool = True) -> PlanDocument:
    m, c = model_preset(name), cluster_preset("dgx-a100-80gb").with_gpus(n)
    return PlanDocument(plan=plan, model=m, cluster=c, prediction=estimate(m, c, plan) if predict else None)


@pytest.fixture
def doc() -> dict[str, Any]:
    return document().to_json()


def plan_error(d: Any) -> PlanError:
    with pytest.raises(PlanError) as err:
        document_from_json(d)
    return err.value


def names(err: PlannerError, field: str) -> bool:
    """The error names `field` in its `field` attribute and in its single-line message."""
    return field in (err.field or "") and field in str(err) and "\n" not in str(err)


# ---- round trip -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "n", "plan"), DOCS, ids=[f"{d[0]}-{d[2].describe()}" for d in DOCS])
@pytest.mark.parametrize("predict", [True, False])
def test_round_trip(name: str, n: int, plan: Plan, predict: bool) -> None:
    original = document(name, n, plan, predict)
    data = original.to_json()
    validate_document(data)
    back = document_from_json(data)
    assert back.plan == original.plan
    assert back.model == original.model
    assert back.cluster == original.cluster
    assert back.prediction == original.prediction
    assert back.to_json() == data
    # through JSON text, as a file would carry it
    again = document_from_json(parse_json_text(dumps(data)))
    assert again.to_json() == data and again.hash == original.hash


def test_document_layout(doc: dict[str, Any]) -> None:
    """The contract keys: versioned, sizes at the top level, model and cluster embedded."""
    assert doc["schema_version"] == SCHEMA_VERSION and doc["kind"] == "plan"
    for key in ("tp", "pp", "dp", "cp", "ep", "vpp", "micro_batch", "global_batch", "grad_accum", "schedule",
                "recompute", "sequence_parallel", "zero_stage", "dtype", "placement", "model", "cluster",
                "prediction", "seq_len", "num_gpus"):
        assert key in doc, key
    assert doc["grad_accum"] == 16 // (4 * 2) and doc["num_gpus"] == 8 and doc["seq_len"] == 1024
    assert doc["model"]["name"] == "gpt2" and doc["cluster"]["gpu"]["name"] == "A100-SXM4-80GB"
    jsonschema.Draft202012Validator.check_schema(schema())
    jsonschema.Draft202012Validator(schema()).validate(doc)


def test_hash_ignores_the_prediction_and_sees_the_plan(doc: dict[str, Any]) -> None:
    h = plan_hash(doc)
    assert len(h) == 16 and int(h, 16) >= 0
    other = copy.deepcopy(doc)
    other["prediction"]["step_time_s"] *= 2
    other["simulation"] = {"step_time_s": 1.0}
    assert plan_hash(other) == h
    other["zero_stage"] = 1
    assert plan_hash(other) != h


def test_extras_survive_and_unknown_top_level_keys_are_refused(doc: dict[str, Any]) -> None:
    """A misspelt key ("zero": 3 for zero_stage) used to load silently as ZeRO-0: now it is named."""
    doc["name"] = "my plan"
    doc["simulation"] = {"step_time_s": 1.25}
    back = document_from_json(doc)
    assert back.extra == {"name": "my plan", "simulation": {"step_time_s": 1.25}}
    for key, value in (("zero", 3), ("micro_batch_size", 4), ("comment", "x")):
        err = plan_error({**doc, key: value})
        assert repr(key) in str(err) and "\n" not in str(err)


# ---- hostile documents ------------------------------------------------------------------------

REQUIRED = ["schema_version", "kind", "tp", "pp", "dp", "cp", "ep", "vpp", "micro_batch", "global_batch",
            "schedule", "recompute", "sequence_parallel", "zero_stage", "dtype", "placement", "model",
            "cluster"]


@pytest.mark.parametrize("key", REQUIRED)
def test_missing_key(doc: dict[str, Any], key: str) -> None:
    del doc[key]
    err = plan_error(doc)
    assert repr(key) in str(err) and "required" in str(err) and "\n" not in str(err)


@pytest.mark.parametrize(("path", "key"), [("model", "hidden"), ("model", "num_layers"), ("cluster", "gpu"),
                                           ("prediction", "step_time_s"), ("prediction", "memory")])
def test_missing_nested_key(doc: dict[str, Any], path: str, key: str) -> None:
    del doc[path][key]
    err = plan_error(doc)
    assert names(err, path) and repr(key) in str(err)


WRONG = [
    ("tp", "2"), ("tp", 2.5), ("tp", True), ("tp", None), ("tp", 0), ("tp", -2), ("pp", [1]), ("dp", {}),
    ("micro_batch", "two"), ("global_batch", 0), ("schedule", "zigzag"), ("recompute", "all"),
    ("sequence_parallel", 1), ("sequence_parallel", "true"), ("zero_stage", 4), ("zero_stage", True),
    ("dtype", "int8"), ("placement", ["tp", "tp", "dp", "pp"]), ("placement", ["tp", "dp", "pp"]),
    ("placement", "tp,cp,dp,pp"), ("schema_version", "1"), ("schema_version", 1.5), ("schema_version", 0),
    ("kind", "cluster"), ("model", "gpt2"), ("cluster", []), ("name", 5), ("simulation", []),
    ("num_gpus", "8"), ("seq_len", -1), ("grad_accum", 0),
]


@pytest.mark.parametrize(("key", "value"), WRONG, ids=[f"{k}={v!r}" for k, v in WRONG])
def test_wrong_type_or_value(doc: dict[str, Any], key: str, value: Any) -> None:
    doc[key] = value
    assert names(plan_error(doc), key)


@pytest.mark.parametrize(("path", "value"), [
    (("model", "hidden"), "768"), (("model", "num_heads"), 0), (("cluster", "gpus_per_node"), 8.5),
    (("prediction", "fits"), "yes"), (("prediction", "step_time_s"), 0),
    (("prediction", "time", "bubble"), -1.0), (("prediction", "memory", "weights"), "1"),
])
def test_wrong_nested_value(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = doc
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    assert names(plan_error(doc), ".".join(path))


def test_integral_float_size_is_rejected_by_plan(doc: dict[str, Any]) -> None:
    doc["tp"] = 2.0  # JSON Schema counts 2.0 as an integer; Plan does not
    assert names(plan_error(doc), "tp")


def test_absurd_size(doc: dict[str, Any]) -> None:
    doc["dp"] = 10**30
    assert names(plan_error(doc), "dp")


def test_world_size_must_match_the_cluster(doc: dict[str, Any]) -> None:
    """tp*pp*dp*cp != num_gpus: a user who edits one size hears about the world size, not about
    the grad_accum the file still carries."""
    doc["dp"] = 2
    err = plan_error(doc)
    assert names(err, "world_size") and "8 GPUs" in str(err)
    doc["grad_accum"] = 4  # consistent again with dp 2
    assert names(plan_error(doc), "world_size")


def test_derived_fields_must_agree(doc: dict[str, Any]) -> None:
    for key, value in (("num_gpus", 16), ("seq_len", 512), ("grad_accum", 3)):
        bad = copy.deepcopy(doc)
        bad[key] = value
        assert names(plan_error(bad), key)


@pytest.mark.parametrize(("key", "value", "field"), [
    ("tp", 3, "tp"),  # 12 heads, but tp 3 x dp 4 != 8 GPUs: the world size is checked first
    ("sequence_parallel", True, "sequence_parallel"),
    ("ep", 2, "ep"),
    ("vpp", 2, "schedule"),
    ("schedule", "interleaved-1f1b", "schedule"),
])
def test_illegal_plan_names_the_rule(doc: dict[str, Any], key: str, value: Any, field: str) -> None:
    doc.update({"tp": 1, "dp": 8, "micro_batch": 2, "grad_accum": 1})
    doc[key] = value
    err = plan_error(doc)
    if key == "tp":
        assert names(err, "world_size")
    else:
        assert names(err, field)


def test_schema_version_from_the_future(doc: dict[str, Any]) -> None:
    doc["schema_version"] = SCHEMA_VERSION + 1
    err = plan_error(doc)
    assert names(err, "schema_version") and "upgrade" in str(err)


@pytest.mark.parametrize("path", [("tp",), ("prediction", "step_time_s"), ("prediction", "mfu"),
                                  ("prediction", "time", "compute"), ("prediction", "memory", "other"),
                                  ("simulation", "step_time_s")])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers(doc: dict[str, Any], path: tuple[str, ...], value: float) -> None:
    doc["simulation"] = {"step_time_s": 1.0}
    node = doc
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    assert names(plan_error(doc), ".".join(path))


@pytest.mark.parametrize(("path", "value"), [(("model", "dropout"), float("nan")),
                                             (("model", "bogus"), 1),
                                             (("cluster", "gpu"), "H100")])
def test_bad_embedded_specs_name_their_field(doc: dict[str, Any], path: tuple[str, str], value: Any) -> None:
    doc[path[0]][path[1]] = value
    with pytest.raises(PlannerError) as err:
        document_from_json(doc)
    assert isinstance(err.value, (PlanError, SpecError))
    assert path[1] in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("value", [None, 42, "plan", [], [1, 2]])
def test_not_an_object(value: Any) -> None:
    assert names(plan_error(value), "(top level)")


# ---- files ------------------------------------------------------------------------------------


def test_save_and_load(tmp_path: Path) -> None:
    d = document()
    path = save_plan(tmp_path / "sub" / "plan.json", d)
    assert path.exists() and sorted(p.name for p in path.parent.iterdir()) == ["plan.json"]
    assert load_plan(path).to_json() == d.to_json()
    # the `--json` array form: the first element is the plan
    arr = tmp_path / "plans.json"
    arr.write_text(json.dumps([d.to_json(), document(plan=Plan(dp=8, global_batch=16)).to_json()]))
    assert load_plan(arr).plan == d.plan


@pytest.mark.parametrize(("text", "cls"), [
    ("{", InputFileError), ('{"tp": NaN}', InputFileError), ('{"tp": 1e400}', InputFileError),
    ('{"tp": 1, "tp": 2}', InputFileError), ("[]", PlanError), ("", InputFileError),
    ("\x00\x01", InputFileError), ('"plan"', PlanError),
])
def test_malformed_files(tmp_path: Path, text: str, cls: type) -> None:
    path = tmp_path / "plan.json"
    path.write_text(text)
    with pytest.raises(cls) as err:
        load_plan(path)
    assert "\n" not in str(err.value)
    if cls is InputFileError:
        assert "plan.json" in str(err.value)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(InputFileError):
        load_plan(tmp_path / "nope.json")
    with pytest.raises(InputFileError):
        load_plan(tmp_path)  # a directory
    with pytest.raises(InputFileError):
        load_plan("bad\x00name.json")


def test_save_is_atomic_when_the_document_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    save_plan(path, document())
    before = path.read_bytes()
    bad = document()
    bad.prediction["step_time_s"] = float("nan")
    with pytest.raises(PlanError):
        save_plan(path, bad)
    bad = document()
    bad.prediction["time"]["compute"] = -1.0
    with pytest.raises(PlanError):
        save_plan(path, bad)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


def test_save_is_atomic_when_serialisation_fails(tmp_path: Path) -> None:
    """A value the schema accepts but JSON cannot carry fails before the file is touched."""
    path = tmp_path / "plan.json"
    save_plan(path, document())
    before = path.read_bytes()
    bad = document()
    bad.extra["simulation"] = {"step_time_s": 1.0, "trace": object()}
    with pytest.raises(TypeError):
        save_plan(path, bad)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


def test_save_is_atomic_when_the_rename_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "plan.json"
    save_plan(path, document())
    before = path.read_bytes()

    def boom(src: Any, dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_plan(path, document(plan=Plan(dp=8, global_batch=16)))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]
