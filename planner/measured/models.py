"""The models the published runs trained that are not catalog presets, from their published configs.

They stay out of `planner/data/models.json` on purpose: each uses an architecture detail `ModelSpec`
cannot state yet (squared-ReLU or GeGLU MLPs, a benchmark-only tokenizer), so a preset would export the
wrong architecture. For *cost* each is represented by the ModelSpec with the same parameters and GEMMs
(a squared-ReLU MLP has the two matrices of the "gelu" MLP; GeGLU the three of "swiglu"), which every
`source` below says. BLOOM's variants state their ALiBi positions (`position="alibi"`), which no
exporter target implements (they refuse them).
"""

from __future__ import annotations

import dataclasses

from planner.specs.catalog import model_names, model_preset
from planner.specs.model import ModelSpec

_NEMOTRON = ("Nemotron-4 (Parmar et al. 2024, arXiv 2402.16819; NVIDIA 2024, arXiv 2406.11704); run config "
             "NVIDIA/dgxc-benchmarking v24.11.1 nemotron/nemotron4-{size}-synth.yaml: squared-ReLU MLP "
             "(costed as the 2-matrix 'gelu' MLP), LayerNorm1p, RoPE, no biases, untied embeddings, "
             "256k SentencePiece vocabulary")

MODELS: dict[str, ModelSpec] = {
    # 15.6B: 3.2B embedding + 12.5B non-embedding parameters (Parmar et al. 2024, Table 1 and section 2)
    "nemotron4-15b": ModelSpec(
        name="nemotron4-15b", num_layers=32, hidden=6144, num_heads=48, num_kv_heads=8, ffn_hidden=24576,
        vocab_size=256000, seq_len=4096, activation="gelu", norm="layernorm", position="rope",
        tied_embeddings=False, bias=False, source=_NEMOTRON.format(size="15b")),
    # 341B: 9.4B embedding + 331.6B non-embedding parameters (NVIDIA 2024, Nemotron-4 340B report, Table 1)
    "nemotron4-340b": ModelSpec(
        name="nemotron4-340b", num_layers=96, hidden=18432, num_heads=96, num_kv_heads=8, ffn_hidden=73728,
        vocab_size=256000, seq_len=4096, activation="gelu", norm="layernorm", position="rope",
        tied_embeddings=False, bias=False, source=_NEMOTRON.format(size="340b")),
    # The NeMo "Grok 1 314b" benchmark: Grok-1's shape (xai-org/grok-1: 64 layers, 6144 hidden, 48 heads,
    # 8 KV heads, 8 experts top-2, FFN 32768) with the Llama 3 tokenizer.
    "grok1-314b-nemo": ModelSpec(
        name="grok1-314b-nemo", num_layers=64, hidden=6144, num_heads=48, num_kv_heads=8, ffn_hidden=32768,
        vocab_size=128256, seq_len=8192, activation="swiglu", norm="rmsnorm", position="rope",
        tied_embeddings=False, bias=False, num_experts=8, top_k=2, capacity_factor=1.0,
        source="NVIDIA/dgxc-benchmarking v24.11.1 grok1/grok1_314b.yaml (NeMo, Grok-1 shape per "
               "xai-org/grok-1; tokenizer meta-llama/Meta-Llama-3-70B = 128256; fast-geglu costed as the "
               "gated 3-matrix MLP; moe_expert_capacity_factor 1.0 with padding)"),
    # NeMo 24.09 Llama 3.1 405B benchmark config: 16 query groups and the GPT-2 BPE tokenizer (50257,
    # padded by Megatron to a multiple of 128 x TP = 1024 at TP 8: 51200).
    "llama3.1-405b-dgxc2409": ModelSpec(
        name="llama3.1-405b-dgxc2409", num_layers=126, hidden=16384, num_heads=128, num_kv_heads=16,
        ffn_hidden=53248, vocab_size=51200, seq_len=8192, activation="swiglu", norm="rmsnorm",
        position="rope", tied_embeddings=False, bias=False,
        source="NVIDIA/dgxc-benchmarking v24.11.1 and v25.03 llama3.1/llama3.1_405b.yaml "
               "(num_query_groups 16, GPT2BPETokenizer, make_vocab_size_divisible_by 128)"),
    # PaxML GPT-5B (google/paxml paxml/contrib/gpu/scripts_gpu/configs.py class GPT5B): 24 layers, 4096
    # model dims, 32 heads x 128, 16384 hidden dims, vocab 50304, learned positions, GELU, biases, tied.
    "paxml-gpt5b": ModelSpec(
        name="paxml-gpt5b", num_layers=24, hidden=4096, num_heads=32, ffn_hidden=16384, vocab_size=50304,
        seq_len=2048, dropout=0.1,
        source="google/paxml paxml/contrib/gpu/scripts_gpu/configs.py GPT5B (Pile126M defaults: "
               "VOCAB_SIZE 50304, MAX_SEQ_LEN 2048, TRAINABLE_POSITION_EMB, USE_BIAS, GELU)"),
}

_BLOOM_SOURCE = ("BLOOM prequel shape (bigscience-workshop/bigscience train/tr11-176B-ml/chronicles-prequel.md "
                 "@ 59a90ee): GPT with LayerNorm, GELU, biases, tied embeddings, vocabulary padded to 250880 "
                 "(tr11-176B-ml.slurm); ALiBi positions (train/tr11-200B-ml/tr11-200B-ml.slurm, the prequel's "
                 "script: --position-embedding-type alibi); dropout 0.1 on the attention probabilities and the "
                 "hidden states (train/tr11-176B-ml/README.md: 'The default Megatron-LM dropout settings are "
                 "inherited: --attention-dropout 0.1, --hidden-dropout 0.1'); a LayerNorm on the embedding "
                 "output (the same script's --embed-layernorm, since commit 628b562 of 2022-02-05, before the "
                 "prequel's 02-17 measurements)")


def bloom_shape(hidden: int, layers: int, heads: int) -> ModelSpec:
    """A BLOOM-prequel variant (the final BLOOM-176B is hidden 14336, 70 layers, 112 heads)."""
    return ModelSpec(name=f"bloom-h{hidden}-l{layers}-a{heads}", num_layers=layers, hidden=hidden,
                     num_heads=heads, ffn_hidden=4 * hidden, vocab_size=250880, seq_len=2048, dropout=0.1,
                     position="alibi", embedding_norm=True, source=_BLOOM_SOURCE)


def known(name: str) -> bool:
    """Whether `name` is a catalog preset, one of MODELS or a BLOOM shape ("bloom:HIDDEN:LAYERS:HEADS")."""
    return name in MODELS or name.startswith("bloom:") or name in model_names()


def model_spec(name: str, seq_len: int, num_layers: int | None = None) -> ModelSpec:
    """The model of a run: a catalog preset, one of MODELS or a BLOOM shape, at the run's sequence length
    and, for reduced-layer proxies, with its layer count."""
    if name.startswith("bloom:"):
        hidden, layers, heads = (int(x) for x in name.split(":")[1:])
        base = bloom_shape(hidden, layers, heads)
    else:
        base = MODELS[name] if name in MODELS else model_preset(name)
    spec = base.with_seq_len(seq_len)
    if num_layers is not None and num_layers != spec.num_layers:
        spec = dataclasses.replace(spec, name=f"{spec.name}-{num_layers}l", num_layers=num_layers,
                                   source=f"{spec.source}; proxy with {num_layers} layers")
    return spec
