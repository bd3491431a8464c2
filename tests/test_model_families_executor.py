"""The 2025 families in the executor: tiny instances against the planner's graph and against
reference computations, in one process.

- FLOPs: one forward + backward counted by `torch.utils.flop_counter.FlopCounterMode` equals 3 x the
  graph's forward FLOPs (the convention of tests/test_crosscheck.py: matmul-family ops at 2 FLOPs per
  multiply-add, backward = 2 x forward, SDPA under its math backend), within 1%.
- Local attention, sinks and MLA compute what their definitions say (against an explicit masked
  softmax written here), and no layer looks ahead.
Multi-rank runs (tp / dp / pp / ep) of the same instances: tests/test_model_families_dist.py.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent / "executor_workers"))

from families import FAMILIES

from executor.model import AttentionCore, build_model
from executor.trainer import MTP_LOSS_WEIGHT, loss_fn
from planner.graph import build_graph

FLOPS_RTOL = 0.01


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _tokens(vocab: int, batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq + 1), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("flash", [False, True], ids=["math", "flash"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_graph_flops_equal_flop_counter(family: str, flash: bool) -> None:
    spec = FAMILIES[family]
    b, s = 2, spec.seq_len
    model = build_model(spec, flash, seed=0)
    x = _tokens(spec.vocab_size, b, s)
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        loss_fn(model(x[:, :-1]), x[:, 1:]).backward()
    predicted = 3 * build_graph(spec, "fp32", flash).forward_flops(b, s)
    assert counter.get_total_flops() == pytest.approx(predicted, rel=FLOPS_RTOL), family


@pytest.mark.parametrize("family", ["gpt-oss", "llama4", "deepseek-v3"])
def test_local_attention_counts_only_the_keys_it_sees(family: str) -> None:
    """The windowed / chunked layers' FLOPs are what the graph counts for them and less than full
    attention's: the same model with every layer full costs more, by the graph's difference."""
    spec = FAMILIES[family]
    full = dataclasses.replace(spec, sliding_window=0, attention_chunk=0, window_layers=())
    b, s = 2, spec.seq_len
    counts = []
    for m in (spec, full):
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
            build_model(m, flash_attention=False, seed=0)(_tokens(m.vocab_size, b, s)[:, :-1])
        counts.append(counter.get_total_flops())
    saved = build_graph(full, "fp32").forward_flops(b, s) - build_graph(spec, "fp32").forward_flops(b, s)
    assert counts[1] - counts[0] == pytest.approx(saved, rel=1e-9)
    assert (saved > 0) == bool(spec.window_layers)


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
               sinks: torch.Tensor | None) -> torch.Tensor:
    """softmax over the allowed keys (and a sink logit per head in the denominator) times V."""
    scores = (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~allowed, float("-inf"))
    if sinks is not None:
        scores = torch.cat([scores, sinks.view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)], dim=-1)
    return F.softmax(scores, dim=-1)[..., :allowed.shape[-1]] @ v


@pytest.mark.parametrize(("window", "chunk", "sinks"), [(4, 0, True), (4, 0, False), (0, 8, False), (0, 5, False),
                                                          (0, 0, True), (32, 0, False)])
@pytest.mark.parametrize("flash", [False, True])
def test_attention_core_variants_equal_the_masked_softmax(window: int, chunk: int, sinks: bool, flash: bool) -> None:
    t = 16
    spec = dataclasses.replace(FAMILIES["gpt-oss"], attention_sinks=sinks)
    core = AttentionCore(spec, flash, window, chunk)
    if sinks:
        torch.nn.init.normal_(core.sinks)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 4, t, 16, generator=g) for _ in range(3))
    i, j = torch.arange(t).unsqueeze(1), torch.arange(t)
    allowed = j <= i
    if window:
        allowed &= i - j < window
    if chunk:
        allowed &= i // chunk == j // chunk
    want = _reference(q, k, v, allowed, core.sinks.detach() if sinks else None)
    torch.testing.assert_close(core(q, k, v), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_no_layer_looks_ahead(family: str) -> None:
    spec = FAMILIES[family]
    model = build_model(spec, seed=1)
    x = _tokens(spec.vocab_size, 1, spec.seq_len)[:, :-1]
    y = x.clone()
    y[0, -1] = (y[0, -1] + 1) % spec.vocab_size
    t = spec.seq_len
    a, b = model(x)[:, :t], model(y)[:, :t]  # the model's own logits (MTP's follow)
    torch.testing.assert_close(a[0, :-1], b[0, :-1])
    assert not torch.allclose(a[0, -1], b[0, -1])


@pytest.mark.parametrize("family", ["deepseek-v3", "gpt-oss", "llama4", "qwen3-moe"])
def test_math_attention_equals_sdpa(family: str) -> None:
    spec = FAMILIES[family]
    x = _tokens(spec.vocab_size, 2, spec.seq_len)[:, :-1]
    torch.testing.assert_close(build_model(spec, True, seed=3)(x), build_model(spec, False, seed=3)(x),
                               rtol=1e-5, atol=1e-5)


def test_mtp_logits_and_loss() -> None:
    """DeepSeek-V3's MTP: the model returns its logits, then depth 1's (predicting one token further);
    the loss adds MTP_LOSS_WEIGHT x depth 1's cross-entropy over the positions that have a target."""
    spec = FAMILIES["deepseek-v3"]
    model = build_model(spec, seed=0)
    x = _tokens(spec.vocab_size, 2, spec.seq_len)
    logits = model(x[:, :-1])
    t = spec.seq_len
    assert logits.shape == (2, 2 * t, spec.vocab_size)
    y = x[:, 1:]
    main = F.cross_entropy(logits[:, :t].flatten(0, 1), y.flatten(0, 1))
    mtp = F.cross_entropy(logits[:, t:2 * t - 1].flatten(0, 1), y[:, 1:].flatten(0, 1))
    torch.testing.assert_close(loss_fn(logits, y), main + MTP_LOSS_WEIGHT * mtp)
    # Without the MTP module, the same weights give the same main logits.
    plain = build_model(dataclasses.replace(spec, mtp_layers=0), seed=0)
    torch.testing.assert_close(plain(x[:, :-1]), logits[:, :t])
