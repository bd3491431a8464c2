"""Import a Hugging Face `config.json` into a `ModelSpec` without depending on `transformers`.

Field names are those of the `transformers` configuration classes (GPT2Config, GPTNeoXConfig,
LlamaConfig, MistralConfig, MixtralConfig, Qwen2Config, BertConfig).
"""

from __future__ import annotations

from typing import Any

from planner.errors import SpecError
from planner.specs.model import ModelSpec

DEFAULT_MAX_SEQ = 8192  # training sequence length used when the config allows longer contexts

_LLAMA_LIKE = {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3"}
SUPPORTED = ("gpt2", "gpt_neox", *sorted(_LLAMA_LIKE), "bert")


def looks_like_hf(data: Any) -> bool:
    return isinstance(data, dict) and ("model_type" in data or "architectures" in data)


def _get(cfg: dict[str, Any], *names: str, default: Any = None, required: bool = True) -> Any:
    for n in names:
        if n in cfg and cfg[n] is not None:
            return cfg[n]
    if required and default is None:
        raise SpecError("missing in Hugging Face config", field=names[0])
    return default


def _act(cfg: dict[str, Any], key: str, default: str) -> str:
    name = str(_get(cfg, key, default=default))
    if name in ("silu", "swish", "swiglu"):
        return "swiglu"
    if name.startswith("gelu") or name in ("gelu_new", "gelu_fast", "gelu_pytorch_tanh"):
        return "gelu"
    raise SpecError(f"unsupported activation {name!r} (gelu* or silu)", field=key)


def from_hf_config(cfg: dict[str, Any], name: str = "hf-model", seq_len: int | None = None) -> ModelSpec:
    """Translate a `config.json` dict; raises SpecError naming the field on anything unsupported."""
    if not isinstance(cfg, dict):
        raise SpecError("a Hugging Face config must be a JSON object")
    mtype = cfg.get("model_type")
    if mtype is None:
        archs = cfg.get("architectures") or [""]
        arch = str(archs[0]).lower()
        mtype = next((t for t in ("gpt_neox", "gpt2", "mixtral", "mistral", "qwen2", "llama", "bert")
                      if t.replace("_", "") in arch.replace("_", "")), None)
    if mtype not in SUPPORTED:
        raise SpecError(f"unsupported model_type {mtype!r} (supported: {', '.join(SUPPORTED)})",
                        field="model_type")
    dropout_keys = ("resid_pdrop", "hidden_dropout", "hidden_dropout_prob", "attention_dropout")
    dropout = max(float(cfg.get(k) or 0.0) for k in dropout_keys)

    if mtype == "gpt2":
        h = _get(cfg, "n_embd", "hidden_size")
        npos = _get(cfg, "n_positions", "max_position_embeddings")
        fields: dict[str, Any] = dict(
            num_layers=_get(cfg, "n_layer", "num_hidden_layers"), hidden=h,
            num_heads=_get(cfg, "n_head", "num_attention_heads"),
            ffn_hidden=_get(cfg, "n_inner", default=4 * h if isinstance(h, int) else None),
            vocab_size=_get(cfg, "vocab_size"), max_position=npos,
            activation=_act(cfg, "activation_function", "gelu_new"),
            tied_embeddings=bool(cfg.get("tie_word_embeddings", True)), seq_len=seq_len or npos,
        )
    elif mtype == "gpt_neox":
        npos = _get(cfg, "max_position_embeddings", default=2048)
        fields = dict(
            num_layers=_get(cfg, "num_hidden_layers"), hidden=_get(cfg, "hidden_size"),
            num_heads=_get(cfg, "num_attention_heads"), ffn_hidden=_get(cfg, "intermediate_size"),
            vocab_size=_get(cfg, "vocab_size"), position="rope",
            activation=_act(cfg, "hidden_act", "gelu"),
            tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            seq_len=seq_len or min(npos, DEFAULT_MAX_SEQ),
        )
    elif mtype == "bert":
        npos = _get(cfg, "max_position_embeddings", default=512)
        fields = dict(
            num_layers=_get(cfg, "num_hidden_layers"), hidden=_get(cfg, "hidden_size"),
            num_heads=_get(cfg, "num_attention_heads"), ffn_hidden=_get(cfg, "intermediate_size"),
            vocab_size=_get(cfg, "vocab_size"), max_position=npos, seq_len=seq_len or npos,
            activation=_act(cfg, "hidden_act", "gelu"), causal=False, head="mlm",
            type_vocab_size=_get(cfg, "type_vocab_size", default=2), pooler=True,
            tied_embeddings=bool(cfg.get("tie_word_embeddings", True)),
        )
    else:  # Llama family: RMSNorm, SwiGLU, RoPE, no biases (Qwen2: q/k/v biases)
        npos = _get(cfg, "max_position_embeddings", default=4096)
        heads = _get(cfg, "num_attention_heads")
        head_dim = cfg.get("head_dim")
        hidden = _get(cfg, "hidden_size")
        if head_dim is not None and isinstance(heads, int) and head_dim * heads != hidden:
            raise SpecError(f"head_dim {head_dim} x num_attention_heads {heads} != hidden_size {hidden}"
                            " (decoupled head_dim is not supported)", field="head_dim")
        bias = bool(cfg.get("attention_bias", False)) or bool(cfg.get("mlp_bias", False))
        fields = dict(
            num_layers=_get(cfg, "num_hidden_layers"), hidden=hidden, num_heads=heads,
            num_kv_heads=_get(cfg, "num_key_value_heads", default=heads),
            ffn_hidden=_get(cfg, "moe_intermediate_size", "intermediate_size") if mtype == "qwen2_moe"
            else _get(cfg, "intermediate_size"),
            vocab_size=_get(cfg, "vocab_size"), activation=_act(cfg, "hidden_act", "silu"),
            norm="rmsnorm", position="rope", bias=bias,
            qkv_bias=True if mtype in ("qwen2", "qwen2_moe") else bias,
            tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            seq_len=seq_len or min(npos, DEFAULT_MAX_SEQ),
        )
        experts = cfg.get("num_local_experts") or cfg.get("num_experts") or 0
        if experts:
            fields["num_experts"] = experts
            fields["top_k"] = _get(cfg, "num_experts_per_tok")
    fields["dropout"] = dropout
    dtype = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(str(cfg.get("torch_dtype")), "bf16")
    return ModelSpec(name=name, dtype=dtype, source=f"Hugging Face config.json ({mtype})", **fields)
