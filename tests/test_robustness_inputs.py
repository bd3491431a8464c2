"""Bad input everywhere: exit status 2 and one clear line naming the field, never a traceback.

Property tests (hypothesis, fixed budget, derandomized) drive the CLI in process (`planner.cli.main`
with capsys) with generated bad flags, model / cluster / plan / measured JSON files (wrong types,
missing or invented fields, NaN / Infinity, negative or absurd sizes, 10^30 GPUs, deep nesting, huge
files, arbitrary bytes), and the library loaders with arbitrary JSON values. tests/test_cli.py and
tests/test_specs.py hold the hand-picked cases and the library-level spec properties; this file adds
the generated CLI-level ones and checks that the one line names the field that is wrong.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.cli import main
from planner.compare import compare
from planner.cost import estimate
from planner.errors import PlannerError
from planner.io import MAX_JSON_BYTES, MAX_JSON_DEPTH, parse_json_text
from planner.plan import Plan, PlanDocument, document_from_json, plan_hash, schema
from planner.specs.catalog import cluster_preset, load_cluster, load_model, model_from_json, model_preset
from planner.specs.cluster import ClusterSpec

FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
PROBLEM = ["--cluster", "dgx-a100-80gb", "--gpus", "8", "--global-batch", "16"]
_GPT2 = (model_preset("gpt2"), cluster_preset("dgx-a100-80gb").with_gpus(8), Plan(dp=8, global_batch=16))
GPT2_DOC = PlanDocument(_GPT2[2], *_GPT2[:2], prediction=estimate(*_GPT2)).to_json()


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors exit through SystemExit(2)
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def assert_bad_input(code: int, out: str, err: str, *names: str) -> None:
    """Exit 2, nothing on stdout, exactly one line on stderr, no traceback, and it names the field."""
    assert code == 2, (code, out, err)
    assert out == "", out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert any(n in lines[0] for n in names), (names, lines[0])


# ---- command-line flags -------------------------------------------------------------------------

def _is_int(text: str) -> bool:
    try:
        int(text)  # what argparse's int-typed flags accept: also " 8", "1_000" and non-ASCII digits
    except ValueError:
        return False
    return True


not_positive_int = st.one_of(
    st.integers(max_value=0).map(str), st.sampled_from([str(10**30), str(2**41), "1e3", "8.5", "eight", "", " ",
                                                        "nan", "inf", "-inf", "0x10", "1_000_000_000_000_000"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(min_size=1, max_size=6).filter(lambda t: not _is_int(t)),
)
bad_fraction = st.one_of(st.floats(min_value=1.0), st.floats(max_value=-1e-9), st.sampled_from(["nan", "inf", "x"]))


@FUZZ
@given(flag=st.sampled_from(["--gpus", "--global-batch", "--tp", "--pp", "--dp", "--cp", "--ep", "--vpp",
                             "--micro-batch", "--seq-len"]),
       value=not_positive_int, command=st.sampled_from(["plan", "estimate"]))
def test_bad_integer_flags(capsys: pytest.CaptureFixture[str], flag: str, value: str, command: str) -> None:
    argv = [command, "--model", "gpt2", *PROBLEM]
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    code, out, err = run(argv, capsys)
    assert_bad_input(code, out, err, flag)


@FUZZ
@given(flag=st.sampled_from(["--headroom", "--max-memory-gib", "--top", "--objective", "--zero", "--recompute"]),
       value=st.one_of(bad_fraction.map(str), st.text(max_size=5), st.sampled_from(["-1", "0", "1e400", "4"])))
def test_bad_other_flags_of_plan(capsys: pytest.CaptureFixture[str], flag: str, value: str) -> None:
    ok = {"--max-memory-gib": lambda v: _float_in(v, 0, 1e12, open_lo=True),
          "--headroom": lambda v: _float_in(v, 0, 1, open_hi=True),
          "--top": lambda v: v.strip().isdigit() and int(v) >= 1,
          "--objective": lambda v: v in ("time", "throughput", "cost"),
          "--zero": lambda v: v.strip() in ("0", "1", "2", "3"),
          "--recompute": lambda v: v in ("none", "selective", "full")}
    if ok[flag](value):
        return
    code, out, err = run(["plan", "--model", "gpt2", *PROBLEM, flag, value], capsys)
    assert_bad_input(code, out, err, flag)


def _float_in(text: str, lo: float, hi: float, open_lo: bool = False, open_hi: bool = False) -> bool:
    try:
        v = float(text)
    except ValueError:
        return False
    return (lo < v if open_lo else lo <= v) and (v < hi if open_hi else v <= hi)


# ---- model JSON files ---------------------------------------------------------------------------

SMALL_MODEL = {"name": "m", "num_layers": 4, "hidden": 64, "num_heads": 4, "ffn_hidden": 256, "vocab_size": 1000,
               "seq_len": 128}
not_a_number = st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.lists(st.integers(), max_size=2),
                         st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))
wrong_type = st.one_of(not_a_number, st.sampled_from([2.5, 64.5]))  # for integer fields
# field -> strategy of values that field must refuse (each on its own; other fields stay valid)
BAD_MODEL_VALUES: dict[str, st.SearchStrategy[Any]] = {
    **{f: st.one_of(wrong_type, st.integers(max_value=0), st.sampled_from([10**30, 2**63, 10**400, -(10**30)]))
       for f in ("num_layers", "hidden", "num_heads", "ffn_hidden", "vocab_size", "seq_len")},
    **{f: st.one_of(wrong_type, st.integers(max_value=-1), st.sampled_from([10**30, 2**63]))
       for f in ("num_kv_heads", "max_position", "type_vocab_size")},
    **{f: st.one_of(st.text(max_size=8).filter(lambda s, c=choices: s not in c), st.integers(), st.none())
       for f, choices in (("activation", ("gelu", "swiglu")), ("norm", ("layernorm", "rmsnorm")),
                          ("position", ("learned", "rope")), ("dtype", ("bf16", "fp16", "fp32")),
                          ("head", ("lm", "mlm")))},
    **{f: st.one_of(st.integers(), st.text(max_size=4), st.none() if f != "qkv_bias" else st.just("yes"))
       for f in ("tied_embeddings", "bias", "causal", "pooler", "qkv_bias")},
    "dropout": st.one_of(st.floats(min_value=1.0), st.floats(max_value=-1e-6), st.text(max_size=3), st.none()),
    "capacity_factor": st.one_of(st.floats(min_value=1001), st.floats(max_value=0.0), st.sampled_from([10**400])),
}


def _write_json(path: Path, obj: Any) -> str:
    path.write_text(json.dumps(obj, allow_nan=True))
    return str(path)


@FUZZ
@given(data=st.data())
def test_bad_model_files_name_the_field(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                        data: st.DataObject) -> None:
    doc = dict(SMALL_MODEL)
    action = data.draw(st.sampled_from(["set", "set", "set", "delete", "invent", "nan"]))
    if action == "set":
        field = data.draw(st.sampled_from(sorted(BAD_MODEL_VALUES)))
        doc[field] = data.draw(BAD_MODEL_VALUES[field])
        names = [field]
        if isinstance(doc[field], float) and not math.isfinite(doc[field]):
            names.append("non-finite")  # rejected by the JSON reader before the spec sees it
    elif action == "delete":
        field = data.draw(st.sampled_from(sorted(k for k in SMALL_MODEL if k != "name")))
        del doc[field]
        names = [field]
    elif action == "invent":
        field = data.draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
                          .filter(lambda k: k not in ModelFields))
        doc[field] = 1
        names = [field]
    else:  # NaN / Infinity / 1e400 are not JSON numbers a spec can hold
        field = data.draw(st.sampled_from(["hidden", "dropout", "seq_len"]))
        doc[field] = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        names = ["NaN", "Infinity", "non-finite"]
    path = _write_json(tmp_path / "model.json", doc)
    code, out, err = run(["estimate", "--model", path, *PROBLEM, "--json"], capsys)
    assert_bad_input(code, out, err, *names)


ModelFields = set(SMALL_MODEL) | set(BAD_MODEL_VALUES) | {"source", "extra", "num_experts", "top_k", "name"}


# ---- cluster JSON files -------------------------------------------------------------------------

CLUSTER = cluster_preset("dgx-a100-80gb").to_dict()
CLUSTER_NUMBERS = [("gpu", "memory_bytes"), ("gpu", "memory_bandwidth"), ("gpu", "gemm_efficiency"),
                   ("gpu", "peak_flops", "bf16"), ("intra_node", "bandwidth"), ("intra_node", "latency"),
                   ("inter_node", "bandwidth"), ("inter_node", "efficiency"), ("reserved_memory_bytes",),
                   ("overlap_slowdown",)]
bad_number = st.one_of(not_a_number, st.sampled_from([-1, -1e-9, 10**30, 1e300, 10**400]))


@FUZZ
@given(data=st.data())
def test_bad_cluster_files_name_the_field(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                          data: st.DataObject) -> None:
    doc = copy.deepcopy(CLUSTER)
    action = data.draw(st.sampled_from(["number", "number", "count", "delete", "nan"]))
    if action in ("number", "nan"):
        path = data.draw(st.sampled_from(CLUSTER_NUMBERS))
        value = data.draw(bad_number if action == "number" else st.sampled_from([math.nan, math.inf]))
        node = doc
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
        names = [path[-1]] if action == "number" else ["NaN", "Infinity"]
    elif action == "count":  # GPUs per node / nodes: 0, negative, 10^30, wrong types
        field = data.draw(st.sampled_from(["gpus_per_node", "num_nodes"]))
        doc[field] = data.draw(st.one_of(wrong_type, st.integers(max_value=0), st.sampled_from([10**30, 10**8])))
        names = [field]
    else:
        field = data.draw(st.sampled_from(["gpu", "gpus_per_node", "intra_node", "inter_node", "name"]))
        del doc[field]
        names = [field]
    path_ = _write_json(tmp_path / "cluster.json", doc)
    code, out, err = run(["estimate", "--model", "gpt2", "--cluster", path_, "--gpus", "8",
                          "--global-batch", "16", "--json"], capsys)
    assert_bad_input(code, out, err, *names)


@FUZZ
@given(gpus=st.one_of(st.integers(min_value=10**7 + 1), st.sampled_from([10**30, 2**40])))
def test_absurd_gpu_counts(capsys: pytest.CaptureFixture[str], gpus: int) -> None:
    code, out, err = run(["plan", "--model", "gpt2", "--cluster", "dgx-h100", "--gpus", str(gpus),
                          "--global-batch", "16"], capsys)
    assert_bad_input(code, out, err, "gpus", "--gpus")


# ---- any file content: malformed, deep, huge, binary ------------------------------------------------

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                           lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=5), kids,
                                                                                       max_size=4),
                           max_leaves=20)
hostile_text = st.one_of(
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
    st.text(max_size=64),
    json_values.map(lambda v: json.dumps(v, allow_nan=True)),
    st.integers(MAX_JSON_DEPTH + 1, 5000).map(lambda n: "[" * n + "]" * n),
    st.integers(MAX_JSON_DEPTH + 1, 5000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.sampled_from(['{"a": 1, "a": 2}', "1e400", "NaN", "[Infinity]", '{"num_layers": -Infinity}', "\ufeff{}",
                     "", "null", "[]", '"gpt2"', "\x00"]),
)


@FUZZ
@given(text=hostile_text, where=st.sampled_from(["model", "cluster", "plan", "measured"]))
def test_any_file_content_is_exit_2_naming_the_file(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                    text: str, where: str) -> None:
    f = tmp_path / f"{where}-input.json"
    f.write_bytes(text.encode("utf-8", "surrogatepass"))
    plan = _write_json(tmp_path / "plan.json", GPT2_DOC)
    argv = {"model": ["estimate", "--model", str(f), *PROBLEM],
            "cluster": ["estimate", "--model", "gpt2", "--cluster", str(f), "--gpus", "8", "--global-batch", "16"],
            "plan": ["explain", str(f)],
            "measured": ["compare", plan, str(f)]}[where]
    code, out, err = run(argv, capsys)
    if code == 0:  # only a document that happens to be valid passes; then it must be a plan/model
        pytest.fail(f"accepted {text[:80]!r} as a {where}")
    assert_bad_input(code, out, err, f.name, "model", "cluster", "plan_hash", "kind", "measured", "step_time_s",
                     "status", "expected")


def test_huge_and_deep_files(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    huge = tmp_path / "huge.json"
    huge.write_text('{"name": "' + "x" * (MAX_JSON_BYTES + 10) + '"}')
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    for f, words in ((huge, "larger than"), (deep, "nested")):
        for argv in (["estimate", "--model", str(f), *PROBLEM], ["explain", str(f)]):
            code, out, err = run(argv, capsys)
            assert_bad_input(code, out, err, f.name)
            assert words in err


# ---- plan JSON ----------------------------------------------------------------------------------

REQUIRED_PLAN_KEYS = set(schema()["required"]) | set(schema()["else"]["required"])  # training plans
_bad_size = st.one_of(wrong_type, st.integers(max_value=0), st.sampled_from([10**30, 2**41, -7]))
BAD_PLAN_VALUES: dict[str, st.SearchStrategy[Any]] = {
    **dict.fromkeys(("tp", "pp", "dp", "cp", "ep", "vpp", "micro_batch", "global_batch", "seq_len", "num_gpus"),
                    _bad_size),
    "grad_accum": st.one_of(wrong_type, st.integers(max_value=0), st.integers(3, 10**6)),  # it is 2 here
    **{k: st.one_of(st.integers(), st.none(), st.text(max_size=8).filter(lambda t, c=c: t not in c))
       for k, c in (("schedule", ("1f1b", "interleaved-1f1b", "gpipe")), ("recompute", ("none", "selective", "full")),
                    ("dtype", ("bf16", "fp16", "fp32", "tf32", "fp8")), ("kind", ("plan",)))},
    **dict.fromkeys(("sequence_parallel", "flash_attention"), st.one_of(st.integers(), st.text(max_size=3),
                                                                        st.none())),
    "zero_stage": st.one_of(not_a_number, st.integers().filter(lambda z: z not in (0, 1, 2, 3))),
    "placement": st.one_of(not_a_number, st.lists(st.sampled_from(["tp", "pp", "dp", "cp", "ep"]), max_size=5)
                           .filter(lambda v: sorted(v) != ["cp", "dp", "pp", "tp"])),
    "schema_version": st.one_of(not_a_number, st.integers(max_value=0), st.integers(2, 10**30)),
    "model": st.one_of(not_a_number, st.just({})), "cluster": st.one_of(not_a_number, st.just({"gpu": "A100"})),
}
PLAN_KEYS = ["tp", "pp", "dp", "cp", "ep", "vpp", "micro_batch", "global_batch", "grad_accum", "schedule",
             "recompute", "sequence_parallel", "zero_stage", "dtype", "placement", "flash_attention",
             "schema_version", "kind", "seq_len", "num_gpus", "model", "cluster"]


@FUZZ
@given(data=st.data())
def test_bad_plan_files_name_the_field(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                       data: st.DataObject) -> None:
    doc = copy.deepcopy(GPT2_DOC)
    key = data.draw(st.sampled_from(PLAN_KEYS))
    action = data.draw(st.sampled_from(["set", "delete"]))
    if action == "delete":
        del doc[key]
    else:
        doc[key] = data.draw(BAD_PLAN_VALUES.get(key, not_a_number))
    path = _write_json(tmp_path / "plan.json", doc)
    code, out, err = run(["explain", path], capsys)
    if action == "delete" and key not in REQUIRED_PLAN_KEYS:
        assert code == 0, err  # optional keys (derived ones, knobs with defaults) may be left out
        return
    # a size that changes the product names the world size; anything else names the key
    assert_bad_input(code, out, err, key, "world_size")


@FUZZ
@given(sizes=st.tuples(*(st.integers(1, 64) for _ in range(4))))
def test_plan_sizes_must_multiply_to_the_world_size(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                    sizes: tuple[int, int, int, int]) -> None:
    tp, pp, dp, cp = sizes
    if tp * pp * dp * cp == 8:
        return
    doc = {**copy.deepcopy(GPT2_DOC), "tp": tp, "pp": pp, "dp": dp, "cp": cp}
    doc.pop("grad_accum")
    code, out, err = run(["explain", _write_json(tmp_path / "plan.json", doc)], capsys)
    assert_bad_input(code, out, err, "world_size")
    assert f"{tp}*{cp}*{dp}*{pp}" in err


# ---- measured.json (planner compare) ----------------------------------------------------------------

MEASURED = {"schema_version": 1, "kind": "measured", "status": "ok", "plan_hash": plan_hash(GPT2_DOC),
            "step_times_s": [0.5, 0.52], "losses": [4.0, 3.9],
            "step_time_s": {"median": 0.51, "p10": 0.5, "p90": 0.52, "mean": 0.51}, "tokens_per_s": 1000.0,
            "memory": {"peak_bytes": 2**33, "weights_bytes": 2**30, "grads_bytes": 2**30,
                       "optimizer_bytes": 2**31, "activations_peak_bytes": 2**31}}


@FUZZ
@given(other=st.text(alphabet="0123456789abcdef", min_size=1, max_size=16))
def test_measured_from_another_plan_is_exit_2_naming_plan_hash(capsys: pytest.CaptureFixture[str],
                                                                tmp_path: Path, other: str) -> None:
    if other == MEASURED["plan_hash"]:
        return
    plan = _write_json(tmp_path / "plan.json", GPT2_DOC)
    measured = _write_json(tmp_path / "measured.json", {**MEASURED, "plan_hash": other})
    code, out, err = run(["compare", plan, measured], capsys)
    assert_bad_input(code, out, err, "plan_hash")
    assert "measured.json" in err


MEASURED_EDITS = [("kind",), ("status",), ("plan_hash",), ("step_time_s",), ("step_time_s", "median"),
                  ("tokens_per_s",), ("memory",), ("memory", "peak_bytes"), ("step_times_s",),
                  ("time_breakdown",), ("time_breakdown", "busy_s")]


@FUZZ
@given(path=st.sampled_from(MEASURED_EDITS),
       value=st.one_of(wrong_type, st.sampled_from([-1, 0, 10**400, "ok?", "plan"])))
def test_malformed_measured_names_the_field(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                            path: tuple[str, ...], value: Any) -> None:
    doc = copy.deepcopy(MEASURED)
    node = doc
    for k in path[:-1]:
        node = node.setdefault(k, {})  # optional blocks (time_breakdown) are added to be broken
    node[path[-1]] = value
    try:
        compare(GPT2_DOC, json.loads(json.dumps(doc)))
        return  # the edit happened to be valid (e.g. status "failed" is not generated; "ok" for kind...)
    except PlannerError as exc:
        assert exc.field is not None and exc.field.split(".")[0] == path[0], (path, str(exc))
    plan = _write_json(tmp_path / "plan.json", GPT2_DOC)
    code, out, err = run(["compare", plan, _write_json(tmp_path / "measured.json", doc)], capsys)
    assert_bad_input(code, out, err, path[0])


def test_compare_reports_per_component(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    plan = _write_json(tmp_path / "plan.json", GPT2_DOC)
    measured = _write_json(tmp_path / "measured.json", MEASURED)
    code, out, err = run(["compare", plan, measured, "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    rows = {r["metric"]: r for r in result["rows"]}
    assert result["plan_hash"] == MEASURED["plan_hash"] and result["prediction_from"] == "plan"
    assert set(rows) == {"step_time_s", "tokens_per_s", "memory_gib_per_gpu", "memory.weights", "memory.grads",
                         "memory.optimizer", "memory.activations"}
    step = rows["step_time_s"]
    assert step["measured"] == 0.51 and step["error"] == pytest.approx((step["predicted"] - 0.51) / 0.51)
    assert rows["memory.weights"]["measured"] == 1.0 and rows["memory_gib_per_gpu"]["measured"] == 8.0
    # CUDA's allocator peak leaves out the runtime's reserved memory (context, NCCL): so does the prediction
    reserved = _GPT2[1].reserved_memory_bytes / 2**30
    assert reserved > 0 and rows["memory_gib_per_gpu"]["predicted"] == pytest.approx(
        GPT2_DOC["prediction"]["memory_gib_per_gpu"] - reserved)
    code, out, _ = run(["compare", plan, measured], capsys)
    assert code == 0 and "step_time_s" in out and "memory.optimizer" in out
    # the busy / waiting split of a CPU run against compute + optimizer and bubble + exposed
    split = _write_json(tmp_path / "split.json", {**MEASURED, "time_breakdown": {"busy_s": 0.4, "waiting_s": 0.11}})
    code, out, err = run(["compare", plan, split, "--json"], capsys)
    assert code == 0, err
    rows = {r["metric"]: r for r in json.loads(out)["rows"]}
    t = GPT2_DOC["prediction"]["time"]
    assert rows["time.busy"]["predicted"] == pytest.approx(t["compute"] + t["optimizer"])
    assert rows["time.waiting"]["predicted"] == pytest.approx(t["bubble"] + t["exposed"])
    assert rows["time.busy"]["measured"] == 0.4 and rows["time.waiting"]["measured"] == 0.11
    # a failed run's partial measurements still compare, with a note
    failed = _write_json(tmp_path / "failed.json", {**MEASURED, "status": "failed", "error": "rank 1 was killed"})
    code, out, _ = run(["compare", plan, failed], capsys)
    assert code == 0 and "note: the run failed: rank 1 was killed" in out


# ---- library loaders: anything in, PlannerError (or a valid object) out ---------------------------


@FUZZ
@given(value=json_values)
def test_library_loaders_raise_only_planner_errors(value: Any) -> None:
    for load in (lambda v: load_model(model_from_json(v, "m")), lambda v: load_cluster(ClusterSpec.from_dict(v)),
                 document_from_json, lambda v: compare(GPT2_DOC, v)):
        try:
            load(value)
        except PlannerError as exc:
            assert str(exc) and "\n" not in str(exc)


@FUZZ
@given(text=hostile_text)
def test_parse_json_text_raises_only_planner_errors(text: str) -> None:
    try:
        parse_json_text(text)
    except PlannerError as exc:
        assert "\n" not in str(exc)


# ---- dashboard uploads go through the CLI's loaders ---------------------------------------------------


def _load_app() -> Any:
    pytest.importorskip("streamlit")
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("dashboard_app_inputs", Path(__file__).parent.parent / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def app() -> Any:
    return _load_app()


def _outcome(load: Any) -> tuple[str, Any, str]:
    try:
        m = load()
    except PlannerError as exc:
        return "error", exc.field, str(exc)
    return "ok", {k: v for k, v in m.to_dict().items() if k != "name"}, ""


@FUZZ
@given(data=st.data())
def test_uploads_and_cli_files_agree(app: Any, tmp_path: Path, data: st.DataObject) -> None:
    """The dashboard's upload path accepts exactly what `--model FILE` accepts, naming the same field."""
    doc = dict(SMALL_MODEL)
    if data.draw(st.booleans()):
        field = data.draw(st.sampled_from(sorted(BAD_MODEL_VALUES)))
        doc[field] = data.draw(st.one_of(BAD_MODEL_VALUES[field], st.integers(0, 4096)))
    text = json.dumps(doc)
    f = tmp_path / "m.json"
    f.write_text(text)
    cli = _outcome(lambda: load_model(str(f)))
    upload = _outcome(lambda: app.model_from_upload(text.encode(), "m.json"))
    assert cli[0] == upload[0], (cli, upload)
    if cli[0] == "ok":
        assert cli[1] == upload[1]
    elif cli[1] is None:  # a file-level error (malformed JSON): the same message about the same file
        assert cli[2].endswith(upload[2]), (cli, upload)
    else:  # the same field is named (the dashboard prefixes the file name to the message)
        assert f"{cli[1]}: " in upload[2], (cli, upload)
