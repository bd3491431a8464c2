"""Which layers each pipeline stage holds, and the stage classes the vectorised cost model prices.

A plan with pp pipeline ranks and vpp model chunks per rank has G = pp·vpp virtual stages; virtual
stage g = chunk·pp + rank holds a contiguous run of layers (Megatron-LM's interleaved assignment,
Narayanan et al. 2021 Sec. 2.2: chunk c of rank r holds layers from (c·pp + r)·L/G). The first virtual
stage also embeds, the last also runs the final norm, the LM head and the loss.

The closed-form model needs, per rank, how many layers of each kind it holds and whether it carries
the embedding or the head. Ranks with the same counts and extras form a *class*; for a uniform model
split evenly there are at most three (the first rank, the middle ranks, the last rank), so the
vectorised model prices a few classes instead of every rank. A class's `first_rank` is its lowest
rank: under every schedule, lower ranks keep at least as many micro-batches in flight, so that rank
has the class's peak activation memory.

A class is *dominated* when another holds the same layers, every extra it holds (embedding, head) and
a lower first rank: its time, data-parallel traffic, optimizer step and memory are never larger, so
the maxima the closed form takes need only the others. Classes are ordered with the non-dominated
first (for an even split of a uniform model: the first and the last rank; the middle ranks are
dominated by the first).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

Array = np.ndarray


@dataclass(frozen=True)
class StageLayout:
    """The layers of one (pp, vpp) split: per virtual stage and per rank, counted by layer kind."""

    pp: int
    vpp: int
    virtual_layers: tuple[tuple[int, ...], ...]  # [g][kind]: layers of each kind on virtual stage g
    # Rank classes (see the module docstring), in rank order of their first member.
    class_layers: tuple[tuple[int, ...], ...]  # [c][kind]
    class_size: tuple[int, ...]  # ranks in the class
    class_first_rank: tuple[int, ...]
    class_has_pre: tuple[bool, ...]  # holds the embedding (virtual stage 0)
    class_has_post: tuple[bool, ...]  # holds the head and loss (virtual stage G-1)
    rank_class: tuple[int, ...]  # [rank]: its class
    critical: int  # classes [0, critical) are not dominated (see the module docstring)

    @property
    def rank_layers(self) -> np.ndarray:
        """(pp, kinds): layers of each kind on each pipeline rank (all its chunks)."""
        v = np.asarray(self.virtual_layers, dtype=np.int64)
        return v.reshape(self.vpp, self.pp, -1).sum(axis=0)


def split_layers(num_layers: int, stages: int, first: int | None = None, last: int | None = None) -> list[int]:
    """Layers per pipeline rank: even, or with the first / last rank's count fixed and the rest even
    (Megatron-LM's `--decoder-first-pipeline-num-layers` / `--decoder-last-pipeline-num-layers`).

    Raises ValueError naming the rule when the layers cannot be split so.
    """
    if stages == 1:
        if first not in (None, num_layers) or last not in (None, num_layers):
            raise ValueError("with one pipeline stage the first / last stage holds every layer")
        return [num_layers]
    counts: list[int | None] = [None] * stages
    if first is not None:
        counts[0] = first
    if last is not None:
        counts[-1] = last
    fixed = sum(c for c in counts if c is not None)
    free = sum(1 for c in counts if c is None)
    rest = num_layers - fixed
    if rest < 0 or (free and rest % free) or (not free and rest):
        raise ValueError(f"{num_layers} layers cannot be split over {stages} stages with first={first}, "
                         f"last={last} (the other stages must hold equal counts)")
    each = rest // free if free else 0
    return [c if c is not None else each for c in counts]


EMBEDDING_UNIT, LOSS_UNIT = 1, 2  # `account` bits: the embedding / the loss counted as a layer in the split


def virtual_stage_sizes(num_layers: int, pp: int, vpp: int, first: int | None = None, last: int | None = None,
                        account: int = 0) -> list[int]:
    """Transformer layers of each virtual stage g = chunk·pp + rank (they hold consecutive layers).

    Even; or with the first / last rank's count fixed (each rank's layers split evenly over its
    chunks); or, with `account` (Megatron-LM's --account-for-embedding-in-pipeline-split /
    --account-for-loss-in-pipeline-split), the embedding and / or the loss counted as one layer each:
    L + 2 units split evenly over the pp·vpp virtual stages, the first holding one layer fewer for the
    embedding and the last one fewer for the loss (NeMo's Llama 3.1 405B: 126 + 2 = 128 units on
    8 x 8 virtual stages, 2 each). Raises ValueError naming the rule when impossible.
    """
    n_virtual = pp * vpp
    if account:
        if first is not None or last is not None:
            raise ValueError("give either the first / last stage layer counts or count the embedding / loss as "
                             "layers, not both")
        e, lo = int(bool(account & EMBEDDING_UNIT)), int(bool(account & LOSS_UNIT))
        units = num_layers + e + lo
        if units % n_virtual:
            raise ValueError(f"{num_layers} layers + {e + lo} for the embedding / loss = {units} are not divisible "
                             f"by pp*vpp = {n_virtual}")
        sizes = [units // n_virtual] * n_virtual
        sizes[0] -= e
        sizes[-1] -= lo
        if min(sizes) < 0:
            raise ValueError("a virtual stage would hold fewer than zero layers")
        return sizes
    per_rank = split_layers(num_layers, pp, first, last)
    for r, n in enumerate(per_rank):
        if n % vpp:
            raise ValueError(f"pipeline rank {r} holds {n} layers, not divisible by {vpp} model chunks")
    return [n // vpp for n in per_rank] * vpp  # virtual stage g = chunk·pp + rank


def virtual_stage_ranges(num_layers: int, pp: int, vpp: int, first: int | None = None, last: int | None = None,
                         account: int = 0) -> list[range]:
    """The layer range of every virtual stage g = chunk·pp + rank (`virtual_stage_sizes`, consecutive)."""
    sizes = virtual_stage_sizes(num_layers, pp, vpp, first, last, account)
    starts = [sum(sizes[:g]) for g in range(len(sizes) + 1)]
    return [range(starts[g], starts[g + 1]) for g in range(len(sizes))]


@lru_cache(maxsize=4096)
def stage_layout(pattern: tuple[int, ...], n_kinds: int, pp: int, vpp: int, first: int | None = None,
                 last: int | None = None, account: int = 0) -> StageLayout:
    """The layout of layers `pattern` (kind index per layer) on pp ranks x vpp chunks, split as
    `virtual_stage_sizes` says. Raises ValueError if that split is impossible."""
    sizes = virtual_stage_sizes(len(pattern), pp, vpp, first, last, account)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    pat = np.asarray(pattern, dtype=np.int64)
    seen = np.zeros((len(pat) + 1, n_kinds), dtype=np.int64)  # layers of each kind before position i
    seen[1:] = np.cumsum(np.eye(n_kinds, dtype=np.int64)[pat], axis=0)
    virtual = tuple(map(tuple, (seen[starts[1:]] - seen[starts[:-1]]).tolist()))
    ranks = np.asarray(virtual, dtype=np.int64).reshape(vpp, pp, n_kinds).sum(axis=0)
    g_last = pp * vpp - 1
    keys: dict[tuple, int] = {}
    layers, size, first_rank, pre, post, rank_class = [], [], [], [], [], []
    for r in range(pp):
        key = (tuple(int(x) for x in ranks[r]), r == 0, r == g_last % pp)
        if key not in keys:
            keys[key] = len(layers)
            layers.append(key[0])
            size.append(0)
            first_rank.append(r)
            pre.append(key[1])
            post.append(key[2])
        size[keys[key]] += 1
        rank_class.append(keys[key])

    def dominated(i: int) -> bool:
        return any(j != i and layers[j] == layers[i] and first_rank[j] < first_rank[i]
                   and pre[j] >= pre[i] and post[j] >= post[i] for j in range(len(layers)))

    order = sorted(range(len(layers)), key=lambda i: (dominated(i), first_rank[i]))
    critical = sum(1 for i in order if not dominated(i))
    new = {old: n for n, old in enumerate(order)}
    return StageLayout(pp=pp, vpp=vpp, virtual_layers=virtual, class_layers=tuple(layers[i] for i in order),
                       class_size=tuple(size[i] for i in order), class_first_rank=tuple(first_rank[i] for i in order),
                       class_has_pre=tuple(pre[i] for i in order), class_has_post=tuple(post[i] for i in order),
                       rank_class=tuple(new[c] for c in rank_class), critical=critical)


@dataclass(frozen=True)
class ClassArrays:
    """Stage classes of many plans as padded arrays (rows, C[, kinds]); unused slots have size 0."""

    layers: Array  # (rows, C, kinds) float
    size: Array  # (rows, C) ranks in the class (0 = padding)
    first_rank: Array  # (rows, C)
    has_pre: Array  # (rows, C) bool
    has_post: Array  # (rows, C) bool
    critical: int = 0  # classes [0, critical) of every row include all its non-dominated ones

    @property
    def valid(self) -> Array:
        return self.size > 0

    def head(self) -> ClassArrays:
        """Only the first `critical` classes (enough for every maximum over classes)."""
        c = self.critical or self.size.shape[-1]
        return ClassArrays(layers=self.layers[..., :c, :], size=self.size[..., :c],
                           first_rank=self.first_rank[..., :c], has_pre=self.has_pre[..., :c],
                           has_post=self.has_post[..., :c], critical=c)


def class_arrays(pattern: tuple[int, ...], n_kinds: int, pp: Array, vpp: Array, first: Array | None = None,
                 last: Array | None = None, account: Array | None = None) -> ClassArrays:
    """Stage classes of every row (pp[i] ranks x vpp[i] chunks; first[i] / last[i] layers on the first /
    last rank, -1 for an even split; account[i] the embedding / loss units), padded to the widest."""
    n = len(pp)
    first = np.full(n, -1) if first is None else first
    last = np.full(n, -1) if last is None else last
    account = np.zeros(n, dtype=np.int64) if account is None else account
    keys = np.stack([pp, vpp, first, last, account], axis=1).astype(np.int64)
    # one integer per row (pp < 2^15, vpp < 2^10, first + 1 and last + 1 < 2^18, account < 4: 63 bits)
    key = (keys[:, 0] << 48) + (keys[:, 1] << 38) + ((keys[:, 2] + 1) << 20) + ((keys[:, 3] + 1) << 2) + keys[:, 4]
    _, first_rows, inv = np.unique(key, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)

    def opt(v: int) -> int | None:
        return None if v < 0 else int(v)

    layouts = [stage_layout(pattern, n_kinds, int(keys[r, 0]), int(keys[r, 1]), opt(keys[r, 2]), opt(keys[r, 3]),
                            int(keys[r, 4])) for r in first_rows]
    width = max(len(lay.class_size) for lay in layouts)
    u = len(layouts)
    layers = np.zeros((u, width, n_kinds))
    size = np.zeros((u, width))
    first_rank = np.zeros((u, width))
    has_pre = np.zeros((u, width), dtype=bool)
    has_post = np.zeros((u, width), dtype=bool)
    for i, lay in enumerate(layouts):
        c = len(lay.class_size)
        layers[i, :c] = lay.class_layers
        size[i, :c] = lay.class_size
        first_rank[i, :c] = lay.class_first_rank
        has_pre[i, :c] = lay.class_has_pre
        has_post[i, :c] = lay.class_has_post
    critical = max(lay.critical for lay in layouts)
    return ClassArrays(layers=layers[inv], size=size[inv], first_rank=first_rank[inv], has_pre=has_pre[inv],
                       has_post=has_post[inv], critical=critical)
