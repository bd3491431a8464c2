"""`ModelSpec`: *what* is being trained, as a validated, frozen description of a Transformer."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from planner.errors import SpecError

ACTIVATIONS = ("gelu", "swiglu")
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope")
HEADS = ("lm", "mlm")
DTYPES = ("bf16", "fp16", "fp32")

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
    limit = _LIMITS.get(name)
    if limit is not None and value > limit:
        raise SpecError(f"{show(value)} is beyond any plausible model (limit {limit})", field=name)
    return value


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise SpecError(f"must be one of {', '.join(choices)}, got {show(value)}", field=name)
    return value


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
    """A decoder (GPT/Llama/Mixtral) or encoder (BERT) Transformer.

    Sizes follow the Megatron-LM notation: `hidden` = h, `num_heads` = a, `num_layers` = L,
    `vocab_size` = V, `seq_len` = s (the training sequence length).
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
    position: str = "learned"  # learned absolute embeddings or rotary (no parameters)
    max_position: int = 0  # rows of the learned position table; 0 means seq_len
    tied_embeddings: bool = True
    bias: bool = True  # biases on the linear layers (LayerNorm always has weight and bias)
    qkv_bias: bool | None = None  # None means "same as bias" (Qwen2 has qkv bias only)
    causal: bool = True  # False for encoder-only models (BERT)
    head: str = "lm"  # lm: output projection to the vocabulary; mlm: BERT's transform + decoder
    type_vocab_size: int = 0  # BERT token-type embeddings
    pooler: bool = False  # BERT pooler (dense h x h on the first token)
    dropout: float = 0.0  # dropout probability; > 0 adds dropout masks to saved activations
    num_experts: int = 0  # 0: dense MLP; > 1: a mixture of experts in every layer
    top_k: int = 0  # experts per token
    capacity_factor: float = 1.0  # expert capacity = capacity_factor * tokens * top_k / num_experts
    dtype: str = "bf16"  # training precision of weights and activations
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
        for f in ("num_kv_heads", "max_position", "num_experts", "top_k", "type_vocab_size"):
            _check_int(f, getattr(self, f), 0)
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("norm", self.norm, NORMS)
        _check_choice("position", self.position, POSITIONS)
        _check_choice("head", self.head, HEADS)
        _check_choice("dtype", self.dtype, DTYPES)
        for f in ("tied_embeddings", "bias", "causal", "pooler"):
            if not isinstance(getattr(self, f), bool):
                raise SpecError(f"must be true or false, got {show(getattr(self, f))}", field=f)
        if self.qkv_bias is None:
            object.__setattr__(self, "qkv_bias", self.bias)
        elif not isinstance(self.qkv_bias, bool):
            raise SpecError(f"must be true or false, got {show(self.qkv_bias)}", field="qkv_bias")
        _check_float("dropout", self.dropout, 0.0, 0.99)
        _check_float("capacity_factor", self.capacity_factor, 0.01, 1000.0)

        if self.hidden % self.num_heads:
            raise SpecError(
                f"hidden {self.hidden} is not divisible by num_heads {self.num_heads}", field="hidden"
            )
        if self.num_kv_heads == 0:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.num_kv_heads > self.num_heads or self.num_heads % self.num_kv_heads:
            raise SpecError(
                f"num_kv_heads {self.num_kv_heads} must divide num_heads {self.num_heads}",
                field="num_kv_heads",
            )
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

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden // self.num_heads

    @property
    def kv_hidden(self) -> int:
        """Width of the K (and of the V) projection: kv_heads x head_dim."""
        return self.num_kv_heads * self.head_dim

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 1

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

    # ---- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not d["extra"]:
            d.pop("extra")
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
