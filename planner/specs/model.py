"""`ModelSpec`: *what* is being trained, as a validated, frozen description of a Transformer."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any

from planner.errors import SpecError

ACTIVATIONS = ("gelu", "swiglu")
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope", "alibi")
HEADS = ("lm", "mlm")
DTYPES = ("bf16", "fp16", "fp32")
QK_NORMS = ("none", "rmsnorm", "rmsnorm-noweight")  # Qwen3's per-head RMSNorm; Llama 4's weightless one

# Upper bounds that no real model reaches; they keep absurd inputs from overflowing arithmetic.
_LIMITS = {
    "num_layers": 100_000,
    "hidden": 1 << 20,
    "num_heads": 1 << 16,
    "num_kv_heads": 1 << 16,
    "ffn_hidden": 1 << 22,
    "vocab_size": 1 << 27,
    "seq_len": 1 << 26,
    "max_position": 1 << 26,
    "num_experts": 1 << 16,
    "top_k": 1 << 16,
    "type_vocab_size": 1 << 16,
    "head_width": 1 << 16,
    "q_lora_rank": 1 << 20,
    "kv_lora_rank": 1 << 20,
    "qk_nope_head_dim": 1 << 16,
    "qk_rope_head_dim": 1 << 16,
    "v_head_dim": 1 << 16,
    "sliding_window": 1 << 26,
    "attention_chunk": 1 << 26,
    "moe_ffn_hidden": 1 << 22,
    "shared_ffn_hidden": 1 << 22,
    "mtp_layers": 64,
}

# Fields added for the 2025 model families; `to_dict` leaves them out at their defaults so that the
# plans and model files of the other families keep their JSON (and hash) unchanged.
_FAMILY_DEFAULTS: dict[str, Any] = {
    "head_width": 0, "qk_norm": "none", "q_lora_rank": 0, "kv_lora_rank": 0, "qk_nope_head_dim": 0,
    "qk_rope_head_dim": 0, "v_head_dim": 0, "sliding_window": 0, "attention_chunk": 0, "window_layers": (),
    "nope_layers": (), "attention_sinks": False, "moe_ffn_hidden": 0, "shared_ffn_hidden": 0,
    "shared_expert_gate": False, "router_bias": False, "dense_layers": (), "mtp_layers": 0,
    "embedding_norm": False,
}


def show(value: Any, limit: int = 60) -> str:
    """A short repr for error messages: hostile values (huge ints, long strings) stay one short line."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"a {value.bit_length()}-bit integer"
    try:
        text = repr(value)
    except Exception:  # a repr that fails must not replace the SpecError being raised
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def show_key(key: Any) -> str:
    """A JSON key as it may appear in a one-line message and in `SpecError.field`."""
    return key if isinstance(key, str) and key.isprintable() and 0 < len(key) <= 60 else show(key)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"must be an integer, got {show(value)}", field=name)
    if value < minimum:
        raise SpecError(f"must be >= {minimum}, got {show(value)}", field=name)
    return check_plausible(name, value, name)


def check_plausible(name: str, value: int, field: str) -> int:
    """`value`, a size called `name`; SpecError at `field` (the key it was read from) beyond _LIMITS[name]."""
    limit = _LIMITS.get(name)
    if limit is not None and value > limit:
        raise SpecError(f"{show(value)} is beyond any plausible model (limit {limit})", field=field)
    return value


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise SpecError(f"must be one of {', '.join(choices)}, got {show(value)}", field=name)
    return value


def _check_layers(name: str, value: Any, num_layers: int) -> tuple[int, ...]:
    """A list of layer indices: integers in [0, num_layers), strictly increasing (no duplicates)."""
    if not isinstance(value, (list, tuple)):
        raise SpecError(f"must be a list of layer indices, got {show(value)}", field=name)
    out = tuple(value)
    for i in out:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_layers:
            raise SpecError(f"layer indices must be integers in [0, {num_layers}), got {show(i)}", field=name)
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise SpecError("layer indices must be strictly increasing", field=name)
    return out


def _check_float(name: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"must be a number, got {show(value)}", field=name)
    try:
        v = float(value)
    except OverflowError:  # an integer beyond the float range (JSON allows 400-digit numbers)
        raise SpecError(f"must be in [{lo}, {hi}], got {show(value)}", field=name) from None
    if not (lo <= v <= hi):
        raise SpecError(f"must be in [{lo}, {hi}], got {show(value)}", field=name)
    return v


@dataclass(frozen=True)
class ModelSpec:
    """A decoder (GPT/Llama/Mixtral/Qwen3/DeepSeek-V3/gpt-oss/Llama 4) or encoder (BERT) Transformer.

    Sizes follow the Megatron-LM notation: `hidden` = h, `num_heads` = a, `num_layers` = L,
    `vocab_size` = V, `seq_len` = s (the training sequence length). Layers may differ: an MoE model
    can keep dense MLPs in `dense_layers`, attention can be local (`window_layers`) or skip RoPE
    (`nope_layers`); the layer graph turns each distinct combination into a layer kind.
    """

    name: str
    num_layers: int
    hidden: int
    num_heads: int
    ffn_hidden: int
    vocab_size: int
    seq_len: int
    num_kv_heads: int = 0  # 0 means "same as num_heads" (MHA); fewer is GQA, 1 is MQA
    activation: str = "gelu"  # gelu: 2-matrix MLP; swiglu: gate, up and down matrices
    norm: str = "layernorm"
    position: str = "learned"  # learned absolute embeddings, rotary or ALiBi (the last two: no parameters)
    max_position: int = 0  # rows of the learned position table; 0 means seq_len
    tied_embeddings: bool = True
    bias: bool = True  # biases on the linear layers (LayerNorm always has weight and bias)
    qkv_bias: bool | None = None  # None means "same as bias" (Qwen2 has qkv bias only)
    causal: bool = True  # False for encoder-only models (BERT)
    head: str = "lm"  # lm: output projection to the vocabulary; mlm: BERT's transform + decoder
    type_vocab_size: int = 0  # BERT token-type embeddings
    pooler: bool = False  # BERT pooler (dense h x h on the first token)
    dropout: float = 0.0  # dropout probability; > 0 adds dropout masks to saved activations
    # a norm on the embedding output (BLOOM's word_embeddings_layernorm, Megatron-DeepSpeed's --embed-layernorm)
    embedding_norm: bool = False
    num_experts: int = 0  # 0: dense MLP; > 1: a mixture of experts in every layer
    top_k: int = 0  # experts per token
    capacity_factor: float = 1.0  # expert capacity = capacity_factor * tokens * top_k / num_experts
    dtype: str = "bf16"  # training precision of weights and activations
    # ---- attention variants ----
    head_width: int = 0  # width of one head; 0 means hidden / num_heads (Qwen3, gpt-oss, Llama 4 decouple it)
    qk_norm: str = "none"  # norm over each query and key head after the projections
    # Multi-head latent attention (DeepSeek-V2/V3, Kimi K2; on when kv_lora_rank > 0): queries through
    # a rank-q_lora_rank bottleneck (0: a plain projection), keys and values from a shared rank-
    # kv_lora_rank latent; each head's query/key = qk_nope_head_dim + qk_rope_head_dim (the rotary part
    # of the key is one head shared by all), its value v_head_dim.
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    sliding_window: int = 0  # window_layers: each query sees itself and the previous sliding_window - 1 keys
    attention_chunk: int = 0  # window_layers: attention within consecutive chunks of this many tokens (Llama 4)
    window_layers: tuple[int, ...] = ()  # layers with local (sliding-window or chunked) attention
    nope_layers: tuple[int, ...] = ()  # layers without rotary embedding (Llama 4: every fourth)
    attention_sinks: bool = False  # a learned logit per head in the softmax denominator (gpt-oss)
    # ---- mixture-of-experts variants ----
    moe_ffn_hidden: int = 0  # width of one routed expert; 0 means ffn_hidden
    shared_ffn_hidden: int = 0  # width of the shared expert MLP every token of an MoE layer passes (0: none)
    shared_expert_gate: bool = False  # a sigmoid gate (h -> 1) scales the shared expert (Qwen2-MoE)
    router_bias: bool = False  # the router linear has a bias (gpt-oss)
    dense_layers: tuple[int, ...] = ()  # layers of an MoE model with a dense ffn_hidden MLP instead
    mtp_layers: int = 0  # multi-token prediction modules after the last layer (DeepSeek-V3)
    source: str = ""  # where the numbers come from
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SpecError("must be a non-empty string", field="name")
        if not isinstance(self.source, str):
            raise SpecError(f"must be a string, got {type(self.source).__name__}", field="source")
        if not isinstance(self.extra, dict):
            raise SpecError(f"must be an object, got {type(self.extra).__name__}", field="extra")
        for f in ("num_layers", "hidden", "num_heads", "ffn_hidden", "vocab_size", "seq_len"):
            _check_int(f, getattr(self, f), 1)
        for f in ("num_kv_heads", "max_position", "num_experts", "top_k", "type_vocab_size", "head_width",
                  "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
                  "sliding_window", "attention_chunk", "moe_ffn_hidden", "shared_ffn_hidden", "mtp_layers"):
            _check_int(f, getattr(self, f), 0)
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("norm", self.norm, NORMS)
        _check_choice("position", self.position, POSITIONS)
        _check_choice("head", self.head, HEADS)
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("qk_norm", self.qk_norm, QK_NORMS)
        for f in ("tied_embeddings", "bias", "causal", "pooler", "attention_sinks", "shared_expert_gate",
                  "router_bias", "embedding_norm"):
            if not isinstance(getattr(self, f), bool):
                raise SpecError(f"must be true or false, got {show(getattr(self, f))}", field=f)
        if self.qkv_bias is None:
            object.__setattr__(self, "qkv_bias", self.bias)
        elif not isinstance(self.qkv_bias, bool):
            raise SpecError(f"must be true or false, got {show(self.qkv_bias)}", field="qkv_bias")
        _check_float("dropout", self.dropout, 0.0, 0.99)
        _check_float("capacity_factor", self.capacity_factor, 0.01, 1000.0)

        for f in ("window_layers", "nope_layers", "dense_layers"):
            object.__setattr__(self, f, _check_layers(f, getattr(self, f), self.num_layers))
        if self.num_kv_heads == 0:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.num_kv_heads > self.num_heads or self.num_heads % self.num_kv_heads:
            raise SpecError(
                f"num_kv_heads {self.num_kv_heads} must divide num_heads {self.num_heads}",
                field="num_kv_heads",
            )
        self._check_attention()
        if self.position == "learned":
            if self.max_position == 0:
                object.__setattr__(self, "max_position", self.seq_len)
            if self.seq_len > self.max_position:
                raise SpecError(
                    f"seq_len {self.seq_len} exceeds the learned position table "
                    f"({self.max_position} positions)",
                    field="seq_len",
                )
        if self.num_experts == 1:
            raise SpecError("use 0 for a dense model or >= 2 experts", field="num_experts")
        if self.num_experts:
            if not 1 <= self.top_k <= self.num_experts:
                raise SpecError(
                    f"top_k must be in [1, num_experts={self.num_experts}], got {self.top_k}",
                    field="top_k",
                )
        elif self.top_k:
            raise SpecError("top_k is set but the model has no experts", field="top_k")
        self._check_moe_and_mtp()

    def _check_attention(self) -> None:
        """Head sizes (plain or multi-head latent attention), local attention, RoPE-free layers."""
        mla = ("q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
        if self.kv_lora_rank:
            for f in mla[1:]:
                if not getattr(self, f):
                    raise SpecError("must be >= 1 with multi-head latent attention (kv_lora_rank > 0)", field=f)
            if self.num_kv_heads != self.num_heads:
                raise SpecError("multi-head latent attention has one key/value head per query head "
                                f"(num_kv_heads {self.num_kv_heads} != num_heads {self.num_heads})",
                                field="num_kv_heads")
            if self.position != "rope":
                raise SpecError("multi-head latent attention needs rotary positions", field="position")
            if self.head_width:
                raise SpecError("is qk_nope_head_dim + qk_rope_head_dim / v_head_dim with multi-head latent "
                                "attention", field="head_width")
            if self.qk_norm != "none":
                raise SpecError("is not modelled with multi-head latent attention", field="qk_norm")
        else:
            for f in mla:
                if getattr(self, f):
                    raise SpecError("needs multi-head latent attention (kv_lora_rank > 0)", field=f)
            if self.head_width == 0 and self.hidden % self.num_heads:
                raise SpecError(f"hidden {self.hidden} is not divisible by num_heads {self.num_heads} "
                                "(set head_width)", field="hidden")
        if self.sliding_window and self.attention_chunk:
            raise SpecError("a layer's local attention is a sliding window or chunks, not both",
                            field="attention_chunk")
        local = "sliding_window" if self.sliding_window else "attention_chunk" if self.attention_chunk else ""
        if local and not self.window_layers:
            raise SpecError(f"{local} is set but no layer uses it", field="window_layers")
        if self.window_layers and not local:
            raise SpecError("needs sliding_window or attention_chunk", field="window_layers")
        if local and not self.causal:
            raise SpecError("local attention is modelled for causal decoders only", field=local)
        if self.nope_layers and self.position != "rope":
            raise SpecError("RoPE-free layers need rotary positions elsewhere", field="nope_layers")
        if self.qk_norm != "none" and self.head != "lm":
            raise SpecError("is modelled for decoders only", field="qk_norm")

    def _check_moe_and_mtp(self) -> None:
        for f in ("moe_ffn_hidden", "shared_ffn_hidden", "shared_expert_gate", "router_bias", "dense_layers"):
            if getattr(self, f) and not self.is_moe:
                raise SpecError("is set but the model has no experts", field=f)
        if self.shared_expert_gate and not self.shared_ffn_hidden:
            raise SpecError("a shared-expert gate needs a shared expert (shared_ffn_hidden)",
                            field="shared_expert_gate")
        if self.dense_layers and len(self.dense_layers) == self.num_layers:
            raise SpecError("every layer is dense: use num_experts 0", field="dense_layers")
        if self.mtp_layers and (self.head != "lm" or not self.causal):
            raise SpecError("multi-token prediction needs a causal language model", field="mtp_layers")

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def head_dim(self) -> int:
        """Width of one head: head_width, hidden / num_heads, or with MLA the value head's (what
        Megatron-LM's kv_channels is for MLA: the attention output is num_heads x it)."""
        if self.is_mla:
            return self.v_head_dim
        return self.head_width or self.hidden // self.num_heads

    @property
    def qk_head_dim(self) -> int:
        """Width of one query (and key) head: head_dim, or MLA's nope + rope dims."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim if self.is_mla else self.head_dim

    @property
    def q_width(self) -> int:
        """Queries per token: heads x query head width."""
        return self.num_heads * self.qk_head_dim

    @property
    def attn_width(self) -> int:
        """Attention output per token (the out-projection's input): heads x value head width."""
        return self.num_heads * self.head_dim

    @property
    def kv_hidden(self) -> int:
        """Width of the K (and of the V) projection: kv_heads x head_dim. With MLA, whose keys and
        values differ in width, the mean of the two, so that 2 x kv_hidden is the K + V per token."""
        if self.is_mla:
            return self.num_heads * (self.qk_head_dim + self.v_head_dim) // 2
        return self.num_kv_heads * self.head_dim

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 1

    @property
    def expert_ffn(self) -> int:
        """Width of one routed expert's MLP."""
        return self.moe_ffn_hidden or self.ffn_hidden

    @property
    def family_features(self) -> list[str]:
        """The 2025-family fields this model sets (decoupled head width, MLA, q/k norm, local attention,
        sinks, RoPE-free layers, expert widths, shared experts, dense layers, MTP), for consumers that
        translate a ModelSpec field by field (the exports) and must say what they leave out."""
        return [f for f, default in _FAMILY_DEFAULTS.items() if getattr(self, f) != default]

    def layer_is_moe(self, i: int) -> bool:
        return self.is_moe and i not in self.dense_layers

    def layer_window(self, i: int) -> tuple[int, int]:
        """(sliding window, attention chunk) of layer i; (0, 0) for full attention."""
        if i in self.window_layers:
            return self.sliding_window, self.attention_chunk
        return 0, 0

    def layer_rope(self, i: int) -> bool:
        return self.position == "rope" and i not in self.nope_layers

    @property
    def params(self) -> int:
        """Total parameter count, summed over the layer graph (the single source of op sizes)."""
        from planner.graph import build_graph

        return build_graph(self).total_params

    @property
    def active_params(self) -> int:
        """Parameters a token passes through (differs from `params` for MoE)."""
        from planner.graph import build_graph

        return build_graph(self).active_params

    def with_seq_len(self, seq_len: int) -> ModelSpec:
        """The same model trained at another sequence length (validated again).

        A learned position table grows to cover a longer sequence (as a longer-context training run
        would configure it); rotary models have no table.
        """
        if self.position == "learned" and isinstance(seq_len, int) and seq_len > self.max_position:
            return dataclasses.replace(self, seq_len=seq_len, max_position=seq_len)
        return dataclasses.replace(self, seq_len=seq_len)

    def with_packed_samples(self, tokens: int) -> ModelSpec:
        """The same model trained on rows that pack whole samples of about `tokens` tokens, attention
        kept within each sample (fine-tuning on short examples: Transformer Engine's THD layout, or any
        block-diagonal causal mask). The linear layers still run every token of the row; attention costs
        as chunked attention of `tokens` on every layer. A sample as long as the row is the model itself."""
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise SpecError(f"must be a positive token count, got {tokens!r}", field="packed_samples")
        if tokens >= self.seq_len:
            return self
        if self.sliding_window or self.attention_chunk:
            raise SpecError("packed samples on a model with its own local (sliding-window or chunked) attention "
                            "are not modelled", field="packed_samples")
        if not self.causal:
            raise SpecError("packed samples are modelled for causal decoders only", field="packed_samples")
        return dataclasses.replace(self, name=f"{self.name}-packed{tokens}", attention_chunk=tokens,
                                   window_layers=tuple(range(self.num_layers)),
                                   source=f"{self.source}; attention within packed samples of ~{tokens} tokens")

    # ---- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not d["extra"]:
            d.pop("extra")
        for f, default in _FAMILY_DEFAULTS.items():
            if d[f] == default:
                d.pop(f)
            elif isinstance(d[f], tuple):
                d[f] = list(d[f])
        return d

    @classmethod
    def from_dict(cls, data: Any, source: str = "model") -> ModelSpec:
        """Build from a JSON object; unknown or mistyped fields are errors that name the field."""
        if not isinstance(data, dict):
            raise SpecError(f"{show(source)}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(show_key(k) for k in data if k not in known)
        if unknown:
            raise SpecError(f"{show(source)}: unknown field(s) {', '.join(unknown)}", field=unknown[0])
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
            and f.name not in data
        ]
        if missing:
            raise SpecError(f"{show(source)}: missing required field(s) {', '.join(missing)}",
                            field=missing[0])
        return cls(**data)
