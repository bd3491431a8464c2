"""Import a Hugging Face `config.json` into a `ModelSpec` without depending on `transformers`.

Field names are those of the `transformers` configuration classes (GPT2Config, GPTNeoXConfig,
LlamaConfig, MistralConfig, MixtralConfig, Qwen2Config, BertConfig). Errors name the config's own
key (e.g. ``hidden_size``), together with the ModelSpec field it feeds.
"""

from __future__ import annotations

from typing import Any

from planner.errors import SpecError
from planner.specs.model import ModelSpec, show

DEFAULT_MAX_SEQ = 8192  # training sequence length used when the config allows longer contexts

_LLAMA_LIKE = {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3"}
SUPPORTED = ("gpt2", "gpt_neox", *sorted(_LLAMA_LIKE), "bert")
_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def looks_like_hf(data: Any) -> bool:
    return isinstance(data, dict) and ("model_type" in data or "architectures" in data)


class _Reader:
    """Reads keys of one config, remembering which key fed which ModelSpec field (for error messages)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.origin: dict[str, str] = {}

    def get(self, field: str | None, *names: str, default: Any = None) -> Any:
        """The first of `names` present and not null; `default` if none is (required when None)."""
        for n in names:
            if self.cfg.get(n) is not None:
                if field:
                    self.origin[field] = n
                return self.cfg[n]
        if default is None:
            raise SpecError("missing in Hugging Face config", field=names[0])
        if field:
            self.origin[field] = names[0]
        return default

    def int(self, field: str | None, *names: str, default: int | None = None) -> int:
        """An integer-valued key, checked here when it is used in arithmetic before ModelSpec sees it."""
        value = self.get(field, *names, default=default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SpecError(f"must be a positive integer, got {show(value)}", field=self._key(field, names))
        return value

    def flag(self, field: str | None, name: str, default: bool) -> bool:
        value = self.cfg.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise SpecError(f"must be true or false, got {show(value)}", field=name)
        if field:
            self.origin[field] = name
        return value

    def prob(self, name: str) -> float:
        value = self.cfg.get(name)
        if value is None:
            return 0.0
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not 0.0 <= value < 1.0:  # NaN fails the comparison too
            raise SpecError(f"must be a probability in [0, 1), got {show(value)}", field=name)
        return float(value)

    def _key(self, field: str | None, names: tuple[str, ...]) -> str:
        return self.origin.get(field, names[0]) if field else next(
            (n for n in names if self.cfg.get(n) is not None), names[0])


def _act(r: _Reader, key: str, default: str) -> str:
    name = r.get("activation", key, default=default)
    if name in ("silu", "swish", "swiglu"):
        return "swiglu"
    if isinstance(name, str) and name.startswith("gelu"):  # gelu, gelu_new, gelu_fast, gelu_pytorch_tanh
        return "gelu"
    raise SpecError(f"unsupported activation {show(name)} (gelu* or silu)", field=key)


def _model_type(cfg: dict[str, Any]) -> str:
    mtype = cfg.get("model_type")
    if mtype is None:
        archs = cfg.get("architectures")
        if not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs):
            raise SpecError(f"must be a list of class names, got {show(archs)}", field="architectures")
        arch = archs[0].lower().replace("_", "")
        mtype = next((t for t in ("gpt_neox", "gpt2", "mixtral", "mistral", "qwen2", "llama", "bert")
                      if t.replace("_", "") in arch), None)
    if mtype not in SUPPORTED:
        raise SpecError(f"unsupported model_type {show(mtype)} (supported: {', '.join(SUPPORTED)})",
                        field="model_type")
    return mtype


def from_hf_config(cfg: dict[str, Any], name: str = "hf-model", seq_len: int | None = None) -> ModelSpec:
    """Translate a `config.json` dict; raises SpecError naming the field on anything unsupported."""
    if not isinstance(cfg, dict):
        raise SpecError("a Hugging Face config must be a JSON object")
    mtype = _model_type(cfg)
    r = _Reader(cfg)
    dropout_keys = ("resid_pdrop", "hidden_dropout", "hidden_dropout_prob", "attention_dropout")
    dropout = max(r.prob(k) for k in dropout_keys)

    if mtype == "gpt2":
        h = r.int("hidden", "n_embd", "hidden_size")
        npos = r.int("max_position", "n_positions", "max_position_embeddings")
        fields: dict[str, Any] = dict(
            num_layers=r.get("num_layers", "n_layer", "num_hidden_layers"), hidden=h,
            num_heads=r.get("num_heads", "n_head", "num_attention_heads"),
            ffn_hidden=r.get("ffn_hidden", "n_inner", default=4 * h),
            vocab_size=r.get("vocab_size", "vocab_size"), max_position=npos,
            activation=_act(r, "activation_function", "gelu_new"),
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
            activation=_act(r, "hidden_act", "gelu"),
            tied_embeddings=r.flag("tied_embeddings", "tie_word_embeddings", False),
            seq_len=seq_len or min(npos, DEFAULT_MAX_SEQ),
        )
    elif mtype == "bert":
        npos = r.int("max_position", "max_position_embeddings", default=512)
        fields = dict(
            num_layers=r.get("num_layers", "num_hidden_layers"), hidden=r.get("hidden", "hidden_size"),
            num_heads=r.get("num_heads", "num_attention_heads"),
            ffn_hidden=r.get("ffn_hidden", "intermediate_size"),
            vocab_size=r.get("vocab_size", "vocab_size"), max_position=npos, seq_len=seq_len or npos,
            activation=_act(r, "hidden_act", "gelu"), causal=False, head="mlm",
            type_vocab_size=r.get("type_vocab_size", "type_vocab_size", default=2), pooler=True,
            tied_embeddings=r.flag("tied_embeddings", "tie_word_embeddings", True),
        )
    else:  # Llama family: RMSNorm, SwiGLU, RoPE, no biases (Qwen2: q/k/v biases)
        npos = r.int(None, "max_position_embeddings", default=4096)
        heads = r.int("num_heads", "num_attention_heads")
        hidden = r.int("hidden", "hidden_size")
        head_dim = cfg.get("head_dim")
        if head_dim is not None and (isinstance(head_dim, bool) or not isinstance(head_dim, int)
                                     or head_dim * heads != hidden):
            raise SpecError(f"head_dim {show(head_dim)} x num_attention_heads {heads} != hidden_size "
                            f"{hidden} (decoupled head_dim is not supported)", field="head_dim")
        if cfg.get("shared_expert_intermediate_size"):
            raise SpecError("shared experts (Qwen2-MoE) are not supported: ModelSpec has routed experts only",
                            field="shared_expert_intermediate_size")
        # attention_bias puts biases on q/k/v/o, mlp_bias on the MLP; ModelSpec has qkv_bias for q/k/v
        # and `bias` for the out-projection and the MLP, so attention_bias alone leaves o_proj's bias
        # (hidden parameters per layer) uncounted.
        attention_bias = r.flag(None, "attention_bias", False)
        fields = dict(
            num_layers=r.get("num_layers", "num_hidden_layers"), hidden=hidden, num_heads=heads,
            num_kv_heads=r.get("num_kv_heads", "num_key_value_heads", default=heads),
            ffn_hidden=r.get("ffn_hidden", "moe_intermediate_size", "intermediate_size")
            if mtype == "qwen2_moe" else r.get("ffn_hidden", "intermediate_size"),
            vocab_size=r.get("vocab_size", "vocab_size"), activation=_act(r, "hidden_act", "silu"),
            norm="rmsnorm", position="rope", bias=r.flag("bias", "mlp_bias", False),
            qkv_bias=True if mtype in ("qwen2", "qwen2_moe") else attention_bias,
            tied_embeddings=r.flag("tied_embeddings", "tie_word_embeddings", False),
            seq_len=seq_len or min(npos, DEFAULT_MAX_SEQ),
        )
        experts = cfg.get("num_local_experts") or cfg.get("num_experts") or 0
        if experts:
            fields["num_experts"] = r.get("num_experts", "num_local_experts", "num_experts")
            fields["top_k"] = r.get("top_k", "num_experts_per_tok")
    fields["dropout"] = dropout
    raw_dtype = cfg.get("torch_dtype", cfg.get("dtype"))  # transformers >= 4.56 writes "dtype"
    dtype = _DTYPES.get(raw_dtype, "bf16") if isinstance(raw_dtype, str) else "bf16"
    try:
        return ModelSpec(name=name, dtype=dtype, source=f"Hugging Face config.json ({mtype})", **fields)
    except SpecError as exc:
        key = r.origin.get(exc.field or "")
        if key is None or key == exc.field:
            raise
        message = str(exc).removeprefix(f"{exc.field}: ")
        raise SpecError(f"{message} (ModelSpec field {exc.field})", field=key) from None
