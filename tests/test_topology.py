"""The fabric as a graph (planner/specs/topology.py): each group's tier, bottleneck bandwidth and hops
against brute force over paths (networkx's all_simple_paths and maximum_flow) on hand-drawn graphs, a DGX
node pair and an NVL72 rack worked by hand, the catalog's new GPUs and systems against the datasheet
numbers their sources quote, and bad topologies refused with the field named."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections import Counter
from typing import Any

import networkx as nx
import pytest

from planner.errors import SpecError
from planner.specs.catalog import (
    cluster_names,
    cluster_preset,
    gpu_names,
    gpu_preset,
    gpus_supporting,
    link_preset,
    load_cluster,
    supported_precisions,
)
from planner.specs.cluster import ClusterSpec, link_class, links_from_topology
from planner.specs.topology import LinkClass, Tier, Topology, dgx_fat_tree, from_graph, nvl72, rail_fat_tree

NV4 = LinkClass("nvlink4", 450e9, 3e-6, 0.8)
NV5 = LinkClass("nvlink5", 900e9, 3e-6, 0.8)
IB = LinkClass("ib", 50e9, 6e-6, 0.9)


# ---- brute force: every simple path, no numbers shared with the implementation ------------------


def _ring(members: list[int]) -> list[tuple[int, int]]:
    m = sorted(members)
    if len(m) == 2:
        return [(m[0], m[1]), (m[1], m[0])]
    return [(m[i], m[(i + 1) % len(m)]) for i in range(len(m))] if len(m) > 2 else []


def brute_force(topo: Topology, groups: list[list[int]]) -> tuple[str, float, int, float]:
    """(slowest tier, bandwidth per GPU, hops, latency) of concurrent rings, from all simple paths: each
    flow uses the fastest tier that connects its pair, over its fewest-hop paths (not through other GPUs);
    at every node it splits over the next hops those paths take in proportion to their bandwidth; a flow
    gets bandwidth / load on its most loaded link."""
    g = topo.graph
    gpus = {n for n, a in g.nodes(data=True) if a["kind"] == "gpu"}
    names = [t.name for t in topo.tiers]
    flows = []
    for members in groups:
        for a, b in _ring(members):
            s, t = topo.node_of(a), topo.node_of(b)
            for level in range(len(names)):
                ok = set(names[: level + 1])
                sub = nx.Graph()
                sub.add_nodes_from(n for n in g if n not in gpus or n in (s, t))
                sub.add_edges_from((u, v) for u, v, d in g.edges(data=True)
                                   if d["tier"] in ok and u in sub and v in sub)
                paths = list(nx.all_simple_paths(sub, s, t, cutoff=8))
                if paths:
                    break
            hops = min(len(p) - 1 for p in paths)
            shortest = [p for p in paths if len(p) - 1 == hops]
            share: Counter[tuple[Any, Any]] = Counter()
            for p in shortest:
                fraction = 1.0
                for i in range(hops):
                    nxt = {q[i + 1] for q in shortest if q[i] == p[i]}
                    fraction *= g.edges[p[i], p[i + 1]]["bandwidth"] / sum(g.edges[p[i], v]["bandwidth"] for v in nxt)
                for e in itertools.pairwise(p):
                    share[e] += fraction
            latency = max(sum(g.edges[e]["latency"] for e in itertools.pairwise(p)) for p in shortest)
            flows.append((level, hops, latency, share))
    load: Counter[tuple[Any, Any]] = Counter()
    for *_, share in flows:
        load.update(share)
    bandwidth = min(g.edges[e]["bandwidth"] / load[e] for *_, share in flows for e in share)
    return (names[max(f[0] for f in flows)], bandwidth, max(f[1] for f in flows), max(f[2] for f in flows))


def same(topo: Topology, groups: list[list[int]]) -> None:
    got = topo.links(groups)
    tier, bandwidth, hops, latency = brute_force(topo, groups)
    assert (got.tier, got.hops) == (tier, hops)
    assert got.bandwidth == pytest.approx(bandwidth, rel=1e-9)
    assert got.latency == pytest.approx(latency, rel=1e-9)


def hand_drawn() -> Topology:
    """Two hosts of two GPUs. Host h: GPUs on a switch s{h} (nvlink, 100 GB/s); every GPU has a NIC to
    leaf L{h} (10 GB/s); the leaves meet at two spines, 10 GB/s each to one and 5 GB/s to the other."""
    g = nx.Graph()
    for h in range(2):
        g.add_node(f"s{h}", kind="nvswitch")
        g.add_node(f"L{h}", kind="leaf")
        for i in range(2):
            gpu, nic = f"h{h}g{i}", f"h{h}n{i}"
            g.add_node(gpu, kind="gpu", rank=2 * h + i, host=f"h{h}")
            g.add_node(nic, kind="nic")
            g.add_edge(gpu, f"s{h}", bandwidth=100e9, latency=1e-6, tier="nvlink")
            g.add_edge(gpu, nic, bandwidth=10e9, latency=2e-6, tier="net")
            g.add_edge(nic, f"L{h}", bandwidth=10e9, latency=0.5e-6, tier="net")
    for k, bw in (("A", 10e9), ("B", 5e9)):
        g.add_node(k, kind="spine")
        for h in range(2):
            g.add_edge(f"L{h}", k, bandwidth=bw, latency=0.25e-6 * (1 if k == "A" else 2), tier="net")
    return from_graph(g, [Tier("nvlink", 0.8), Tier("net", 0.9)])


@pytest.mark.parametrize("groups", [
    [[0, 1]], [[2, 3]], [[0, 1], [2, 3]], [[0, 2]], [[0, 2], [1, 3]], [[0, 1, 2, 3]], [[0, 3]], [[1, 2, 3]],
])
def test_hand_drawn_graph_matches_brute_force(groups: list[list[int]]) -> None:
    same(hand_drawn(), groups)


def test_hand_drawn_graph_by_hand() -> None:
    """Worked by hand: ranks 0 and 2 sit on different hosts, so their ring crosses NIC, leaf, spine, leaf,
    NIC (6 links). Alone, the two directions each split over spines A and B in proportion 10:5, so spine B
    carries a third of a flow: 5 / (1/3) = 15 GB/s there, and the NICs (10 GB/s, whole flow) are the
    bottleneck. With ranks 1 and 3 running the same ring, each leaf-spine B link carries 2/3 of a flow:
    5 / (2/3) = 7.5 GB/s."""
    t = hand_drawn()
    alone = t.group([0, 2])
    assert (alone.tier, alone.hops, alone.bandwidth) == ("net", 6, 10e9)
    assert alone.latency == pytest.approx(2e-6 + 0.5e-6 + 0.5e-6 + 0.5e-6 + 0.5e-6 + 2e-6)  # via spine B
    both = t.links([[0, 2], [1, 3]])
    assert both.bandwidth == pytest.approx(7.5e9)
    assert t.group([0, 1]).tier == "nvlink" and t.group([0, 1]).bandwidth == 100e9
    assert (t.nvlink_domain, t.gpus_per_host, t.domain_of(3)) == (2, 2, 1)


def test_small_fat_tree_matches_brute_force() -> None:
    """A generated rail fat tree (3 hosts of 2 GPUs, 2 hosts per leaf, 2 spines, taper 2): every group
    shape of the standard layout against brute force."""
    t = rail_fat_tree(3, 2, 1, 1, NV4, IB, hosts_per_leaf=2, spines=2, taper=2.0)
    for size, stride in ((2, 1), (3, 2), (6, 1), (2, 2), (3, 1)):
        if 6 % (size * stride) == 0:
            groups = [[b + o + i * stride for i in range(size)]
                      for b in range(0, 6, size * stride) for o in range(stride)]
            same(t, groups)
            assert t.layout(size, stride) == t.links(groups)


def test_nvswitch_planes_of_unequal_width_give_the_max_flow() -> None:
    """DGX H100: each GPU's 18 NVLinks go 5, 4, 4, 5 to four NVSwitch chips. A message between two GPUs
    splits over the chips in proportion to their links, so one pair gets the maximum flow between them
    (networkx maximum_flow over the chips, GPUs not forwarding): 18 x 25 GB/s = 450 GB/s."""
    g = nx.Graph()
    for k in range(4):
        g.add_node(f"sw{k}", kind="nvswitch")
    for i in range(8):
        g.add_node(f"g{i}", kind="gpu", rank=i, host="h0")
        for k, links in enumerate((5, 4, 4, 5)):
            g.add_edge(f"g{i}", f"sw{k}", bandwidth=links * 25e9, latency=1.5e-6, tier="nvlink")
    t = from_graph(g, [Tier("nvlink")])
    flow = nx.DiGraph()
    for u, v, d in g.edges(data=True):
        flow.add_edge(u, v, capacity=d["bandwidth"])
        flow.add_edge(v, u, capacity=d["bandwidth"])
    flow.remove_nodes_from([f"g{i}" for i in range(2, 8)])
    assert t.group([0, 1]).bandwidth == pytest.approx(nx.maximum_flow_value(flow, "g0", "g1")) == 450e9
    assert t.layout(8, 1).bandwidth == pytest.approx(450e9)  # every GPU sends one flow and receives one


def test_dgx_node_pair_by_hand() -> None:
    """Two DGX H100 nodes. TP 8 inside a node: NVLink, GPU-NVSwitch-GPU, 450 GB/s and 3 us. DP 2 across
    the nodes at stride 8: GPU i reaches GPU i of the other node on rail i (GPU-NIC-leaf-NIC-GPU), 50 GB/s,
    6 us. A TP 16 ring crosses nodes between GPU 7 and GPU 0 of the next node: different rails, so
    through a spine (6 links), 6 us + one more switch (0.5 us)."""
    t = dgx_fat_tree(2, NV4, IB)
    tp = t.layout(8, 1)
    assert (tp.tier, tp.bandwidth, tp.hops, tp.domains, tp.per_domain) == ("nvlink4", 450e9, 2, 1, 8)
    assert tp.latency == pytest.approx(3e-6)
    dp = t.layout(2, 8)
    assert (dp.tier, dp.bandwidth, dp.hops, dp.domains, dp.per_domain) == ("ib", 50e9, 4, 2, 1)
    assert dp.latency == pytest.approx(6e-6)
    tp16 = t.layout(16, 1)
    assert (tp16.tier, tp16.bandwidth, tp16.hops) == ("ib", 50e9, 6)
    assert tp16.latency == pytest.approx(6.5e-6)
    assert (t.gpus_per_host, t.nvlink_domain, t.num_hosts) == (8, 8, 2)


def test_nvl72_rack_by_hand() -> None:
    """A GB200 NVL72 rack: 18 trays of 4 GPUs (hosts) and 9 NVLink switch trays; every GPU has 100 GB/s to
    each switch tray, 900 GB/s in all (NVLink 5: 1.8 TB/s bidirectional). TP 8 spans two trays and still
    runs on NVLink at 900 GB/s in two links; so does a ring over all 72 GPUs. Two racks: the same position
    in each rack talks over the NIC network (GPU-NIC-leaf-NIC-GPU), 50 GB/s."""
    t = nvl72(2, NV5, IB, hosts_per_leaf=36)
    assert (t.gpus_per_host, t.nvlink_domain, t.num_hosts, t.num_gpus) == (4, 72, 36, 144)
    assert t.host_of(5) == t.host_of(7) != t.host_of(3)
    for size in (8, 72):
        g = t.layout(size, 1)
        assert (g.tier, g.bandwidth, g.hops, g.domains) == ("nvlink5", 900e9, 2, 1)
    across = t.layout(2, 72)
    assert (across.tier, across.bandwidth, across.hops) == ("ib", 50e9, 4)
    assert t.group(range(68, 76)).tier == "ib"  # a group that straddles two racks
    assert (t.domain_of(71), t.domain_of(72)) == (0, 1)


def test_tapered_spine_halves_what_crosses_it() -> None:
    """Taper 2 (leaf uplinks half the downlinks): DP groups across the two leaves all cross the spines at
    once and get half the NIC rate; inside a leaf they keep it. Two hosts of one GPU per leaf."""
    t = rail_fat_tree(4, 1, 1, 1, NV4, IB, hosts_per_leaf=2, spines=1, taper=2.0)
    assert t.layout(2, 2).bandwidth == pytest.approx(25e9)  # ranks (0, 2) and (1, 3): both cross
    assert t.layout(2, 1).bandwidth == pytest.approx(50e9)  # (0, 1) and (2, 3): one leaf each


def test_group_of_one_and_bad_group_queries() -> None:
    t = dgx_fat_tree(1, NV4, IB)
    one = t.group([3])
    assert (one.tier, one.bandwidth, one.hops) == (None, math.inf, 0)
    for bad in ([0, 0], [8], [-1]):
        with pytest.raises(SpecError):
            t.group(bad)
    with pytest.raises(SpecError, match="tile"):
        t.layout(3, 1)


# ---- clusters ------------------------------------------------------------------------------------


def test_graph_reproduces_the_named_links_of_the_existing_presets() -> None:
    """The presets that name their links also carry a topology built from the same link presets: the
    graph's per-GPU ring bandwidth and latency must come out as the named numbers."""
    for name in ("dgx-a100-40gb", "dgx-a100-80gb", "dgx-h100", "dgx-h200", "dgx-b200", "mi300x"):
        c = cluster_preset(name)
        fast, net = links_from_topology(c.topology)
        for derived, named in ((fast, c.intra_node), (net, c.inter_node)):
            assert (derived.name, derived.bandwidth, derived.efficiency) == \
                (named.name, named.bandwidth, named.efficiency), name
            assert derived.latency == pytest.approx(named.latency), name


@pytest.mark.parametrize(("name", "host", "domain", "intra", "inter", "quotes"), [
    ("gb200-nvl72", 4, 72, 1.8e12 / 2, 400e9 / 8, ("18 compute trays of 4 GPUs", "1.8 TB/s per GPU", "400 Gb/s")),
    ("gb300-nvl72", 4, 72, 1.8e12 / 2, 800e9 / 8, ("18 compute trays of 4 GPUs", "1.8 TB/s per GPU", "800 Gb/s")),
    ("dgx-b300", 8, 8, 14.4e12 / 8 / 2, 800e9 / 8, ("14.4 TB/s per node", "800 Gb/s")),
    ("grand-teton-h100", 8, 8, 900e9 / 2, 400e9 / 8, ("900 GB/s bidirectional per GPU", "400 Gb/s per GPU")),
])
def test_new_systems_against_their_quoted_datasheet_numbers(name: str, host: int, domain: int, intra: float,
                                                            inter: float, quotes: tuple[str, ...]) -> None:
    """Per GPU and direction, from the figures the preset's source quotes (bidirectional NVLink halved,
    NIC Gb/s over 8 bits)."""
    c = cluster_preset(name)
    assert (c.gpus_per_node, c.nvlink_domain) == (host, domain)
    assert c.intra_node.bandwidth == pytest.approx(intra) and c.inter_node.bandwidth == pytest.approx(inter)
    assert c.intra_node.source.startswith("from the topology graph")
    for q in quotes:
        assert q in c.source, q


# (GPU, field, the datasheet figure, divisor to one GPU's dense number, the words quoted in its source)
DATASHEET = [
    ("B200-SXM-180GB", "nvfp4", 72e15, 8, "144 | 72 PFLOPS"),
    ("B200-SXM-180GB", "fp8", 72e15 / 2, 8, "FP8/FP6 72"),
    ("B200-SXM-180GB", "bf16", 36e15 / 2, 8, "FP16/BF16 36"),
    ("B200-SXM-180GB", "memory_bytes", 1440e9, 8, "1,440 GB"),
    ("B200-SXM-180GB", "memory_bandwidth", 64e12, 8, "64 TB/s"),
    ("B300-SXM-288GB", "nvfp4", 105e15, 8, "144 | 105 PFLOPS"),
    ("B300-SXM-288GB", "fp8", 72e15 / 2, 8, "FP8/FP6 72"),
    ("B300-SXM-288GB", "bf16", 36e15 / 2, 8, "FP16/BF16 36"),
    ("B300-SXM-288GB", "memory_bytes", 2.3e12, 8, "2.3 TB"),
    ("GB200-186GB", "nvfp4", 1440e15 / 2, 72, "FP4 Tensor Core 1,440 PFLOPS"),
    ("GB200-186GB", "fp8", 720e15 / 2, 72, "FP8/FP6 720 PFLOPS"),
    ("GB200-186GB", "bf16", 360e15 / 2, 72, "FP16/BF16 360 PFLOPS"),
    ("GB200-186GB", "memory_bytes", 13.4e12, 72, "13.4 TB"),
    ("GB200-186GB", "memory_bandwidth", 576e12, 72, "576 TB/s"),
    ("GB300-288GB", "nvfp4", 1080e15, 72, "1,440 | 1,080 PFLOPS"),
    ("GB300-288GB", "fp8", 720e15 / 2, 72, "FP8/FP6 720 PFLOPS"),
    ("GB300-288GB", "bf16", 360e15 / 2, 72, "FP16/BF16 360 PFLOPS"),
    ("GB300-288GB", "memory_bytes", 288e9, 1, "288 GB"),
    ("H100-SXM5-96GB-500W", "memory_bandwidth", 2.4e12, 1, "2.4 TB/sec"),
    ("H100-SXM5-96GB-500W", "bf16", 989.4e12, 1, "989.4"),
    ("H100-SXM5-96GB-500W", "memory_bytes", 95 * 2**30, 1, "95GB"),
    ("H100-PCIe-80GB", "bf16", 1513e12 / 2, 1, "1,513 TFLOP/s BF16"),
    ("H100-PCIe-80GB", "fp8", 3026e12 / 2, 1, "3,026 FP8"),
    ("H100-PCIe-80GB", "memory_bandwidth", 2e12, 1, "2 TB/s"),
    ("MI325X-256GB", "bf16", 1307.4e12, 1, "1,307.4"),
    ("MI325X-256GB", "memory_bandwidth", 6e12, 1, "6 TB/s"),
    ("MI355X-288GB", "fp8", 256 * 8192 * 2.4e9, 1, "8,192 dense FP8 FLOP per CU per clock"),
    ("MI355X-288GB", "bf16", 256 * 8192 * 2.4e9 / 2, 1, "BF16 half of it"),
    ("MI355X-288GB", "mxfp4", 256 * 8192 * 2.4e9 * 2, 1, "MXFP4 twice"),
]


@pytest.mark.parametrize(("gpu", "key", "figure", "per", "quote"), DATASHEET)
def test_gpu_numbers_against_the_datasheet_figures_their_source_quotes(gpu: str, key: str, figure: float,
                                                                       per: int, quote: str) -> None:
    g = gpu_preset(gpu)
    value = getattr(g, key) if key.startswith("memory") else g.peak_flops[key]
    assert value == pytest.approx(figure / per, rel=5e-3)
    assert quote in g.source


def test_which_gpus_run_which_low_precision_formats() -> None:
    """By architecture (hand-written, not read back from the catalog): FP8 per tensor on Hopper, Blackwell
    and MI300 onwards; MXFP8 on Blackwell and CDNA 4; NVFP4 on Blackwell only; nothing below bf16 on A100."""
    blackwell = ["B200-SXM-180GB", "B300-SXM-288GB", "GB200-186GB", "GB300-288GB"]
    assert gpus_supporting("nvfp4") == blackwell
    assert gpus_supporting("mxfp8") == [*blackwell, "MI355X-288GB"]
    assert set(gpus_supporting("fp8")) == set(gpu_names()) - {"A100-SXM4-40GB", "A100-SXM4-80GB"}
    assert supported_precisions("A100-SXM4-80GB") == ("fp32", "fp16", "bf16")
    assert supported_precisions(gpu_preset("H100-SXM5-80GB")) == ("fp32", "fp16", "bf16", "fp8", "fp8-rowwise")
    assert gpus_supporting("fp8-rowwise") == gpus_supporting("fp8")  # per-row scales: the same FP8 tensor cores
    assert "nvfp4" not in supported_precisions("MI355X-288GB")
    with pytest.raises(SpecError, match="known"):
        gpus_supporting("fp6")


def test_nvfp4_on_h100_is_refused_naming_the_blackwell_gpus() -> None:
    from planner.cost import estimate
    from planner.errors import PlanError
    from planner.plan import Plan
    from planner.specs.catalog import model_preset

    with pytest.raises(PlanError) as err:
        estimate(model_preset("llama3-8b"), cluster_preset("grand-teton-h100").with_gpus(8),
                 Plan(dp=8, global_batch=8, dtype="nvfp4"))
    assert all(name in str(err.value) for name in ("GB200-186GB", "GB300-288GB", "B300-SXM-288GB"))


def test_cluster_with_topology_round_trips_and_resizes() -> None:
    c = cluster_preset("gb200-nvl72")
    big = c.with_gpus(144)
    assert (big.num_nodes, big.gpus_per_node, big.nvlink_domain, big.topology.num_gpus) == (36, 4, 72, 144)
    assert big.inter_node == c.inter_node and big.intra_node == c.intra_node
    again = ClusterSpec.from_dict(json.loads(json.dumps(big.to_dict())))
    assert again == big and hash(again) == hash(big)
    assert load_cluster("gb200-nvl72") == c
    small = c.with_gpus(2)
    assert (small.gpus_per_node, small.topology.num_gpus, small.nvlink_domain) == (2, 2, 72)
    # without a topology the node is the fast domain, as before
    plain = dataclasses_replace(cluster_preset("dgx-h100"), topology=None)
    assert plain.nvlink_domain == 8 and "topology" not in plain.to_dict()


def dataclasses_replace(c: ClusterSpec, **kw: Any) -> ClusterSpec:
    import dataclasses

    return dataclasses.replace(c, **kw)


def test_cluster_file_can_describe_its_graph_and_derive_its_links() -> None:
    """A cluster JSON with an explicit graph: two hosts of two GPUs on the hand-drawn fabric; "topology"
    links are the graph's: 100 GB/s NVLink, and across the hosts both positions at once, 7.5 GB/s (the
    narrow spine, by hand above); efficiencies from its tiers."""
    topo = hand_drawn().to_dict()
    d = {"name": "lab", "gpu": "H100-SXM5-80GB", "gpus_per_node": 2, "num_nodes": 2,
         "intra_node": "topology", "inter_node": "topology", "topology": topo}
    c = ClusterSpec.from_dict(d)
    assert (c.intra_node.bandwidth, c.intra_node.efficiency) == (100e9, 0.8)
    assert (c.inter_node.bandwidth, c.inter_node.efficiency) == (7.5e9, 0.9)
    assert c.nvlink_domain == 2 and c.with_gpus(2).topology.num_gpus == 2
    with pytest.raises(SpecError) as err:
        c.with_gpus(8)  # more GPUs than the graph holds
    assert "topology" in str(err.value)


def _cluster(topology: Any, **over: Any) -> dict[str, Any]:
    return {"name": "x", "gpu": "B200-SXM-180GB", "gpus_per_node": 4, "intra_node": "topology",
            "inter_node": "topology", "topology": topology, **over}


NVL = {"generator": "nvl72", "nvlink": "nvlink5", "network": "ib-ndr-400"}


@pytest.mark.parametrize(("data", "field"), [
    (_cluster({**NVL, "generator": "torus"}), "cluster.topology.generator"),
    (_cluster({**NVL, "nvlink": "nvlink9"}), "cluster.topology.nvlink"),
    (_cluster({**NVL, "taper": 0.5}), "cluster.topology.taper"),
    (_cluster({**NVL, "spines": 0}), "cluster.topology.spines"),
    (_cluster({**NVL, "racks": 2}), "cluster.topology.racks"),
    (_cluster({**NVL, "network": {"name": "x", "bandwidth": -1, "latency": 1e-6}}), "cluster.topology.network"),
    (_cluster(NVL, gpus_per_node=8), "gpus_per_node"),
    (_cluster(None), "cluster.intra_node"),
    (_cluster("nvl72"), "cluster.topology"),
])
def test_bad_topology_is_refused_naming_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as err:
        ClusterSpec.from_dict(data)
    assert field in (err.value.field or "") and "\n" not in str(err.value), str(err.value)


def _graph(**change: Any) -> dict[str, Any]:
    d = hand_drawn().to_dict()
    for path, value in change.items():
        kind, index, key = path.split("__")
        d[kind][int(index)][key] = value
    return d


@pytest.mark.parametrize(("graph", "field"), [
    (_graph(edges__0__bandwidth=0), "topology.edges[0].bandwidth"),
    (_graph(edges__0__tier="pcie"), "topology.edges[0].tier"),
    (_graph(edges__0__a="nowhere"), "topology.edges[0].a"),
    (_graph(nodes__0__kind=""), "topology.nodes[0].kind"),
    (_graph(tiers__0__efficiency=2), "topology.tiers[0]"),
])
def test_bad_explicit_graph_is_refused_naming_the_field(graph: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as err:
        Topology.from_dict(graph)
    assert field in (err.value.field or ""), str(err.value)


def test_graph_semantics_are_checked() -> None:
    """Duplicate ranks, hosts whose ranks interleave, fast domains that are not contiguous rank blocks,
    and a GPU nobody can reach are refused."""
    d = hand_drawn().to_dict()
    gpus = [n for n in d["nodes"] if n["kind"] == "gpu"]
    dup = json.loads(json.dumps(d))
    [g for g in dup["nodes"] if g["kind"] == "gpu"][1]["rank"] = 0
    interleaved = json.loads(json.dumps(d))
    for g in interleaved["nodes"]:
        if g["kind"] == "gpu":
            g["rank"] = {0: 0, 1: 2, 2: 1, 3: 3}[g["rank"]]
    crossed = json.loads(json.dumps(d))  # hosts (0, 1), (2, 3) but NVLink pairs (0, 2), (1, 3)
    swap = {"s0": "s1", "s1": "s0"}
    for e in crossed["edges"]:
        if {e["a"], e["b"]} & {"h0g1", "h1g0"} and {e["a"], e["b"]} & set(swap):
            e["a"], e["b"] = swap.get(e["a"], e["a"]), swap.get(e["b"], e["b"])
    cut = json.loads(json.dumps(d))
    lonely = gpus[3]["id"]
    cut["edges"] = [e for e in cut["edges"] if lonely not in (e["a"], e["b"])]
    for bad, words in ((dup, "rank 0"), (interleaved, "contiguous"), (crossed, "domains"), (cut, "reach")):
        with pytest.raises(SpecError, match=words) as err:
            Topology.from_dict(bad)
        assert (err.value.field or "").startswith("topology")


def test_every_preset_loads_its_topology_and_planner_clusters_lists_them(capsys: pytest.CaptureFixture[str]
                                                                         ) -> None:
    from planner.cli import main

    assert main(["clusters", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(cluster_names())
    for name in ("gb200-nvl72", "gb300-nvl72", "dgx-b300", "grand-teton-h100"):
        assert rows[name]["topology"]["generator"] == "rail_fat_tree"
    assert (rows["gb200-nvl72"]["gpus_per_node"], rows["gb200-nvl72"]["nvlink_domain"]) == (4, 72)
    assert "nvfp4" in rows["gb300-nvl72"]["precisions"] and "nvfp4" not in rows["grand-teton-h100"]["precisions"]
    for name in cluster_names():
        c = cluster_preset(name)
        if c.topology is not None:
            assert c.topology.gpus_per_host == c.gpus_per_node


def test_link_class_from_a_link_preset() -> None:
    link = link_class(link_preset("nvlink5"))
    assert (link.bandwidth, link.latency, link.efficiency) == (900e9, 3e-6, 0.8)


def test_cost_model_prices_groups_inside_the_nvlink_domain_on_nvlink() -> None:
    """On a GB200 NVL72 rack (4-GPU trays, one 72-GPU NVLink domain) an 8-way tensor-parallel group and a
    16-way data-parallel group span trays but never leave the rack: they cost what they cost on one
    hypothetical 72-GPU host with the same NVLink (no topology), and far less than over InfiniBand."""
    from planner.cost import estimate
    from planner.plan import Plan
    from planner.specs.catalog import load_cluster, model_preset

    rack = load_cluster("gb200-nvl72", gpus=64)
    assert (rack.gpus_per_node, rack.nvlink_domain) == (4, 72)
    one_host = dataclasses.replace(rack, topology=None, gpus_per_node=64, num_nodes=1)
    trays_on_ib = dataclasses.replace(rack, topology=None)  # the same trays, joined only by InfiniBand
    model = model_preset("llama3-70b")
    plan = Plan(tp=8, dp=8, micro_batch=1, global_batch=64, sequence_parallel=True, zero_stage=1)
    on_rack, on_host, on_ib = (estimate(model, c, plan)["time"] for c in (rack, one_host, trays_on_ib))
    for term in ("tp_comm", "dp_comm"):
        assert on_rack[term] == pytest.approx(on_host[term], rel=1e-9), term
        assert on_ib[term] > 2 * on_rack[term], term
