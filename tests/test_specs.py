"""Bad specs fail with one clear typed error that names the offending field; hostile inputs never
escape as anything else (property tests with hypothesis)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.errors import InputFileError, PlannerError, SpecError
from planner.io import MAX_JSON_DEPTH, load_json, parse_json_text
from planner.specs.catalog import cluster_preset, gpu_preset, load_cluster, load_model, model_preset
from planner.specs.cluster import ClusterSpec, GPUSpec, LinkSpec
from planner.specs.hf import IGNORED, from_hf_config
from planner.specs.model import ModelSpec

HF = Path(__file__).parent / "fixtures" / "hf"
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

BASE: dict[str, Any] = {"name": "m", "num_layers": 2, "hidden": 64, "num_heads": 4, "ffn_hidden": 256,
                        "vocab_size": 1000, "seq_len": 128}
SIZES = ("num_layers", "hidden", "num_heads", "ffn_hidden", "vocab_size", "seq_len")


def spec_error(fn: Any, *args: Any, **kwargs: Any) -> SpecError:
    """Call fn and return the SpecError it raises (fails on success or on any other exception)."""
    with pytest.raises(SpecError) as err:
        fn(*args, **kwargs)
    return err.value


def names(err: PlannerError, field: str) -> bool:
    """The error names `field`: in its `field` attribute and in its one-line message."""
    return field in (err.field or "") and field in str(err) and "\n" not in str(err)


def model(**overrides: Any) -> ModelSpec:
    return ModelSpec(**{**BASE, **overrides})


# ---- ModelSpec ------------------------------------------------------------------------------


def test_base_is_valid() -> None:
    m = model()
    assert (m.num_kv_heads, m.max_position, m.qkv_bias, m.head_dim) == (4, 128, True, 16)


def test_hidden_not_divisible_by_heads() -> None:
    err = spec_error(model, hidden=100, num_heads=3)
    assert names(err, "hidden") and "num_heads" in str(err)


@pytest.mark.parametrize(("heads", "kv"), [(8, 3), (8, 16), (12, 5), (4, -1)])
def test_kv_heads_must_divide_heads(heads: int, kv: int) -> None:
    assert names(spec_error(model, num_heads=heads, num_kv_heads=kv, hidden=768), "num_kv_heads")


def test_gqa_and_mqa_are_valid() -> None:
    assert model(num_heads=8, num_kv_heads=2).kv_hidden == 16
    assert model(num_heads=8, num_kv_heads=1).kv_hidden == 8


@pytest.mark.parametrize("field", SIZES)
@pytest.mark.parametrize("value", [0, -1, -(10**30), True, False, 64.0, 1.5, "64", None, [64], 10**30,
                                   float("nan"), float("inf")])
def test_bad_sizes(field: str, value: Any) -> None:
    assert names(spec_error(model, **{field: value}), field)


@pytest.mark.parametrize("field", ["num_kv_heads", "max_position", "num_experts", "top_k", "type_vocab_size"])
@pytest.mark.parametrize("value", [-1, True, 2.0, "2", 10**30])
def test_bad_optional_sizes(field: str, value: Any) -> None:
    assert names(spec_error(model, **{field: value}), field)


def test_absurd_size_message_stays_short() -> None:
    err = spec_error(model, num_layers=10**5000)
    assert names(err, "num_layers") and len(str(err)) < 200


@pytest.mark.parametrize(("field", "value"), [
    ("activation", "relu"), ("activation", "GELU"), ("activation", None), ("norm", "batchnorm"),
    ("norm", 1), ("position", "sinusoidal"), ("dtype", "fp8"), ("dtype", "bfloat16"), ("head", "cls"),
])
def test_unknown_choices(field: str, value: Any) -> None:
    err = spec_error(model, **{field: value})
    assert names(err, field) and "must be one of" in str(err)


@pytest.mark.parametrize(("field", "value"), [
    ("tied_embeddings", "yes"), ("bias", 1), ("causal", None), ("pooler", 0), ("qkv_bias", "false"),
    ("dropout", -0.1), ("dropout", 1.0), ("dropout", float("nan")), ("dropout", True), ("dropout", 10**400),
    ("capacity_factor", 0), ("capacity_factor", float("inf")), ("capacity_factor", "1.25"),
    ("name", ""), ("name", 7), ("source", ["paper"]), ("extra", [1]),
])
def test_bad_flags_and_numbers(field: str, value: Any) -> None:
    assert names(spec_error(model, **{field: value}), field)


def test_moe_rules() -> None:
    assert model(num_experts=8, top_k=2).is_moe
    assert names(spec_error(model, num_experts=1, top_k=1), "num_experts")
    assert names(spec_error(model, num_experts=8, top_k=0), "top_k")
    assert names(spec_error(model, num_experts=8, top_k=9), "top_k")
    assert names(spec_error(model, top_k=2), "top_k")


def test_learned_positions_bound_seq_len() -> None:
    assert names(spec_error(model, seq_len=2048, max_position=1024), "seq_len")
    longer = model().with_seq_len(4096)  # a longer-context run configures a longer table
    assert longer.seq_len == longer.max_position == 4096
    assert model(position="rope", seq_len=4096).max_position == 0  # rope: no table, no bound


def test_from_dict_unknown_and_missing_fields() -> None:
    err = spec_error(ModelSpec.from_dict, {**BASE, "hiden": 64})
    assert names(err, "hiden")
    missing = dict(BASE)
    del missing["ffn_hidden"]
    assert names(spec_error(ModelSpec.from_dict, missing), "ffn_hidden")
    assert "expected a JSON object" in str(spec_error(ModelSpec.from_dict, [BASE]))
    assert names(spec_error(ModelSpec.from_dict, {**BASE, 7: 1}), "7")  # non-string keys from Python
    assert names(spec_error(ModelSpec.from_dict, {**BASE, "a\nb": 1}), "a\\nb")  # stays one line
    assert names(spec_error(ModelSpec.from_dict, {**BASE, "": 1}), "''")  # an empty key is visible


def test_preset_fields_are_validated_too() -> None:
    with pytest.raises(SpecError):
        model_preset("no-such-model")
    with pytest.raises(SpecError):
        model_preset(["gpt2"])  # type: ignore[arg-type]


# ---- JSON files -----------------------------------------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_model_json_file_errors_name_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, "m.json", json.dumps({**BASE, "num_kv_heads": 3}))
    assert names(spec_error(load_model, path), "num_kv_heads")
    path = write(tmp_path, "m.json", json.dumps({**BASE, "activation": "relu"}))
    assert names(spec_error(load_model, path), "activation")
    path = write(tmp_path, "m.json", json.dumps({**BASE, "flash": True}))
    assert names(spec_error(load_model, path), "flash")


@pytest.mark.parametrize(("text", "why"), [
    ("{", "malformed"),
    ('{"name": "m",}', "malformed"),
    ("", "malformed"),
    ('{"hidden": NaN}', "NaN"),
    ('{"hidden": Infinity}', "Infinity"),
    ('{"hidden": -Infinity}', "Infinity"),
    ('{"dropout": 1e400}', "1e400"),
    ('{"hidden": 64, "hidden": 128}', "duplicate key 'hidden'"),
    ("[" * 10_000 + "]" * 10_000, "nested"),
    ('{"a":' * 10_000 + "1" + "}" * 10_000, "nested"),
    ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "nested"),
    ("1" * 5000, "malformed"),
])
def test_bad_json_files(tmp_path: Path, text: str, why: str) -> None:
    """File-level problems are InputFileError (a PlannerError like SpecError: exit 2), naming the file."""
    path = write(tmp_path, "bad.json", text)
    for load in (load_model, load_cluster, load_json):
        with pytest.raises(InputFileError) as err:
            load(path)
        assert why in str(err.value) and "bad.json" in str(err.value) and "\n" not in str(err.value)


def test_json_file_not_an_object(tmp_path: Path) -> None:
    path = write(tmp_path, "list.json", json.dumps([BASE]))
    assert "expected a JSON object" in str(spec_error(load_model, path))
    assert "expected a JSON object" in str(spec_error(load_cluster, path))


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    for arg in (str(tmp_path / "nope.json"), str(tmp_path), "dir/with\0nul.json"):
        with pytest.raises(InputFileError):
            load_model(arg)
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00{")
    with pytest.raises(InputFileError):
        load_model(str(tmp_path / "bin.json"))


def test_parse_json_text_accepts_plain_json() -> None:
    text = '{"a": [1, 2.5, -0.0, 1e308, null, true]}'
    assert parse_json_text(text) == {"a": [1, 2.5, -0.0, 1e308, None, True]}


def test_unknown_preset_names() -> None:
    assert names(spec_error(load_model, "gpt5"), "model")
    assert names(spec_error(load_cluster, "dgx-z900"), "cluster")
    assert names(spec_error(load_model, 42), "model")  # type: ignore[arg-type]
    assert names(spec_error(load_model, "a\0b"), "model")


# ---- clusters -------------------------------------------------------------------------------


def cluster_dict() -> dict[str, Any]:
    return cluster_preset("dgx-h100").to_dict()


def test_unknown_gpu_in_cluster_json(tmp_path: Path) -> None:
    path = write(tmp_path, "c.json", json.dumps({**cluster_dict(), "gpu": "H900-SXM"}))
    err = spec_error(load_cluster, path)
    assert names(err, "gpu") and "H900-SXM" in str(err) and "H100-SXM5-80GB" in str(err)
    # a GPU preset name is accepted in place of the object, and so is a link preset name
    d = {**cluster_dict(), "gpu": "H100-SXM5-80GB", "intra_node": "nvlink4", "inter_node": "ib-ndr-400"}
    assert ClusterSpec.from_dict(d) == cluster_preset("dgx-h100")
    err = spec_error(ClusterSpec.from_dict, {**cluster_dict(), "inter_node": "ib-xdr-9000"})
    assert names(err, "inter_node")


def test_cluster_json_wrapped_in_a_plan_or_profile(tmp_path: Path) -> None:
    path = write(tmp_path, "profile.json", json.dumps({"cluster": cluster_dict(), "schema_version": 1}))
    assert load_cluster(path) == cluster_preset("dgx-h100")


@pytest.mark.parametrize(("path", "value", "field"), [
    (("gpus_per_node",), 0, "gpus_per_node"),
    (("gpus_per_node",), 8.0, "gpus_per_node"),
    (("num_nodes",), True, "num_nodes"),
    (("num_nodes",), 10**30, "num_nodes"),
    (("device",), "tpu", "device"),
    (("backend",), "mpi", "backend"),
    (("reserved_memory_bytes",), 1e12, "reserved_memory_bytes"),
    (("gpu", "memory_bytes"), -1, "memory_bytes"),
    (("gpu", "memory_bandwidth"), "fast", "memory_bandwidth"),
    (("gpu", "peak_flops"), {}, "peak_flops"),
    (("gpu", "peak_flops", "bf16"), 10**400, "peak_flops.bf16"),
    (("gpu", "gemm_efficiency"), 1.5, "gemm_efficiency"),
    (("gpu", "gemm_curve"), [[1e9, 0.5], [1e12]], "gemm_curve[1]"),
    (("gpu", "gemm_curve"), [5], "gemm_curve[0]"),
    (("gpu", "gemm_curve"), "steep", "gemm_curve"),
    (("gpu", "name"), "", "name"),
    (("intra_node", "bandwidth"), 0, "bandwidth"),
    (("inter_node", "latency"), -1e-6, "latency"),
    (("inter_node", "efficiency"), 0, "efficiency"),
    (("intra_node", "collectives"), {"allreduce": []}, "collectives"),
    (("intra_node", "collectives"), {"all_reduce": [{"group": 8, "alpha": 0}]}, "collectives.all_reduce[0]"),
    (("intra_node", "collectives"), {"all_reduce": [{"group": 8, "alpha": 0, "busbw": "x"}]}, "busbw"),
    (("intra_node", "collectives"), {"all_reduce": [{"group": 8, "alpha": 0, "busbw": 1e9, "burst_alpha": 0}]},
     "collectives.all_reduce[0]"),  # a burst latency without its bandwidth
    (("intra_node", "collectives"), {"all_reduce": [{"group": 8, "alpha": 0, "busbw": 1e9, "burst_alpha": 0,
                                                     "burst_busbw": -1}]}, "burst_busbw"),
    (("name",), 5, "name"),
    (("provenance",), [1], "provenance"),
    (("bogus",), 1, "bogus"),
    (("gpu", "bogus"), 1, "bogus"),
])
def test_bad_cluster_fields(path: tuple[str, ...], value: Any, field: str) -> None:
    d = cluster_dict()
    node = d
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    err = spec_error(ClusterSpec.from_dict, d)
    assert names(err, field), str(err)


@pytest.mark.parametrize("field", ["gpu", "intra_node", "inter_node", "gpus_per_node", "name"])
def test_missing_cluster_fields(field: str) -> None:
    d = cluster_dict()
    del d[field]
    assert names(spec_error(ClusterSpec.from_dict, d), field)


def test_cluster_constructor_checks_types() -> None:
    c = cluster_preset("dgx-h100")
    with pytest.raises(SpecError) as err:
        ClusterSpec(name="c", gpu="H100", gpus_per_node=8,  # type: ignore[arg-type]
                    intra_node=c.intra_node, inter_node=c.inter_node)
    assert err.value.field == "gpu"
    with pytest.raises(SpecError):
        LinkSpec(name="l", bandwidth=float("nan"), latency=0.0)
    with pytest.raises(SpecError):
        GPUSpec(name="g", peak_flops={"bf16": 1e15}, memory_bytes=math.inf, memory_bandwidth=1e12)
    with pytest.raises(SpecError) as err:
        gpu_preset("H100")
    assert err.value.field == "gpu"


# ---- Hugging Face configs -------------------------------------------------------------------


def hf(name: str = "llama3-8b", **overrides: Any) -> dict[str, Any]:
    cfg = json.loads((HF / f"{name}.json").read_text())
    cfg.update(overrides)
    return cfg


@pytest.mark.parametrize("mtype", ["t5", "falcon", "mamba", "", None, 7, ["llama"]])
def test_unsupported_hf_model_type(mtype: Any) -> None:
    err = spec_error(from_hf_config, hf(model_type=mtype) if mtype is not None else
                     {"architectures": ["FalconForCausalLM"], "hidden_size": 64})
    assert names(err, "model_type") and "supported" in str(err)


def test_unsupported_hf_model_type_from_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, "config.json", json.dumps({"model_type": "t5", "d_model": 512}))
    err = spec_error(load_model, path)
    assert names(err, "model_type") and "t5" in str(err)


@pytest.mark.parametrize(("cfg", "field"), [
    (hf(hidden_size=4100), "hidden_size"),  # not divisible by 32 heads
    (hf(hidden_size="4096"), "hidden_size"),
    (hf(num_key_value_heads=5), "num_key_value_heads"),
    (hf(num_hidden_layers=0), "num_hidden_layers"),
    (hf(vocab_size=-1), "vocab_size"),
    (hf(intermediate_size=1.5), "intermediate_size"),
    (hf(max_position_embeddings="8k"), "max_position_embeddings"),
    (hf(hidden_act="relu"), "hidden_act"),
    (hf(hidden_act=["silu"]), "hidden_act"),
    (hf(tie_word_embeddings="false"), "tie_word_embeddings"),
    (hf(attention_bias=1), "attention_bias"),
    (hf(attention_dropout=float("nan")), "attention_dropout"),
    (hf(attention_dropout="0.1"), "attention_dropout"),
    (hf(attention_dropout=[0.1]), "attention_dropout"),
    (hf(attention_dropout=10**400), "attention_dropout"),
    (hf(head_dim=-64), "head_dim"),
    (hf(head_dim={}), "head_dim"),
    # Silently wrong models before (issue 13): now refused naming the field.
    (hf(hidden_act="gelu"), "hidden_act"),  # Llama's MLP is gated: a gated GELU is not modelled
    (hf(num_key_value_heads=0), "num_key_value_heads"),  # 0 is not "unset" in a Hub config
    (hf("gpt2", activation_function="silu"), "activation_function"),  # GPT-2's MLP is not gated
    (hf("gpt-neox-20b", hidden_act="silu"), "hidden_act"),
    (hf(attention_bias=True), "attention_bias"),  # o_proj bias without MLP biases
    (hf(some_new_feature=True), "some_new_feature"),  # not understood: refused, not ignored
    (hf("mixtral-8x7b", num_experts=8), "num_experts"),  # Mixtral's key is num_local_experts
    (hf("qwen3-30b-a3b", mlp_only_layers=[0, 48]), "mlp_only_layers"),  # beyond the 48 layers
    (hf("qwen3-30b-a3b", mlp_only_layers="0"), "mlp_only_layers"),
    (hf("gpt-oss-20b", layer_types=["sliding_attention"] * 3), "layer_types"),
    (hf("gpt-oss-20b", experts_per_token=2), "experts_per_token"),
    (hf("deepseek-v3", index_n_heads=64, index_topk=2048), "index_n_heads"),  # V3.2's sparse attention
    (hf("deepseek-v3", num_key_value_heads=8), "num_key_value_heads"),
    (hf("deepseek-v3", head_dim=128), "head_dim"),
    (hf("bert-base-uncased", position_embedding_type="relative_key"), "position_embedding_type"),
    ({**hf("llama4-scout"), "text_config": {**hf("llama4-scout")["text_config"], "moe_dim": 3}},
     "text_config.moe_dim"),
    ({**hf("llama4-scout"), "text_config": {**hf("llama4-scout")["text_config"], "hidden_act": "gelu"}},
     "text_config.hidden_act"),
    ({**hf("llama4-scout"), "text_config": {**hf("llama4-scout")["text_config"], "moe_layers": [48]}},
     "text_config.moe_layers"),
    (hf("mixtral-8x7b", num_experts_per_tok=9), "num_experts_per_tok"),
    (hf("mixtral-8x7b", num_local_experts="8"), "num_local_experts"),
    (hf("gpt2", n_embd=770), "n_embd"),
    (hf("gpt2", n_head=0), "n_head"),
    (hf("gpt2", n_positions=None, max_position_embeddings=None), "n_positions"),
    (hf("gpt2", activation_function="relu"), "activation_function"),
    (hf("gpt2", resid_pdrop=1.5), "resid_pdrop"),
    (hf("bert-base-uncased", type_vocab_size=-2), "type_vocab_size"),
    (hf("qwen2-7b", model_type="qwen2_moe", num_experts=60, num_experts_per_tok=4,
        moe_intermediate_size=1408, shared_expert_intermediate_size=-1), "shared_expert_intermediate_size"),
    ({"architectures": "LlamaForCausalLM"}, "architectures"),
    ({"architectures": 5}, "architectures"),
])
def test_bad_hf_fields_are_named_by_their_hf_key(cfg: dict[str, Any], field: str) -> None:
    assert names(spec_error(from_hf_config, cfg), field)


def test_ignored_hf_fields_change_nothing() -> None:
    """Keys on the importer's explicit ignore list (token ids, initialisation, epsilons, routing
    numerics, the checkpoint's quantisation) leave the model as it is; they are a documented list."""
    for name in ("llama3-8b", "deepseek-v3", "gpt-oss-20b", "qwen3-30b-a3b"):
        base = from_hf_config(hf(name))
        noisy = {**hf(name), "bos_token_id": 7, "initializer_range": 0.5, "rms_norm_eps": 0.1, "rope_theta": 1.0,
                 "norm_topk_prob": False, "quantization_config": {"quant_method": "fp8"}, "use_cache": False}
        assert from_hf_config(noisy) == base, name
    assert all(reason for reason in IGNORED.values()) and "hidden_act" not in IGNORED


def test_qwen_moe_dense_layers_are_honoured() -> None:
    """mlp_only_layers / decoder_sparse_step (Qwen2-MoE, Qwen3-MoE) make those layers dense MLPs of
    intermediate_size (they used to be silently MoE): each listed layer trades its 128 experts of
    3 h f_e and the h x 128 router for 3 h f (hand count)."""
    h, f, fe, e = 2048, 6144, 768, 128
    base = from_hf_config(hf("qwen3-30b-a3b"))
    dense = from_hf_config(hf("qwen3-30b-a3b", mlp_only_layers=[0, 5]))
    assert dense.dense_layers == (0, 5)
    assert base.params - dense.params == 2 * (e * 3 * h * fe + h * e - 3 * h * f)
    every_other = from_hf_config(hf("qwen3-30b-a3b", decoder_sparse_step=2))
    assert every_other.dense_layers == tuple(range(0, 48, 2))


def test_missing_hf_field() -> None:
    cfg = hf()
    del cfg["num_hidden_layers"]
    assert names(spec_error(from_hf_config, cfg), "num_hidden_layers")
    assert "JSON object" in str(spec_error(from_hf_config, [cfg]))


# ---- properties: hostile input never escapes as anything but SpecError ----------------------

MODEL_FIELDS = [*ModelSpec.__dataclass_fields__]

hostile = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-3, max_value=3), st.integers(), st.integers(min_value=2**60),
    st.sampled_from([0, 1, 2, 64, 10**30, -(10**30), 2**63, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.5, 64.0, 1e400, -0.0]),
    st.text(max_size=12),
    st.sampled_from(["gelu", "swiglu", "rmsnorm", "layernorm", "rope", "learned", "lm", "mlm", "bf16", "64"]),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)

valid_model = st.fixed_dictionaries(
    {"name": st.text(min_size=1, max_size=8), "num_layers": st.integers(1, 6),
     "hidden": st.sampled_from([32, 64, 96, 128]), "num_heads": st.sampled_from([1, 2, 4, 8]),
     "ffn_hidden": st.integers(1, 512), "vocab_size": st.integers(1, 5000), "seq_len": st.integers(1, 512)},
    optional={"num_kv_heads": st.sampled_from([0, 1, 2, 4]),
              "activation": st.sampled_from(["gelu", "swiglu"]),
              "norm": st.sampled_from(["layernorm", "rmsnorm"]),
              "position": st.sampled_from(["learned", "rope"]),
              "max_position": st.integers(0, 1024), "tied_embeddings": st.booleans(), "bias": st.booleans(),
              "qkv_bias": st.one_of(st.none(), st.booleans()), "causal": st.booleans(),
              "head": st.sampled_from(["lm", "mlm"]), "type_vocab_size": st.integers(0, 4),
              "pooler": st.booleans(), "dropout": st.floats(0.0, 0.5),
              "num_experts": st.sampled_from([0, 2, 8]), "top_k": st.integers(0, 3),
              "capacity_factor": st.floats(0.5, 2.0), "dtype": st.sampled_from(["bf16", "fp16", "fp32"]),
              "source": st.text(max_size=5)},
)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    """A valid-looking dict with 0-3 hostile edits: a field set to a hostile value, deleted, or invented."""
    d = dict(draw(base))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["set", "set", "delete", "invent"]))
        if op == "set":
            d[draw(st.sampled_from(keys))] = draw(hostile)
        elif op == "delete" and d:
            d.pop(draw(st.sampled_from(sorted(d))))
        else:
            d[draw(st.text(max_size=6))] = draw(hostile)
    return d


def check_model(m: ModelSpec) -> None:
    """A spec that was accepted is usable: hashable, round-trips, and its sizes add up."""
    assert isinstance(m, ModelSpec)
    hash(m)
    assert ModelSpec.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    assert m.num_heads % m.num_kv_heads == 0 and m.head_dim > 0
    if m.num_layers <= 64:
        assert m.params > 0 and 0 < m.active_params <= m.params


@PROPERTY
@given(mutated(valid_model, MODEL_FIELDS))
def test_property_model_from_dict(data: dict[str, Any]) -> None:
    try:
        m = ModelSpec.from_dict(data)
    except SpecError as err:
        assert str(err) and "\n" not in str(err) and len(str(err)) < 400
        return
    check_model(m)


HF_FIXTURES = sorted(p.stem for p in HF.glob("*.json"))
HF_KEYS = sorted({k for name in HF_FIXTURES for k in hf(name)} | {
    "head_dim", "num_experts", "moe_intermediate_size", "shared_expert_intermediate_size", "mlp_bias",
    "n_inner", "hidden_dropout", "dtype"})


@PROPERTY
@given(mutated(st.sampled_from(HF_FIXTURES).map(hf), HF_KEYS))
def test_property_hf_config(cfg: dict[str, Any]) -> None:
    try:
        m = from_hf_config(cfg)
    except SpecError as err:
        assert str(err) and "\n" not in str(err) and len(str(err)) < 400
        return
    assert isinstance(m, ModelSpec)
    hash(m)
    assert m.params > 0


@pytest.mark.parametrize("name", ["deepseek-v3", "gpt-oss-20b", "llama4-scout", "qwen3-30b-a3b", "llama3-8b"])
def test_an_absurd_layer_count_is_refused_before_layer_lists_are_built(name: str) -> None:
    """Found by test_property_hf_config: num_hidden_layers = 10^18 made the DeepSeek importer build a list
    of every dense layer index (it hung). Now it is the one-line error ModelSpec gives, at the key."""
    cfg = hf(name)
    cfg.get("text_config", cfg)["num_hidden_layers"] = 10**18
    with pytest.raises(SpecError, match="beyond any plausible model") as err:
        from_hf_config(cfg)
    assert "num_hidden_layers" in str(err.value) and "\n" not in str(err.value)


def _cluster_base(name: str) -> dict[str, Any]:
    return cluster_preset(name).to_dict()


CLUSTER_PATHS = [(k,) for k in ClusterSpec.__dataclass_fields__] + [
    (tier, k) for tier in ("gpu", "intra_node", "inter_node") for k in _cluster_base("dgx-h100")[tier]
] + [("gpu", "peak_flops", "bf16")]


@PROPERTY
@given(st.sampled_from(["dgx-a100-80gb", "dgx-h100", "mi300x"]),
       st.lists(st.tuples(st.sampled_from(CLUSTER_PATHS), hostile), max_size=3))
def test_property_cluster_from_dict(name: str, edits: list[tuple[tuple[str, ...], Any]]) -> None:
    d = copy.deepcopy(_cluster_base(name))
    for path, value in edits:
        node = d
        for key in path[:-1]:
            if not isinstance(node.get(key), dict):
                break
            node = node[key]
        else:
            node[path[-1]] = value
    try:
        c = ClusterSpec.from_dict(d)
    except SpecError as err:
        assert str(err) and "\n" not in str(err) and len(str(err)) < 400
        return
    hash(c)
    assert ClusterSpec.from_dict(json.loads(json.dumps(c.to_dict()))) == c


@PROPERTY
@given(st.one_of(st.text(max_size=40),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
                              lambda kids: st.lists(kids, max_size=3)
                              | st.dictionaries(st.text(max_size=3), kids, max_size=3),
                              max_leaves=12).map(lambda v: json.dumps(v, allow_nan=True))))
def test_property_json_text(text: str) -> None:
    try:
        parse_json_text(text)
    except InputFileError as err:
        assert "\n" not in str(err)


def test_packed_samples_attend_within_each_sample_only() -> None:
    """Llama 3 8B on 4096-token rows packing samples of 256 tokens: a token's attention scores and
    context run over its own sample, 256 keys instead of the row's 4096 (1/16 of the attention-core
    FLOPs per token, counted as Megatron counts full attention: every key), while every linear layer
    still runs each token of the row."""
    from planner.graph import build_graph, key_positions

    full = load_model("llama3-8b", seq_len=4096)
    packed = load_model("llama3-8b", seq_len=4096, packed_samples=256)
    assert packed.name == "llama3-8b-packed256" and packed.params == full.params

    def per_token(spec: ModelSpec) -> tuple[float, float]:
        ops = build_graph(spec).kinds[0].ops
        attn = sum(op.flops_s * key_positions(op, 4096) for op in ops if op.kind == "attention")
        return attn, sum(op.flops for op in ops)

    (attn_full, linear_full), (attn_packed, linear_packed) = per_token(full), per_token(packed)
    assert attn_packed == pytest.approx(attn_full / 16, rel=1e-12) and linear_packed == linear_full
    assert load_model("llama3-8b", seq_len=4096, packed_samples=4096) == full  # one sample per row
    assert names(spec_error(load_model, "gpt-oss-20b", packed_samples=256), "packed_samples")


def test_in_switch_reduction_comes_from_the_nvlink_preset() -> None:
    """NVLink SHARP is a property of the switch: a topology cluster's NVLink tier takes it from the link preset
    the topology names (GB200 NVL72: nvlink5), its network tier has none, A100's NVSwitch has none (and its
    documents carry no such key), and a cluster survives its own document."""
    from planner.specs.catalog import cluster_preset, link_preset
    from planner.specs.cluster import ClusterSpec

    nvl72 = cluster_preset("gb200-nvl72")
    assert nvl72.intra_node.nvls_efficiency == link_preset("nvlink5").nvls_efficiency > 0
    assert nvl72.inter_node.nvls_efficiency == 0
    assert ClusterSpec.from_dict(nvl72.to_dict()) == nvl72
    a100 = cluster_preset("dgx-a100-80gb")
    assert a100.intra_node.nvls_efficiency == 0 and "nvls_efficiency" not in a100.to_dict()["intra_node"]
    h100 = cluster_preset("dgx-h100")
    assert ClusterSpec.from_dict(h100.to_dict()).intra_node.nvls_efficiency == h100.intra_node.nvls_efficiency > 0
