"""Import a Hugging Face `config.json` into a `ModelSpec` without depending on `transformers`.

Field names are those of the `transformers` configuration classes (GPT2Config, GPTNeoXConfig,
BertConfig, LlamaConfig, MistralConfig, MixtralConfig, Qwen2Config, Qwen2MoeConfig, Qwen3Config,
Qwen3MoeConfig, DeepseekV3Config (also Kimi K2's `kimi_k2`), GptOssConfig, Llama4Config). Errors name
the config's own key (e.g. ``hidden_size``), together with the ModelSpec field it feeds.

Strict by construction: every key of the config is either read (and its value checked), or on the
explicit `IGNORED` list of keys that do not change the architecture's parameters, FLOPs or saved
activations (token ids, initialisation, epsilons, RoPE bases, routing numerics, the checkpoint's
quantisation). Anything else is refused naming the key, so a config the importer does not understand
never becomes a silently wrong model.
"""

from __future__ import annotations

from typing import Any

from planner.errors import SpecError
from planner.specs.model import ModelSpec, check_plausible, show, show_key

DEFAULT_MAX_SEQ = 8192  # training sequence length used when the config allows longer contexts

_LLAMA_LIKE = ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe")
_MLA = ("deepseek_v2", "deepseek_v3", "kimi_k2")
SUPPORTED = ("gpt2", "gpt_neox", "bert", *_LLAMA_LIKE, *_MLA, "gpt_oss", "llama4", "llama4_text")
_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}

# Keys that do not change what the planner models (parameters, FLOPs, saved activations, sharding),
# by reason. Anything not read and not here is an error (see the module docstring).
_IGNORED_BY_REASON: dict[str, tuple[str, ...]] = {
    "identity, tooling and checkpoint format": (
        "_name_or_path", "architectures", "auto_map", "transformers_version", "torch_dtype", "dtype",
        "quantization_config", "use_cache", "return_dict", "output_attentions", "output_hidden_states",
        "torchscript", "gradient_checkpointing", "is_decoder", "is_encoder_decoder", "tie_encoder_decoder",
        "chunk_size_feed_forward", "id2label", "label2id", "problem_type", "finetuning_task",
        "task_specific_params", "pretraining_tp", "for_llm_compressor", "classifier_dropout"),
    "token ids": (
        "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
        "boi_token_index", "eoi_token_index", "image_token_index"),
    "initialisation and numerics of unchanged ops": (
        "initializer_range", "initializer_factor", "layer_norm_eps", "layer_norm_epsilon", "rms_norm_eps",
        "rope_theta", "rope_scaling", "rope_parameters", "rotary_emb_base", "rotary_pct",
        "partial_rotary_factor", "swiglu_limit", "attn_temperature_tuning", "attn_scale", "floor_scale",
        "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"),
    "context length of the checkpoint (the training sequence length is --seq-len)": (
        "n_ctx", "initial_context_length"),
    "routing and auxiliary losses (same experts, same FLOPs)": (
        "router_aux_loss_coef", "aux_loss_alpha", "seq_aux", "router_jitter_noise", "output_router_logits",
        "norm_topk_prob", "routed_scaling_factor", "scoring_func", "topk_method", "n_group", "topk_group",
        "ep_size", "router_z_loss_coef"),
    "sequence-classification heads of GPT-2, not part of the language model": (
        "summary_activation", "summary_first_dropout", "summary_proj_to_labels", "summary_type",
        "summary_use_proj"),
    "GPT-NeoX's parallel residual: the same ops, parameters and FLOPs (the executor runs the two "
    "branches one after the other)": ("use_parallel_residual",),
    "the vision encoder of a multimodal checkpoint: the planner models the text model": ("vision_config",),
}
IGNORED: dict[str, str] = {k: reason for reason, keys in _IGNORED_BY_REASON.items() for k in keys}


def looks_like_hf(data: Any) -> bool:
    return isinstance(data, dict) and ("model_type" in data or "architectures" in data)


class _Reader:
    """Reads keys of one config, remembering which key fed which ModelSpec field (for error messages)
    and which keys it read (every other key must be on the ignored list)."""

    def __init__(self, cfg: dict[str, Any], prefix: str = "") -> None:
        self.cfg = cfg
        self.prefix = prefix  # "text_config." inside a multimodal config
        self.origin: dict[str, str] = {}
        self.read: set[str] = set()

    def key(self, name: str) -> str:
        return self.prefix + name

    def get(self, field: str | None, *names: str, default: Any = None) -> Any:
        """The first of `names` present and not null; `default` if none is (required when None)."""
        self.read.update(names)
        for n in names:
            if self.cfg.get(n) is not None:
                if field:
                    self.origin[field] = self.key(n)
                return self.cfg[n]
        if default is None:
            raise SpecError("missing in Hugging Face config", field=self.key(names[0]))
        if field:
            self.origin[field] = self.key(names[0])
        return default

    def int(self, field: str | None, *names: str, default: int | None = None, minimum: int = 1) -> int:
        """An integer-valued key, checked here when it is used in arithmetic before ModelSpec sees it."""
        value = self.get(field, *names, default=default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise SpecError(f"must be an integer >= {minimum}, got {show(value)}", field=self._key(field, names))
        # (before it sizes a list of layers)
        return check_plausible(field, value, self._key(field, names)) if field else value

    def flag(self, field: str | None, name: str, default: bool) -> bool:
        self.read.add(name)
        value = self.cfg.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise SpecError(f"must be true or false, got {show(value)}", field=self.key(name))
        if field:
            self.origin[field] = self.key(name)
        return value

    def prob(self, name: str) -> float:
        self.read.add(name)
        value = self.cfg.get(name)
        if value is None:
            return 0.0
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not 0.0 <= value < 1.0:  # NaN fails the comparison too
            raise SpecError(f"must be a probability in [0, 1), got {show(value)}", field=self.key(name))
        return float(value)

    def int_list(self, name: str, length: int | None = None) -> list[int] | None:
        """A list of integers (None when absent)."""
        self.read.add(name)
        value = self.cfg.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value) \
                or (length is not None and len(value) != length):
            want = f"{length} integers" if length is not None else "a list of integers"
            raise SpecError(f"must be {want}, got {show(value)}", field=self.key(name))
        return value

    def layer_list(self, name: str, num_layers: int) -> list[int] | None:
        """A list of layer indices, each in [0, num_layers)."""
        value = self.int_list(name)
        if value is not None and any(not 0 <= i < num_layers for i in value):
            raise SpecError(f"layer indices must be in [0, {num_layers}), got {show(value)}", field=self.key(name))
        return value

    def layer_types(self, num_layers: int, allowed: tuple[str, ...]) -> list[str] | None:
        """HF's per-layer attention types (`layer_types`), checked against `allowed`."""
        self.read.add("layer_types")
        value = self.cfg.get("layer_types")
        if value is None:
            return None
        if not isinstance(value, list) or len(value) != num_layers or any(v not in allowed for v in value):
            raise SpecError(f"must list one of {', '.join(allowed)} per layer ({num_layers}), got {show(value)}",
                            field=self.key("layer_types"))
        return value

    def unread(self) -> list[str]:
        return sorted(show_key(k) for k in self.cfg if k not in self.read and k not in IGNORED)

    def _key(self, field: str | None, names: tuple[str, ...]) -> str:
        if field and field in self.origin:
            return self.origin[field]
        return self.key(next((n for n in names if self.cfg.get(n) is not None), names[0]))


def _act(r: _Reader, key: str, default: str, gated: bool) -> str:
    """The MLP's activation. Llama-family MLPs are gated (down(act(gate x) * up x)): SiLU makes SwiGLU,
    anything else (a gated GELU) is not modelled. GPT-2 / NeoX / BERT MLPs are not gated: GELU only."""
    name = r.get("activation", key, default=default)
    if gated:
        if name in ("silu", "swish"):
            return "swiglu"
        raise SpecError(f"unsupported activation {show(name)}: this family's MLP is gated "
                        "(act(gate) x up) and only SiLU (SwiGLU) is modelled", field=r.key(key))
    if isinstance(name, str) and name.startswith("gelu"):  # gelu, gelu_new, gelu_fast, gelu_pytorch_tanh
        return "gelu"
    raise SpecError(f"unsupported activation {show(name)}: this family's MLP is not gated and only "
                    "GELU variants are modelled", field=r.key(key))


def _model_type(cfg: dict[str, Any]) -> str:
    mtype = cfg.get("model_type")
    if mtype is None:
        archs = cfg.get("architectures")
        if not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs):
            raise SpecError(f"must be a list of class names, got {show(archs)}", field="architectures")
        arch = archs[0].lower().replace("_", "")
        mtype = next((t for t in ("gpt_neox", "gpt2", "mixtral", "mistral", "qwen3_moe", "qwen2_moe", "qwen3",
                                  "qwen2", "deepseek_v3", "deepseek_v2", "gpt_oss", "llama4", "llama", "bert")
                      if t.replace("_", "") in arch), None)
    if mtype not in SUPPORTED:
        raise SpecError(f"unsupported model_type {show(mtype)} (supported: {', '.join(SUPPORTED)})",
                        field="model_type")
    return mtype


def _seq(seq_len: int | None, npos: int) -> int:
    return seq_len or min(npos, DEFAULT_MAX_SEQ)


def _attention_dims(r: _Reader) -> dict[str, Any]:
    """Heads, key/value heads and the head width of a Llama-style attention."""
    heads = r.int("num_heads", "num_attention_heads")
    hidden = r.int("hidden", "hidden_size")
    kv = r.get("num_kv_heads", "num_key_value_heads", default=heads)
    head_dim = r.int("head_width", "head_dim", default=0, minimum=0)  # 0: hidden / heads
    if head_dim == hidden // heads and hidden % heads == 0:
        head_dim = 0  # stated but implied (Llama 3.1 configs state it)
    return dict(hidden=hidden, num_heads=heads, num_kv_heads=_positive(r, kv, "num_key_value_heads"),
                head_width=head_dim)


def _positive(r: _Reader, value: Any, key: str) -> Any:
    """0 is not 'unset' in a Hugging Face config (ModelSpec's 0 means MHA): refuse it here."""
    if value == 0 and not isinstance(value, bool):
        raise SpecError("must be >= 1 (null means one per attention head)", field=r.key(key))
    return value


def _biases(r: _Reader) -> tuple[bool, bool]:
    """(qkv_bias, bias) from attention_bias (q, k, v and o) and mlp_bias. ModelSpec ties the
    out-projection's bias to the MLP's, so attention biases without MLP biases are refused."""
    attention_bias = r.flag(None, "attention_bias", False)
    mlp_bias = r.flag("bias", "mlp_bias", False)
    if attention_bias and not mlp_bias:
        raise SpecError("biases on q/k/v and o_proj without MLP biases are not modelled (ModelSpec ties the "
                        "out-projection's bias to the MLP's)", field=r.key("attention_bias"))
    return attention_bias, mlp_bias


def _window_layers(r: _Reader, num_layers: int, mtype: str) -> dict[str, Any]:
    """Sliding-window attention: Mistral / Mixtral on every layer when `sliding_window` is set; Qwen2 /
    Qwen3 (their MoE too) when `use_sliding_window`, on the layers from `max_window_layers` on (as
    transformers builds `layer_types`); or an explicit `layer_types`."""
    types = r.layer_types(num_layers, ("full_attention", "sliding_attention"))
    window = r.get(None, "sliding_window", default=0)
    if mtype.startswith("qwen"):
        use = r.flag(None, "use_sliding_window", False)
        first = r.int(None, "max_window_layers", default=num_layers, minimum=0)
        if not use:
            window = 0
        elif types is None:
            types = ["sliding_attention" if i >= first else "full_attention" for i in range(num_layers)]
    if not window:
        if types and "sliding_attention" in types:
            raise SpecError("sliding-window layers need sliding_window", field=r.key("layer_types"))
        return {}
    window = r.int(None, "sliding_window")
    every = types is None  # Mistral: every layer
    layers = list(range(num_layers)) if every else [i for i, t in enumerate(types) if t == "sliding_attention"]
    return dict(sliding_window=window, window_layers=layers) if layers else {}


def _llama_like(r: _Reader, mtype: str, seq_len: int | None) -> dict[str, Any]:
    """Llama family: RMSNorm, gated SiLU MLP, RoPE; Qwen2: q/k/v biases; Qwen3: per-head q/k RMSNorm;
    Mixtral / Qwen MoE: routed experts, Qwen MoE with dense layers and (Qwen2-MoE) a gated shared expert."""
    npos = r.int(None, "max_position_embeddings", default=4096)
    layers = r.int("num_layers", "num_hidden_layers")
    qkv_bias, bias = _biases(r)
    if mtype in ("qwen2", "qwen2_moe"):
        qkv_bias = True  # Qwen2Attention: biases on q/k/v, none on o_proj
    fields: dict[str, Any] = dict(
        num_layers=layers, **_attention_dims(r), ffn_hidden=r.get("ffn_hidden", "intermediate_size"),
        vocab_size=r.get("vocab_size", "vocab_size"), activation=_act(r, "hidden_act", "silu", gated=True),
        norm="rmsnorm", position="rope", bias=bias, qkv_bias=qkv_bias,
        tied_embeddings=r.flag("tied_embeddings", "tie_word_embeddings", False), seq_len=_seq(seq_len, npos),
        **_window_layers(r, layers, mtype))
    if mtype.startswith("qwen3"):
        fields["qk_norm"] = "rmsnorm"
    if mtype == "mixtral":
        fields["num_experts"] = r.int("num_experts", "num_local_experts")
        fields["top_k"] = r.get("top_k", "num_experts_per_tok")
    elif mtype in ("qwen2_moe", "qwen3_moe"):
        experts = r.int("num_experts", "num_experts", default=0, minimum=0)
        if experts:
            step = r.int(None, "decoder_sparse_step", default=1)
            dense_only = r.layer_list("mlp_only_layers", layers) or []
            fields.update(num_experts=experts, top_k=r.get("top_k", "num_experts_per_tok"),
                          moe_ffn_hidden=r.get("moe_ffn_hidden", "moe_intermediate_size"),
                          dense_layers=[i for i in range(layers) if i in dense_only or (i + 1) % step])
            if mtype == "qwen2_moe":
                shared = r.int("shared_ffn_hidden", "shared_expert_intermediate_size", default=0, minimum=0)
                fields.update(shared_ffn_hidden=shared, shared_expert_gate=bool(shared))
        else:
            r.read.update(("num_experts_per_tok", "moe_intermediate_size", "decoder_sparse_step",
                           "mlp_only_layers", "shared_expert_intermediate_size"))
    return fields


def _deepseek(r: _Reader, mtype: str, seq_len: int | None) -> dict[str, Any]:
    """DeepSeek-V2/V3 and Kimi K2: multi-head latent attention, routed + shared experts after
    `first_k_dense_replace` dense layers (every `moe_layer_freq`-th), multi-token prediction modules."""
    npos = r.int(None, "max_position_embeddings", default=4096)
    layers = r.int("num_layers", "num_hidden_layers")
    heads = r.int("num_heads", "num_attention_heads")
    kv = r.get(None, "num_key_value_heads", default=heads)
    if kv != heads:
        raise SpecError(f"multi-head latent attention has one key/value head per query head, got {show(kv)} "
                        f"for {heads} heads", field=r.key("num_key_value_heads"))
    if r.flag(None, "attention_bias", False):
        raise SpecError("biases in multi-head latent attention are not modelled", field=r.key("attention_bias"))
    rope = r.int("qk_rope_head_dim", "qk_rope_head_dim")
    head_dim = r.get(None, "head_dim", default=rope)
    if head_dim != rope:  # transformers' DeepseekV3Config sets head_dim = qk_rope_head_dim
        raise SpecError(f"must equal qk_rope_head_dim {rope}, got {show(head_dim)}", field=r.key("head_dim"))
    experts = r.int("num_experts", "n_routed_experts", default=0, minimum=0)
    fields: dict[str, Any] = dict(
        num_layers=layers, hidden=r.get("hidden", "hidden_size"), num_heads=heads,
        ffn_hidden=r.get("ffn_hidden", "intermediate_size"), vocab_size=r.get("vocab_size", "vocab_size"),
        activation=_act(r, "hidden_act", "silu", gated=True), norm="rmsnorm", position="rope", bias=False,
        qkv_bias=False, tied_embeddings=r.flag("tied_embeddings", "tie_word_embeddings", False),
        seq_len=_seq(seq_len, npos), q_lora_rank=r.int("q_lora_rank", "q_lora_rank", default=0, minimum=0),
        kv_lora_rank=r.get("kv_lora_rank", "kv_lora_rank"), qk_nope_head_dim=r.get("qk_nope_head_dim",
                                                                                   "qk_nope_head_dim"),
        qk_rope_head_dim=rope, v_head_dim=r.get("v_head_dim", "v_head_dim"),
        mtp_layers=r.int("mtp_layers", "num_nextn_predict_layers", default=0, minimum=0))
    if experts:
        first_dense = r.int(None, "first_k_dense_replace", default=0, minimum=0)
        freq = r.int(None, "moe_layer_freq", default=1)
        moe_ffn = r.int("moe_ffn_hidden", "moe_intermediate_size")
        shared = r.int(None, "n_shared_experts", default=0, minimum=0)
        fields.update(num_experts=experts, top_k=r.get("top_k", "num_experts_per_tok"), moe_ffn_hidden=moe_ffn,
                      shared_ffn_hidden=shared * moe_ffn,
                      dense_layers=[i for i in range(layers) if i < first_dense or i % freq])
    else:
        r.read.update(("num_experts_per_tok", "moe_intermediate_size", "n_shared_experts",
                       "first_k_dense_replace", "moe_layer_freq"))
    return fields


def _gpt_oss(r: _Reader, seq_len: int | None) -> dict[str, Any]:
    """gpt-oss: GQA with biases and a learned sink logit per head, alternating sliding-window (128) and
    full attention (`layer_types`), routed experts with biases and a router with a bias, RMSNorm, RoPE.
    Its clamped SwiGLU ((up + 1) x gate x sigmoid(1.702 gate), `swiglu_limit`) has SwiGLU's shapes and
    FLOPs and is modelled as SwiGLU."""
    npos = r.int(None, "max_position_embeddings", default=4096)
    layers = r.int("num_layers", "num_hidden_layers")
    if not r.flag(None, "attention_bias", True):
        raise SpecError("gpt-oss without attention biases is not modelled (its expert MLPs have biases, and "
                        "ModelSpec ties the out-projection's bias to them)", field=r.key("attention_bias"))
    top_k = r.get("top_k", "num_experts_per_tok")
    alias = r.get(None, "experts_per_token", default=top_k)
    if alias != top_k:
        raise SpecError(f"disagrees with num_experts_per_tok {show(top_k)}", field=r.key("experts_per_token"))
    fields = dict(num_layers=layers, **_attention_dims(r), ffn_hidden=r.get("ffn_hidden", "intermediate_size"),
                  vocab_size=r.get("vocab_size", "vocab_size"), activation=_act(r, "hidden_act", "silu", True),
                  norm="rmsnorm", position="rope", bias=True, qkv_bias=True, attention_sinks=True,
                  tied_embeddings=r.flag("tied_embeddings", "tie_word_embeddings", False),
                  seq_len=_seq(seq_len, npos), num_experts=r.int("num_experts", "num_local_experts"), top_k=top_k,
                  router_bias=True, **_window_layers(r, layers, "gpt_oss"))
    return fields


def _llama4(r: _Reader, seq_len: int | None) -> dict[str, Any]:
    """Llama 4's text model: MoE layers every `interleave_moe_layer_step` (routed experts of
    `intermediate_size`, top-k with a shared expert of the same width), dense layers of
    `intermediate_size_mlp`; every fourth layer without RoPE and with full attention, the others with
    RoPE, chunked attention (`attention_chunk_size`) and (Scout) a weightless RMS norm over q and k.
    Defaults as transformers' Llama4TextConfig builds them when the lists are absent."""
    npos = r.int(None, "max_position_embeddings", default=4096)
    layers = r.int("num_layers", "num_hidden_layers")
    qkv_bias, bias = _biases(r)
    step = r.int(None, "interleave_moe_layer_step", default=1)
    moe = r.layer_list("moe_layers", layers) or list(range(step - 1, layers, step))
    interval = r.int(None, "no_rope_layer_interval", default=4)
    uses_rope = r.int_list("no_rope_layers", layers) or [int((i + 1) % interval != 0) for i in range(layers)]
    types = r.layer_types(layers, ("chunked_attention", "full_attention")) or \
        ["chunked_attention" if uses_rope[i] else "full_attention" for i in range(layers)]
    chunk = r.int(None, "attention_chunk_size", default=8192)
    experts = r.int("num_experts", "num_local_experts")
    width = r.int("moe_ffn_hidden", "intermediate_size")
    fields = dict(num_layers=layers, **_attention_dims(r), ffn_hidden=r.get("ffn_hidden", "intermediate_size_mlp"),
                  vocab_size=r.get("vocab_size", "vocab_size"), activation=_act(r, "hidden_act", "silu", True),
                  norm="rmsnorm", position="rope", bias=bias, qkv_bias=qkv_bias,
                  tied_embeddings=r.flag("tied_embeddings", "tie_word_embeddings", False),
                  seq_len=_seq(seq_len, npos), num_experts=experts, top_k=r.get("top_k", "num_experts_per_tok"),
                  moe_ffn_hidden=width, shared_ffn_hidden=width,
                  dense_layers=[i for i in range(layers) if i not in moe],
                  nope_layers=[i for i in range(layers) if not uses_rope[i]],
                  qk_norm="rmsnorm-noweight" if r.flag(None, "use_qk_norm", False) else "none")
    local = [i for i, t in enumerate(types) if t == "chunked_attention"]
    if local:
        fields.update(attention_chunk=chunk, window_layers=local)
    return fields


def from_hf_config(cfg: dict[str, Any], name: str = "hf-model", seq_len: int | None = None) -> ModelSpec:
    """Translate a `config.json` dict; raises SpecError naming the field on anything unsupported."""
    if not isinstance(cfg, dict):
        raise SpecError("a Hugging Face config must be a JSON object")
    mtype = _model_type(cfg)
    top = _Reader(cfg)
    top.read.add("model_type")
    r = top
    if mtype == "llama4":  # multimodal: the text model's config is nested
        text = top.get(None, "text_config")
        if not isinstance(text, dict):
            raise SpecError(f"must be an object, got {show(text)}", field="text_config")
        r = _Reader(text, prefix="text_config.")
        r.read.add("model_type")
    dropout_keys = ("resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout", "hidden_dropout_prob",
                    "attention_dropout", "attention_probs_dropout_prob")
    dropout = max(r.prob(k) for k in dropout_keys)

    if mtype == "gpt2":
        h = r.int("hidden", "n_embd", "hidden_size")
        npos = r.int("max_position", "n_positions", "max_position_embeddings")
        fields: dict[str, Any] = dict(
            num_layers=r.get("num_layers", "n_layer", "num_hidden_layers"), hidden=h,
            num_heads=r.get("num_heads", "n_head", "num_attention_heads"),
            ffn_hidden=r.get("ffn_hidden", "n_inner", default=4 * h),
            vocab_size=r.get("vocab_size", "vocab_size"), max_position=npos,
            activation=_act(r, "activation_function", "gelu_new", gated=False),
            tied_embeddings=r.flag("tied_embeddings", "tie_word_embeddings", True),
            seq_len=seq_len or npos,
        )
    elif mtype == "gpt_neox":
        npos = r.int(None, "max_position_embeddings", default=2048)
        fields = dict(
            num_layers=r.get("num_layers", "num_hidden_layers"), hidden=r.get("hidden", "hidden_size"),
            num_heads=r.get("num_heads", "num_attention_heads"),
            ffn_hidden=r.get("ffn_hidden", "intermediate_size"),
            vocab_size=r.get("vocab_size", "vocab_size"), position="rope",
            activation=_act(r, "hidden_act", "gelu", gated=False),
            bias=r.flag("bias", "attention_bias", True),
            tied_embeddings=r.flag("tied_embeddings", "tie_word_embeddings", False),
            seq_len=_seq(seq_len, npos),
        )
    elif mtype == "bert":
        npos = r.int("max_position", "max_position_embeddings", default=512)
        kind = r.get(None, "position_embedding_type", default="absolute")
        if kind != "absolute":
            raise SpecError(f"only absolute (learned) positions are modelled, got {show(kind)}",
                            field="position_embedding_type")
        fields = dict(
            num_layers=r.get("num_layers", "num_hidden_layers"), hidden=r.get("hidden", "hidden_size"),
            num_heads=r.get("num_heads", "num_attention_heads"),
            ffn_hidden=r.get("ffn_hidden", "intermediate_size"),
            vocab_size=r.get("vocab_size", "vocab_size"), max_position=npos, seq_len=seq_len or npos,
            activation=_act(r, "hidden_act", "gelu", gated=False), causal=False, head="mlm",
            type_vocab_size=r.get("type_vocab_size", "type_vocab_size", default=2), pooler=True,
            tied_embeddings=r.flag("tied_embeddings", "tie_word_embeddings", True),
        )
    elif mtype in _LLAMA_LIKE:
        fields = _llama_like(r, mtype, seq_len)
    elif mtype in _MLA:
        fields = _deepseek(r, mtype, seq_len)
    elif mtype == "gpt_oss":
        fields = _gpt_oss(r, seq_len)
    else:
        fields = _llama4(r, seq_len)
        if "tie_word_embeddings" in cfg:  # a multimodal config may state it at the top level
            fields["tied_embeddings"] = top.flag("tied_embeddings", "tie_word_embeddings", False)
    fields["dropout"] = dropout
    for reader in {id(top): top, id(r): r}.values():
        unread = reader.unread()
        if unread:
            raise SpecError(f"not understood by the importer for {mtype}: it may change the architecture, so "
                            "it is refused rather than ignored (remove it if it does not)",
                            field=reader.key(unread[0]))
    raw_dtype = r.cfg.get("torch_dtype", r.cfg.get("dtype", cfg.get("torch_dtype", cfg.get("dtype"))))
    dtype = _DTYPES.get(raw_dtype, "bf16") if isinstance(raw_dtype, str) else "bf16"
    try:
        return ModelSpec(name=name, dtype=dtype, source=f"Hugging Face config.json ({mtype})", **fields)
    except SpecError as exc:
        key = r.origin.get(exc.field or "")
        if key is None or key == exc.field:
            raise
        message = str(exc).removeprefix(f"{exc.field}: ")
        raise SpecError(f"{message} (ModelSpec field {exc.field})", field=key) from None
