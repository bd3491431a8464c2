"""KV-cache sizing: bytes per token per layer for each attention kind, and paged capacity -> concurrency.

Why a module of its own: KV-cache capacity decides how many requests a serving engine can batch, and
misjudging it is the commonest way a generated serving configuration runs out of memory. Each
attention kind caches something different per token and layer (one function each, so a new kind is
one more function and one line in `layer_kv`):

- multi-head / grouped-query attention (Vaswani et al. 2017; Ainslie et al. 2023, GQA): K and V for
  every KV head: ``2 x kv_heads x head_dim`` elements. Tensor parallelism splits the KV heads; when
  TP exceeds the KV-head count, each rank keeps one head (vLLM and SGLang replicate KV heads then).
- multi-head latent attention (DeepSeek-AI 2024, DeepSeek-V2 Sec. 2.1; DeepSeek-V3 config
  ``kv_lora_rank`` 512, ``qk_rope_head_dim`` 64): the compressed latent c_KV plus the decoupled RoPE
  key, ``kv_lora_rank + qk_rope_head_dim`` elements, shared by all heads, so TP ranks each hold the
  whole latent (which is why engines pair MLA with attention data parallelism).
- sliding-window attention (Beltagy et al. 2020; Mistral 7B; gpt-oss alternates sliding / full
  layers): as GQA, but a layer keeps at most ``window`` tokens.

Paged KV cache (Kwon et al. 2023, "Efficient Memory Management for Large Language Model Serving with
PagedAttention", SOSP): memory is allocated in blocks of `block_size` tokens (vLLM default 16), so a
request of n tokens holds ceil(n / block_size) blocks per layer. Max concurrency is the KV pool
divided by what one request holds at its full length (isl + osl), i.e. no request is ever preempted.

Model fields: the sizes come from `ModelSpec` (num_kv_heads, head_dim; MLA's kv_lora_rank and
qk_rope_head_dim; window_layers with sliding_window or attention_chunk). A field the spec does not set
is also looked up in `ModelSpec.extra` under its Hugging Face config name (kv_lora_rank,
sliding_window with layer_types), so a config imported without those fields still sizes its cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from planner.specs.model import ModelSpec

KV_DTYPE_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0}
KV_DTYPES = tuple(KV_DTYPE_BYTES)
DEFAULT_BLOCK_SIZE = 16  # vLLM's default --block-size (tokens per KV block)


@dataclass(frozen=True)
class LayerKV:
    """What one layer caches per token.

    `bytes_per_token`: unsharded, the whole layer; `heads`: how many KV heads tensor parallelism can
    split the cache over (0: nothing to split, every TP rank holds all of it); `window`: tokens kept
    (None: the whole context).
    """

    kind: str
    bytes_per_token: float
    heads: int
    window: int | None = None

    def bytes_per_gpu_token(self, tp: int) -> float:
        """Bytes per cached token one TP rank holds: ceil(heads / tp) of the heads (at least one)."""
        if not self.heads:
            return self.bytes_per_token
        return self.bytes_per_token * math.ceil(self.heads / tp) / self.heads

    def tokens_held(self, context: int) -> int:
        """Tokens of a `context`-token sequence this layer keeps."""
        return context if self.window is None else min(context, self.window)


def spec_field(model: ModelSpec, name: str, default: Any = None) -> Any:
    """A model field that not every family has: the spec's attribute when set (non-zero, non-empty),
    else `extra[name]` (a Hugging Face config's name for it), else `default`."""
    value = getattr(model, name, None)
    if not value:
        value = model.extra.get(name) or value
    return default if value is None else value


def gqa_layer(model: ModelSpec, kv_bytes: float) -> LayerKV:
    """MHA / GQA / MQA: K and V of every KV head."""
    return LayerKV("gqa", 2.0 * model.num_kv_heads * model.head_dim * kv_bytes, model.num_kv_heads)


def mla_layer(model: ModelSpec, kv_bytes: float) -> LayerKV:
    """Multi-head latent attention: the kv latent plus the decoupled rope key, shared by all heads."""
    rank = int(spec_field(model, "kv_lora_rank"))
    rope = int(spec_field(model, "qk_rope_head_dim", 0))
    return LayerKV("mla", float(rank + rope) * kv_bytes, 0)


def sliding_layer(model: ModelSpec, kv_bytes: float, window: int) -> LayerKV:
    """Sliding-window GQA: as `gqa_layer`, holding at most `window` tokens."""
    full = gqa_layer(model, kv_bytes)
    return LayerKV("sliding", full.bytes_per_token, full.heads, window)


def _local_window(model: ModelSpec, layer: int) -> int | None:
    """Tokens `layer` keeps if its attention is local, else None.

    The spec's `window_layers` with `sliding_window` (each query sees the last `sliding_window` keys)
    or `attention_chunk` (Llama 4's chunked attention: keys of the current chunk only, at most
    `attention_chunk`); else a Hugging Face config's `sliding_window` with `layer_types` (gpt-oss) or
    on every layer (Mistral), unless `use_sliding_window` is false (Qwen).
    """
    window_of = getattr(model, "layer_window", None)
    if window_of is not None and getattr(model, "window_layers", ()):
        window, chunk = window_of(layer)
        return int(window or chunk) if (window or chunk) else None
    window = model.extra.get("sliding_window")
    if not window or model.extra.get("use_sliding_window", True) is False:
        return None
    types = model.extra.get("layer_types")
    if types:
        return int(window) if types[layer] == "sliding_attention" else None
    return int(window)


def layer_kv(model: ModelSpec, layer: int, kv_dtype: str) -> LayerKV:
    """What layer `layer` of `model` caches per token in `kv_dtype` (one function per attention kind)."""
    b = KV_DTYPE_BYTES[kv_dtype]
    if spec_field(model, "kv_lora_rank"):
        return mla_layer(model, b)
    window = _local_window(model, layer)
    if window is not None:
        return sliding_layer(model, b, window)
    return gqa_layer(model, b)


def model_kv(model: ModelSpec, kv_dtype: str) -> tuple[LayerKV, ...]:
    """Every layer's cache description, in layer order."""
    return tuple(layer_kv(model, i, kv_dtype) for i in range(model.num_layers))


def kv_bytes_per_token(model: ModelSpec, kv_dtype: str) -> float:
    """Bytes the whole model caches per token of context (no window applied, no sharding)."""
    return sum(layer.bytes_per_token for layer in model_kv(model, kv_dtype))


def stage_layers(num_layers: int, pp: int, stage: int) -> range:
    """Layers of pipeline stage `stage` of `pp` (the first stages take the remainder, as vLLM does)."""
    base, extra = divmod(num_layers, pp)
    start = stage * base + min(stage, extra)
    return range(start, start + base + (1 if stage < extra else 0))


def request_kv_bytes_per_gpu(layers: tuple[LayerKV, ...], context: int, tp: int,
                             block_size: int = DEFAULT_BLOCK_SIZE) -> float:
    """Bytes of paged KV cache one GPU holds for one request of `context` tokens over `layers`."""
    total = 0.0
    for layer in layers:
        blocks = math.ceil(layer.tokens_held(context) / block_size)
        total += blocks * block_size * layer.bytes_per_gpu_token(tp)
    return total


def read_bytes_per_gpu(layers: tuple[LayerKV, ...], context: int, tp: int) -> float:
    """Bytes of KV cache one decode step reads for one sequence of `context` tokens (one GPU)."""
    return sum(layer.tokens_held(context) * layer.bytes_per_gpu_token(tp) for layer in layers)


def max_concurrency(pool_bytes: float, per_request_bytes: float) -> int:
    """Requests a KV pool holds at once (each at its full length): floor(pool / per request)."""
    if per_request_bytes <= 0:
        return 1 << 30
    return max(0, int(pool_bytes // per_request_bytes))


def context_limit(model: ModelSpec) -> int:
    """The longest sequence the model serves: `max_position_embeddings` when the config gives it, else
    the learned position table or the training sequence length."""
    extra = spec_field(model, "max_position_embeddings")
    if extra:
        return int(extra)
    if model.position == "learned":
        return model.max_position
    return model.seq_len
