"""Communication time of collectives on tiered links (vectorised over plans).

Ring algorithms (Thakur, Rabenseifner & Gropp 2005; Patarasuk & Yuan 2009), as NCCL and gloo run them,
for a group of g ranks moving a buffer of S bytes:

    all-reduce      2(g-1) steps, 2(g-1)/g x S bytes over each rank's link
    all-gather      (g-1) steps,   (g-1)/g x S   (S = the gathered output)
    reduce-scatter  (g-1) steps,   (g-1)/g x S   (S = the full input)
    all-to-all      (g-1) steps,   (g-1)/g x S   (S = what one rank holds before the exchange)
    p2p             1 step,        S

A group that spans nodes with k members per node and N nodes runs hierarchically (the 2-D algorithm
NCCL uses across NVLink + InfiniBand): an intra-node reduce-scatter / all-gather over k ranks and the
inter-node part over N ranks on S/k bytes, each GPU driving its own NIC.

All-reduce across nodes also has NCCL's double binary tree (Sanders, Speck & Träff 2009, as NCCL
implements it): NCCL's tuning model (src/graph/tuning.cc, ncclTopoTuneModel) charges a tree
2 x ((k - 1) intra-node hops + log2(N) network hops) of latency where a ring pays 2 (N - 1) network
hops, and moves the same bytes at 0.9 of the ring's bus bandwidth; NCCL runs whichever of the two its
model says is faster for the message size, and so does this model. (A 641-node ring pays 1,280 network
latencies per call; the tree 19.)

All-reduce inside one NVLink-switch domain whose switch reduces in the network (NVLink SHARP, H100's
and Blackwell's NVSwitches; `LinkSpec.nvls_efficiency` > 0) also has NCCL's NVLS algorithm: each GPU
sends its buffer to the switch once and reads the sum back once, so its time is the buffer over an
algorithm bandwidth that does not fall with the group (measured on 8 H100s: ~275 GB/s, a bus bandwidth of
~480 GB/s against the ring's ~370; NVIDIA/nccl-tests#212, NVIDIA/nccl#1455), plus NCCL's tuning-model
latency of 25 us (src/graph/tuning.cc). NCCL runs whichever is faster, and so does this model (the ring
at 2 GPUs, NVLS from about 4). Across nodes (NCCL's NVLS-Tree) and for all-gather / reduce-scatter (where
NCCL's model rates NVLS below the ring inside a node) the ring and tree stand.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from planner.specs.cluster import FUNCTIONAL, ClusterSpec, LinkSpec

Array = np.ndarray


def group_layout(size: Array, stride: Array, gpus_per_node: int) -> tuple[Array, Array]:
    """(members per node k, nodes spanned N) of groups of `size` ranks spaced `stride` apart."""
    size = np.asarray(size)
    stride = np.asarray(stride)
    within = np.maximum(1, gpus_per_node // np.maximum(stride, 1))
    k = np.where(stride >= gpus_per_node, 1, np.minimum(size, within))
    n_nodes = -(-size // k)  # ceil
    return k, n_nodes


def base_collective(op: str) -> str:
    """The algorithm a collective name runs: "all_reduce_functional" (torch's functional collective,
    LinkSpec.collectives may time it on its own) runs an all-reduce."""
    return op.removesuffix(FUNCTIONAL)


def back_to_back_prices(cluster: ClusterSpec) -> ClusterSpec:
    """`cluster` with every measured collective priced as a call right after another one (its burst
    alpha and bus bandwidth, where `planner calibrate` measured them on CPU ranks; GPU profiles and
    presets are returned as they are). For steps that compute well under a millisecond between their
    collectives (the calibration GPTs, a serving step's layers), where gloo runs them as back to back."""
    def tier(link: LinkSpec) -> LinkSpec:
        if not any("burst_alpha" in r for rows in link.collectives.values() for r in rows):
            return link
        table = {op: [{"group": r["group"], "alpha": r.get("burst_alpha", r["alpha"]),
                       "busbw": r.get("burst_busbw", r["busbw"])} for r in rows]
                 for op, rows in link.collectives.items()}
        return dataclasses.replace(link, collectives=table)

    intra, inter = tier(cluster.intra_node), tier(cluster.inter_node)
    if intra is cluster.intra_node and inter is cluster.inter_node:
        return cluster
    return dataclasses.replace(cluster, intra_node=intra, inter_node=inter)


def functional_or_plain(link: LinkSpec, op: str) -> str:
    """`op` issued as a functional collective where the link has it measured, else `op` itself."""
    name = op + FUNCTIONAL
    return name if name in link.collectives else op


def ring_factor(op: str, g: Array) -> tuple[Array, Array]:
    """(algorithm steps, bytes factor) of a ring collective over g ranks."""
    g = np.asarray(g, dtype=np.float64)
    op = base_collective(op)
    if op == "all_reduce":
        return 2.0 * (g - 1), 2.0 * (g - 1) / g
    if op in ("all_gather", "reduce_scatter", "all_to_all"):
        return g - 1, (g - 1) / g
    if op == "p2p":
        return np.ones_like(g), np.ones_like(g)
    raise ValueError(op)


def _flat(link: LinkSpec, op: str, nbytes: Array, g: Array, burst: bool = False) -> Array:
    """One ring over a single link tier, using measured (alpha, busbw) when the profile has them (those of
    a call right after another collective with `burst`)."""
    g = np.asarray(g, dtype=np.float64)
    steps, factor = ring_factor(op, g)
    measured = link.measured(op, g, burst)
    if measured is not None:
        alpha, busbw = measured
        t = alpha + nbytes * factor / busbw
    else:
        t = link.latency * steps + nbytes * factor / link.bus_bandwidth
    return np.where(g > 1, t, 0.0)


TREE_BANDWIDTH = 0.9  # NCCL's tuning model: a tree's bus bandwidth is 0.9 of the ring's (tuning.cc)


def tree_all_reduce(link: LinkSpec, nbytes: Array, n: Array) -> Array:
    """All-reduce of `nbytes` over `n` ranks (one per node) by NCCL's double binary tree: reduce up
    and broadcast down, 2 log2(n) latencies, each byte over each rank's link twice at 0.9 of the
    ring's bus bandwidth (NCCL tuning model)."""
    n = np.asarray(n, dtype=np.float64)
    busbw = link.bus_bandwidth
    measured = link.measured("all_reduce", n)
    if measured is not None:  # a calibrated profile: its all-reduce, which NCCL already picks the best of
        return np.where(n > 1, measured[0] + 2.0 * (n - 1) / n * nbytes / measured[1], 0.0)
    t = 2.0 * np.log2(np.maximum(n, 1.0)) * link.latency + 2.0 * nbytes / (TREE_BANDWIDTH * busbw)
    return np.where(n > 1, t, 0.0)


NVLS_LATENCY_S = 25e-6  # NCCL tuning model: NVLS over NVLink, Simple protocol (hwLatencies; no base latency)


def nvls_all_reduce(link: LinkSpec, nbytes: Array, g: Array) -> Array:
    """All-reduce of `nbytes` over `g` ranks of one NVLink-switch domain by NCCL's NVLS algorithm: 25 us plus
    the buffer at `nvls_efficiency` (> 0: a switch that reduces) x the link's bandwidth (its algorithm
    bandwidth)."""
    g = np.asarray(g, dtype=np.float64)
    t = NVLS_LATENCY_S + nbytes / link.nvls_bandwidth
    return np.where(g > 1, t, 0.0)


def product_layout(dims: list[tuple[Array, Array]], gpus_per_node: int) -> tuple[Array, Array, Array]:
    """(size, members per node, nodes spanned) of a group spanning several dimensions at once (e.g.
    the data-parallel x context-parallel gradient group): its members per node multiply."""
    size = np.ones_like(np.asarray(dims[0][0]))
    per_node = np.ones_like(size)
    for d_size, d_stride in dims:
        k, _ = group_layout(d_size, d_stride, gpus_per_node)
        size = size * d_size
        per_node = per_node * k
    return size, per_node, -(-size // per_node)


def collective_time(cluster: ClusterSpec, op: str, nbytes: Array, size: Array, stride: Array | None = None,
                    layout: tuple[Array, Array] | None = None, burst: bool = False) -> Array:
    """Seconds for one collective `op` of `nbytes` over groups of `size` ranks spaced `stride` apart
    (or laid out as `layout` = (members per node, nodes spanned)), issued as a training step issues it
    (after compute), or with `burst` right after another collective (where the profile measured that)."""
    nbytes = np.asarray(nbytes, dtype=np.float64)
    size = np.asarray(size)
    k, n_nodes = layout if layout is not None else group_layout(size, stride, cluster.nvlink_domain)
    intra, inter = cluster.intra_node, cluster.inter_node
    one_node = n_nodes <= 1
    t_flat = _flat(intra, op, nbytes, size, burst)
    op = base_collective(op)  # across nodes: the algorithm's own tiers
    if op == "all_reduce" and intra.nvls_efficiency > 0 and intra.measured(op, size) is None:
        # (a measured all-reduce is already NCCL's pick)
        t_flat = np.minimum(t_flat, nvls_all_reduce(intra, nbytes, size))
    if np.all(one_node):
        return t_flat
    if op == "all_reduce":
        intra_rs = _flat(intra, "reduce_scatter", nbytes, k, burst)
        ring = 2.0 * intra_rs + _flat(inter, "all_reduce", nbytes / k, n_nodes, burst)
        t_multi = np.minimum(ring, 2.0 * intra_rs + tree_all_reduce(inter, nbytes / k, n_nodes))
    elif op in ("all_gather", "reduce_scatter"):
        t_multi = _flat(intra, op, nbytes, k, burst) + _flat(inter, op, nbytes / k, n_nodes, burst)
    elif op == "all_to_all":
        g = size.astype(np.float64)
        t_in = _flat(intra, "all_to_all", nbytes * k / g, k, burst)  # the share that stays inside the node
        off = nbytes * (g - k) / g  # the share that leaves the node, over this GPU's NIC
        t_out = inter.latency * (n_nodes - 1) + off / inter.bus_bandwidth
        measured = inter.measured("all_to_all", g, burst)
        if measured is not None:
            t_out = measured[0] + off / measured[1]
        t_multi = np.maximum(t_in, t_out)
    elif op == "p2p":
        t_multi = _flat(inter, "p2p", nbytes, np.full_like(size, 2), burst)
    else:
        raise ValueError(op)
    return np.where(one_node, t_flat, t_multi)


def p2p_time(cluster: ClusterSpec, nbytes: Array, size: Array, stride: Array) -> Array:
    """Point-to-point between pipeline neighbours `stride` ranks apart in a group of `size` ranks.

    The slowest hop sets the pace of a pipeline, so a group that leaves the node pays the
    inter-node link on its critical path.
    """
    stride = np.asarray(stride)
    same_node = stride * np.asarray(size) <= cluster.nvlink_domain
    t_in = _flat(cluster.intra_node, "p2p", nbytes, np.full(stride.shape, 2))
    t_out = _flat(cluster.inter_node, "p2p", nbytes, np.full(stride.shape, 2))
    return np.where(same_node, t_in, t_out)
