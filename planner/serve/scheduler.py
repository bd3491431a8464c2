"""The request scheduler of one serving engine: continuous batching with chunked prefill.

Why one module: the planner's stream simulation and the executor's real serving loop run *this*
scheduler, so a predicted and a measured run batch the same requests the same way, step for step.

Policy (vLLM V1's default scheduler; Sarathi-Serve, Agrawal et al. 2024, "Taming Throughput-Latency
Tradeoff in LLM Inference with Sarathi-Serve", OSDI): every step has a token budget (`chunk_size`,
vLLM's --max-num-batched-tokens). Each running sequence first gets one decode token; the rest of
the budget goes to prompt tokens: the request whose prompt is partly prefilled continues, then
waiting requests are admitted first-come-first-served while the running requests stay within
`max_batch` (--max-num-seqs) and the KV cache has room for the new request at its full length
(`kv_slots`; no preemption). The step that finishes a prompt samples the request's first token
(continuous batching, Yu et al. 2022, "Orca", OSDI); each later step samples one more token until
`osl` tokens are out.

Requests all have the same prompt (isl) and output (osl) lengths, so decoding sequences finish in the
order they started: a decode counter gives each one its finishing step, and a step costs O(1) plus
its admissions and completions (`decode_ctx` is the running sum of the decoding sequences' contexts).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class Request:
    """One request and its timeline (seconds from the start of the stream)."""

    id: int
    arrival: float
    prefill_left: int  # prompt tokens still to prefill
    prefilled: int = 0  # prompt tokens already in the KV cache
    generated: int = 0  # output tokens sampled so far
    first_token: float | None = None
    finish: float | None = None
    finish_count: int = 0  # the decode counter value at which it has all osl tokens

    @property
    def ttft(self) -> float:
        assert self.first_token is not None
        return self.first_token - self.arrival


@dataclass
class Chunk:
    """`tokens` prompt tokens of `request` after `prior` already cached ones."""

    request: Request
    tokens: int
    prior: int


@dataclass
class Batch:
    """What one engine step runs."""

    decode: int  # decoding sequences (one token each)
    decode_ctx: float  # their summed context lengths (keys each new token attends to)
    chunks: list[Chunk] = field(default_factory=list)

    @property
    def prefill_tokens(self) -> int:
        return sum(c.tokens for c in self.chunks)

    @property
    def tokens(self) -> int:
        return self.decode + self.prefill_tokens

    def sampled(self, isl: int) -> int:
        """Sequences that sample a token in this step: the decodes and the prompts it finishes."""
        return self.decode + sum(1 for c in self.chunks if c.prior + c.tokens == isl)

    def pairs(self, window: int | None = None) -> float:
        """Causal query-key pairs of the prefill chunks: c (p + c/2) each (capped at the window)."""
        if window is None:
            return sum(c.tokens * (c.prior + c.tokens / 2.0) for c in self.chunks)
        return sum(c.tokens * min(c.prior + c.tokens / 2.0, float(window)) for c in self.chunks)

    @property
    def empty(self) -> bool:
        return self.decode == 0 and not self.chunks


class Scheduler:
    """One engine's scheduler (see the module docstring).

    `prefilled=True` makes it a disaggregated decode engine: requests arrive with their prompt in the
    KV cache and their first token sampled by the prefill engine (`generated` 1, `first_token` set:
    DistServe's definition of TTFT), and only decode here.
    """

    def __init__(self, isl: int, osl: int, max_batch: int, chunk_size: int, kv_slots: int,
                 prefilled: bool = False) -> None:
        if chunk_size < max_batch and not prefilled:
            raise ValueError(f"chunk_size {chunk_size} < max_batch {max_batch}")
        self.isl, self.osl = isl, osl
        self.max_batch, self.chunk_size = max_batch, chunk_size
        self.slots = max(1, min(max_batch, kv_slots))
        self.prefilled = prefilled
        self.waiting: deque[Request] = deque()
        self.prefilling: deque[Request] = deque()
        self.decoding: deque[Request] = deque()
        self.counter = 0  # decode steps run so far
        self.decode_ctx = 0.0
        self.finished: list[Request] = []
        self.first_tokens: list[Request] = []  # requests whose first token the last step sampled

    # ---- queue ---------------------------------------------------------------------------------

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    @property
    def running(self) -> int:
        return len(self.prefilling) + len(self.decoding)

    def admissible(self) -> bool:
        """Whether a waiting request could start in the next step."""
        return bool(self.waiting) and self.running < self.slots

    @property
    def idle(self) -> bool:
        return not (self.waiting or self.prefilling or self.decoding)

    # ---- one step ------------------------------------------------------------------------------

    def _join_decoding(self, r: Request) -> None:
        r.finish_count = self.counter + (self.osl - r.generated)
        self.decoding.append(r)
        self.decode_ctx += self.isl + r.generated

    def plan(self) -> Batch:
        """The next step's batch (admits waiting requests; call `complete` after running it)."""
        if self.prefilled:
            while self.waiting and self.running < self.slots:
                self._join_decoding(self.waiting.popleft())
            return Batch(decode=len(self.decoding), decode_ctx=self.decode_ctx)
        budget = self.chunk_size - len(self.decoding)
        chunks: list[Chunk] = []
        for r in self.prefilling:
            if budget <= 0:
                break
            c = min(r.prefill_left, budget)
            chunks.append(Chunk(r, c, r.prefilled))
            budget -= c
        while budget > 0 and self.waiting and self.running < self.slots:
            r = self.waiting.popleft()
            self.prefilling.append(r)
            c = min(r.prefill_left, budget)
            chunks.append(Chunk(r, c, r.prefilled))
            budget -= c
        return Batch(decode=len(self.decoding), decode_ctx=self.decode_ctx, chunks=chunks)

    def complete(self, batch: Batch, end: float) -> None:
        """Account for `batch` having finished at time `end`."""
        self.first_tokens = []
        if batch.decode:
            self.counter += 1
            self.decode_ctx += batch.decode
            self._finish_due(end)
        for c in batch.chunks:
            r = c.request
            r.prefill_left -= c.tokens
            r.prefilled += c.tokens
            if r.prefill_left == 0:
                self.prefilling.remove(r)
                r.generated = 1
                r.first_token = end
                self.first_tokens.append(r)
                if r.generated >= self.osl:
                    r.finish = end
                    self.finished.append(r)
                else:
                    self._join_decoding(r)

    def _finish_due(self, end: float) -> None:
        while self.decoding and self.decoding[0].finish_count <= self.counter:
            r = self.decoding.popleft()
            r.generated = self.osl
            r.finish = end
            self.decode_ctx -= self.isl + self.osl
            self.finished.append(r)

    def advance_decode(self, steps: int, end: float) -> None:
        """Account for `steps` pure-decode steps (no admissions) ending at `end` (the last one):
        the simulation's fast-forward between events; sequences due earlier never exist (a stretch
        ends at the first completion)."""
        self.counter += steps
        self.decode_ctx += steps * len(self.decoding)
        self._finish_due(end)

    def steps_to_next_finish(self) -> int:
        """Pure-decode steps until the next decoding sequence has all its tokens."""
        return self.decoding[0].finish_count - self.counter if self.decoding else 0
