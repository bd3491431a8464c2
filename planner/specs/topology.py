"""A cluster's fabric as a graph: which links a communication group crosses, how fast and how far.

Two flat link tiers (`intra_node`, `inter_node`) cannot say that a GB200 NVL72 rack is one 72-GPU NVLink
domain of 4-GPU hosts, that a rail-optimised fat tree sends GPU i of every node to the same leaf, or that a
tapered spine halves what crosses it. A `Topology` is a networkx graph that says it as data:

- nodes: GPUs (kind "gpu", with their global `rank` and their `host`) and everything else a message passes
  (kinds such as "nvswitch", "nic", "leaf", "spine"). A GPU only sends and receives: no path runs through one.
- edges: one full-duplex link each, with `bandwidth` (bytes/s per direction), `latency` (seconds a message
  accrues crossing it) and `tier` (the link class it belongs to). Tiers are ordered fastest first; the GPUs
  that tier 0 connects form a fast domain (an NVLink domain: 8 GPUs of a DGX, 72 of an NVL72 rack).

Routing of one message from rank a to rank b, as NCCL picks a transport and a fabric its routes:
1. over the fastest tier that connects them: the smallest tier level L such that a path uses only edges of
   tiers <= L (NVLink when both GPUs are in one NVLink domain, the NIC network otherwise);
2. over the fewest hops within it (shortest paths, the up/down routes of a fat tree); where several next hops
   are equally short the flow splits over them in proportion to their bandwidth (ECMP over spines; NCCL
   stripes its channels over the NVSwitch planes).

A communication group runs a ring (Thakur, Rabenseifner & Gropp 2005, as NCCL builds it from the rank order):
member i sends to member i+1. All groups of one shape run at once (every TP group of the job), so each
directed link carries the sum of the flows routed over it; every flow then gets bandwidth / load on its most
loaded link (the rate all flows sustain together when they run at one rate), and a ring goes at its slowest
flow. `Topology.layout(size, stride)` prices the groups of the standard rank layout, `Topology.group(ranks)`
any one set of ranks, `Topology.links(groups)` any set of concurrent groups.

Generators build the common fabrics from a few numbers (`rail_fat_tree`, and its presets `dgx_fat_tree` and
`nvl72`); a cluster JSON names one (`{"generator": "nvl72", ...}`) or lists the graph itself
(`{"tiers": [...], "nodes": [...], "edges": [...]}`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # networkx (0.2 s to import) loads only when a fabric graph is built
    import networkx as nx

from planner.errors import SpecError
from planner.specs.model import show, show_key

MAX_GPUS = 10_000_000


# ---- small validated records ------------------------------------------------------------------


def _number(where: str, value: Any, lo: float = 0.0, strict: bool = True, hi: float = 1e15) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise SpecError(f"must be a finite number, got {show(value)}", field=where)
    v = float(value)
    if (v <= lo if strict else v < lo) or v > hi:
        raise SpecError(f"must be {'>' if strict else '>='} {lo:g} and <= {hi:g}, got {show(value)}", field=where)
    return v


def _integer(where: str, value: Any, lo: int = 1, hi: int = MAX_GPUS) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise SpecError(f"must be an integer from {lo} to {hi}, got {show(value)}", field=where)
    return value


def _text(where: str, value: Any, empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not empty) or len(value) > 10_000:
        raise SpecError(f"must be a {'' if empty else 'non-empty '}string, got {show(value)}", field=where)
    return value


def _keys(where: str, data: Any, required: Iterable[str], optional: Iterable[str] = ()) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise SpecError(f"expected a JSON object, got {type(data).__name__}", field=where)
    required, allowed = set(required), set(required) | set(optional)
    unknown = sorted(show_key(k) for k in data if k not in allowed)
    if unknown:
        raise SpecError(f"unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(allowed))})",
                        field=f"{where}.{unknown[0]}")
    missing = sorted(required - set(data))
    if missing:
        raise SpecError("missing required field", field=f"{where}.{missing[0]}")
    return data


@dataclass(frozen=True)
class Tier:
    """One class of links (NVLink 4, NDR InfiniBand, ...): what the graph's edges of this tier share.

    `efficiency` is the achieved fraction of link bandwidth for large collectives (measured by NCCL tests or
    assumed, as in the link presets); the graph knows bandwidth and latency, not how well software uses them.
    """

    name: str
    efficiency: float = 0.8
    source: str = ""

    def __post_init__(self) -> None:
        _text("tier.name", self.name)
        _number(f"tier[{self.name}].efficiency", self.efficiency, hi=1.0)
        _text(f"tier[{self.name}].source", self.source, empty=True)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "efficiency": self.efficiency, "source": self.source}


@dataclass(frozen=True)
class LinkClass:
    """A link class as the generators use it: per-GPU bandwidth into the tier (bytes/s per direction), the
    end-to-end latency of one message across one switch of it (s; the link presets' alpha), efficiency."""

    name: str
    bandwidth: float
    latency: float
    efficiency: float = 0.8
    source: str = ""

    def __post_init__(self) -> None:
        _text("link.name", self.name)
        _number(f"link[{self.name}].bandwidth", self.bandwidth)
        _number(f"link[{self.name}].latency", self.latency, strict=False, hi=10.0)
        _number(f"link[{self.name}].efficiency", self.efficiency, hi=1.0)
        _text(f"link[{self.name}].source", self.source, empty=True)

    @property
    def tier(self) -> Tier:
        return Tier(self.name, self.efficiency, self.source)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "bandwidth": self.bandwidth, "latency": self.latency,
                "efficiency": self.efficiency, "source": self.source}

    @classmethod
    def from_dict(cls, data: Any, where: str,
                  resolve: Callable[[str], LinkClass] | None = None) -> LinkClass:
        """A link preset's name (resolved by `resolve`, e.g. the catalog's link presets) or an object."""
        if isinstance(data, LinkClass):
            return data
        if isinstance(data, str):
            if resolve is None:
                raise SpecError(f"a link preset name ({show(data)}) needs the catalog; give an object", field=where)
            try:
                return resolve(data)
            except SpecError as exc:
                raise SpecError(str(exc).removeprefix(f"{exc.field}: "), field=where) from None
        d = _keys(where, data, ("name", "bandwidth", "latency"), ("efficiency", "source"))
        try:
            return cls(**d)
        except SpecError as exc:
            raise SpecError(str(exc).removeprefix(f"{exc.field}: "),
                            field=f"{where}.{(exc.field or '').rsplit('.', 1)[-1]}") from None


@dataclass(frozen=True)
class GroupLinks:
    """What a communication group's ring crosses (worst group, when several run at once)."""

    size: int  # members of one group
    tier: str | None  # the slowest tier any ring neighbour pair talks over (None: a group of one)
    bandwidth: float  # bytes/s per GPU per direction on its most loaded link, all groups running (inf: one)
    hops: int  # links on the longest neighbour path
    latency: float  # seconds along the slowest neighbour path (sum of its links' latencies)
    domains: int  # fast (NVLink) domains one group spans (the cost model's N)
    per_domain: int  # most members of one group inside one fast domain (the cost model's k)


# ---- the graph ----------------------------------------------------------------------------------


class _Fabric:
    """The indexed graph behind a Topology (built once per description and size, see `_fabric`)."""

    def __init__(self, graph: nx.Graph, tiers: tuple[Tier, ...], where: str) -> None:
        self.graph = graph
        self.tiers = tiers
        level = {t.name: i for i, t in enumerate(tiers)}
        if len(level) != len(tiers):
            raise SpecError("tier names must be unique", field=f"{where}.tiers")
        self.rank_node: dict[int, Any] = {}
        self.host: dict[int, str] = {}
        for node, attrs in graph.nodes(data=True):
            if attrs.get("kind") == "gpu":
                rank = attrs.get("rank")
                if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
                    raise SpecError(f"GPU {show(node)} needs a non-negative integer rank, got {show(rank)}",
                                    field=f"{where}.nodes")
                if rank in self.rank_node:
                    raise SpecError(f"rank {rank} is given to two GPUs ({show(self.rank_node[rank])} and "
                                    f"{show(node)})", field=f"{where}.nodes")
                if not isinstance(attrs.get("host"), str) or not attrs["host"]:
                    raise SpecError(f"GPU {show(node)} needs a host name", field=f"{where}.nodes")
                self.rank_node[rank] = node
                self.host[rank] = attrs["host"]
        n = len(self.rank_node)
        if n == 0:
            raise SpecError("the graph has no GPU (a node of kind 'gpu')", field=f"{where}.nodes")
        if sorted(self.rank_node) != list(range(n)):
            missing = next(r for r in range(n) if r not in self.rank_node)
            raise SpecError(f"GPU ranks must be 0..{n - 1}; rank {missing} is missing", field=f"{where}.nodes")
        self.num_gpus = n
        self.is_gpu = {node: attrs.get("kind") == "gpu" for node, attrs in graph.nodes(data=True)}
        # adjacency: node -> [(neighbour, bandwidth, latency, tier level)]
        self.adj: dict[Any, list[tuple[Any, float, float, int]]] = {node: [] for node in graph.nodes}
        for a, b, attrs in graph.edges(data=True):
            if a == b:
                raise SpecError(f"a link from {show(a)} to itself", field=f"{where}.edges")
            tier = attrs.get("tier")
            if tier not in level:
                raise SpecError(f"link {show(a)}-{show(b)} has tier {show(tier)} (known: {', '.join(level)})",
                                field=f"{where}.edges")
            bw = _number(f"{where}.edges[{show(a)}-{show(b)}].bandwidth", attrs.get("bandwidth"))
            lat = _number(f"{where}.edges[{show(a)}-{show(b)}].latency", attrs.get("latency"), strict=False,
                          hi=10.0)
            self.adj[a].append((b, bw, lat, level[tier]))
            self.adj[b].append((a, bw, lat, level[tier]))
        self._check_hosts(where)
        # which tier level first connects each pair: per level, the components of the non-GPU nodes joined
        # by links of that tier or faster, and the set of components each GPU touches
        self.touch: list[dict[int, frozenset[Any]]] = []
        self.direct: list[set[tuple[int, int]]] = []
        for lv in range(len(tiers)):
            parent: dict[Any, Any] = {}

            def find(x: Any, parent: dict[Any, Any] = parent) -> Any:
                while parent.setdefault(x, x) != x:
                    parent[x] = parent[parent[x]]
                    x = parent[x]
                return x

            for a, nbrs in self.adj.items():
                if self.is_gpu[a]:
                    continue
                for b, _, _, t in nbrs:
                    if t <= lv and not self.is_gpu[b]:
                        parent[find(a)] = find(b)
            touch, direct = {}, set()
            for rank, node in self.rank_node.items():
                comps = set()
                for b, _, _, t in self.adj[node]:
                    if t > lv:
                        continue
                    if self.is_gpu[b]:
                        direct.add((rank, self.graph.nodes[b]["rank"]))
                    else:
                        comps.add(find(b))
                touch[rank] = frozenset(comps)
            self.touch.append(touch)
            self.direct.append(direct)
        for rank in range(1, n):
            if self.level(0, rank) is None:
                raise SpecError(f"rank {rank} cannot reach rank 0 (GPUs do not forward traffic)",
                                field=f"{where}.edges")
        self.domain_of = self._domains(where)

    def _check_hosts(self, where: str) -> None:
        """torchrun numbers ranks host by host: each host's ranks are one contiguous block, all hosts alike
        (the last one may be partial when a job uses part of the cluster)."""
        sizes: list[int] = []
        seen: set[str] = set()
        prev = None
        for rank in range(self.num_gpus):
            h = self.host[rank]
            if h != prev:
                if h in seen:
                    raise SpecError(f"host {show(h)}'s ranks are not contiguous (rank {rank})",
                                    field=f"{where}.nodes")
                seen.add(h)
                sizes.append(0)
                prev = h
            sizes[-1] += 1
        if any(s != sizes[0] for s in sizes[:-1]) or sizes[-1] > sizes[0]:
            raise SpecError(f"hosts hold different numbers of GPUs ({', '.join(map(str, sizes[:8]))}...)",
                            field=f"{where}.nodes")
        self.gpus_per_host = sizes[0]
        self.num_hosts = len(sizes)

    def level(self, a: int, b: int, upto: int | None = None) -> int | None:
        """The fastest tier level that connects ranks a and b (None: none up to `upto`)."""
        top = len(self.tiers) - 1 if upto is None else upto
        for lv in range(top + 1):
            if self.touch[lv][a] & self.touch[lv][b] or (a, b) in self.direct[lv] or (b, a) in self.direct[lv]:
                return lv
        return None

    def _domains(self, where: str) -> list[int]:
        """Fast-domain index of every rank; domains must be contiguous rank blocks of one size."""
        parent: dict[Any, Any] = {}

        def find(x: Any) -> Any:
            while parent.setdefault(x, x) != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for rank, comps in self.touch[0].items():
            for c in comps:
                parent[find(("r", rank))] = find(("c", c))
        for a, b in self.direct[0]:
            parent[find(("r", a))] = find(("r", b))
        index: dict[Any, int] = {}
        domain = [index.setdefault(find(("r", r)), len(index)) for r in range(self.num_gpus)]
        sizes = [0] * len(index)
        for d in domain:
            sizes[d] += 1
        self.nvlink_domain = max(sizes)
        for rank in range(self.num_gpus):
            if domain[rank] != rank // self.nvlink_domain:
                raise SpecError(f"fast (tier {self.tiers[0].name}) domains must be contiguous blocks of "
                                f"{self.nvlink_domain} ranks; rank {rank} is in another block's domain",
                                field=f"{where}.edges")
        return domain

    # ---- routing ------------------------------------------------------------------------------

    def route(self, a: int, b: int) -> tuple[int, int, float, dict[tuple[Any, Any], float]]:
        """(tier level, hops, latency, {directed link: fraction of the flow}) of a message from rank a to b."""
        lv = self.level(a, b)
        if lv is None:  # checked at construction; kept for safety
            raise SpecError(f"ranks {a} and {b} are not connected", field="topology")
        s, t = self.rank_node[a], self.rank_node[b]
        adj, is_gpu = self.adj, self.is_gpu

        def expand(frontier: list[Any], dist: dict[Any, int], other: dict[Any, int], own: Any, far: Any,
                   best: float) -> tuple[list[Any], float]:
            new = []
            for u in frontier:
                if is_gpu[u] and u != own:
                    continue  # the far endpoint: GPUs do not forward
                du = dist[u]
                for v, _, _, tv in adj[u]:
                    if tv > lv or v in dist or (is_gpu[v] and v != far):
                        continue
                    dist[v] = du + 1
                    new.append(v)
                    if v in other:
                        best = min(best, dist[v] + other[v])
            return new, best

        ds, dt = {s: 0}, {t: 0}
        fs, ft, rs, rt = [s], [t], 0, 0
        best = math.inf
        while best > rs + rt:  # bidirectional BFS: every path of length <= rs + rt meets in both balls
            if fs and (len(fs) <= len(ft) or not ft):
                fs, best = expand(fs, ds, dt, s, t, best)
                rs += 1
            elif ft:
                ft, best = expand(ft, dt, ds, t, s, best)
                rt += 1
            else:
                raise SpecError(f"ranks {a} and {b} are not connected", field="topology")
        d = int(best)
        mid = d // 2
        while rs < mid and fs:
            fs, _ = expand(fs, ds, dt, s, t, best)
            rs += 1
        while rt < d - mid and ft:
            ft, _ = expand(ft, dt, ds, t, s, best)
            rt += 1
        meet = [u for u, du in ds.items() if du == mid and dt.get(u) == d - mid]
        # the shortest-path DAG: ancestors of the meeting layer towards s, descendants towards t
        first, second = set(meet), set(meet)
        stack = list(meet)
        while stack:
            u = stack.pop()
            for v, _, _, tv in adj[u]:
                if tv <= lv and ds.get(v) == ds[u] - 1 and v not in first:
                    first.add(v)
                    stack.append(v)
        stack = list(meet)
        while stack:
            u = stack.pop()
            for v, _, _, tv in adj[u]:
                if tv <= lv and dt.get(v) == dt[u] - 1 and v not in second:
                    second.add(v)
                    stack.append(v)
        layers: list[list[Any]] = [[] for _ in range(d + 1)]
        for u in first:
            layers[ds[u]].append(u)
        for u in second - first:
            layers[d - dt[u]].append(u)
        share = {s: 1.0}
        latest = {s: 0.0}
        fractions: dict[tuple[Any, Any], float] = {}
        for p in range(d):
            for u in layers[p]:
                if p < mid:
                    nxt = [(v, bw, lat) for v, bw, lat, tv in adj[u] if tv <= lv and v in first and ds[v] == p + 1]
                else:
                    nxt = [(v, bw, lat) for v, bw, lat, tv in adj[u]
                           if tv <= lv and v in second and dt.get(v) == dt[u] - 1]
                total = sum(bw for _, bw, _ in nxt)
                for v, bw, lat in nxt:
                    f = share[u] * bw / total
                    share[v] = share.get(v, 0.0) + f
                    fractions[(u, v)] = fractions.get((u, v), 0.0) + f
                    latest[v] = max(latest.get(v, 0.0), latest[u] + lat)
        return lv, d, latest[t], fractions

    def links(self, groups: Sequence[Sequence[int]]) -> GroupLinks:
        """Price concurrent rings, one per group (see the module docstring)."""
        flows: list[tuple[int, int]] = []
        for g in groups:
            m = sorted(g)
            if len(m) == 2:  # a ring of two sends both ways
                flows += [(m[0], m[1]), (m[1], m[0])]
            elif len(m) > 2:
                flows += [(m[i], m[(i + 1) % len(m)]) for i in range(len(m))]
        size = max((len(g) for g in groups), default=0)
        domains, per_domain = 0, 0
        for g in groups:
            counts: dict[int, int] = {}
            for r in g:
                counts[self.domain_of[r]] = counts.get(self.domain_of[r], 0) + 1
            domains = max(domains, len(counts))
            per_domain = max(per_domain, max(counts.values(), default=0))
        if not flows:
            return GroupLinks(size, None, math.inf, 0, 0.0, domains, per_domain)
        routed = [self.route(a, b) for a, b in flows]
        load: dict[tuple[Any, Any], float] = {}
        for _, _, _, fr in routed:
            for e, f in fr.items():
                load[e] = load.get(e, 0.0) + f
        bandwidth = math.inf
        for _, _, _, fr in routed:
            for (u, v), _ in fr.items():
                bw = self.graph.edges[u, v]["bandwidth"]
                bandwidth = min(bandwidth, bw / load[(u, v)])
        lv = max(r[0] for r in routed)
        return GroupLinks(size=size, tier=self.tiers[lv].name, bandwidth=bandwidth,
                          hops=max(r[1] for r in routed), latency=max(r[2] for r in routed),
                          domains=domains, per_domain=per_domain)


# ---- descriptions: generators and explicit graphs ----------------------------------------------


GENERATOR_DEFAULTS: dict[str, dict[str, Any]] = {
    # a DGX / HGX SuperPOD: 8 GPUs on one NVSwitch system per node, one NIC per GPU (rail i -> leaf i)
    "dgx_fat_tree": {"gpus_per_host": 8, "hosts_per_domain": 1, "nvswitches": 1},
    # a GB200 / GB300 NVL72 rack: 18 compute trays of 4 GPUs, each GPU linked to all 9 NVLink switch trays
    "nvl72": {"gpus_per_host": 4, "hosts_per_domain": 18, "nvswitches": 9},
    "rail_fat_tree": {},
}
FAT_TREE_FIELDS = ("gpus_per_host", "hosts_per_domain", "nvswitches", "nvlink", "network", "hosts_per_leaf",
                   "spines", "taper", "hop_latency")
FAT_TREE_DEFAULTS = {"hosts_per_leaf": 32, "spines": 8, "taper": 1.0, "hop_latency": 0.5e-6}


def _fat_tree_params(data: dict[str, Any], where: str,
                     resolve: Callable[[str], LinkClass] | None) -> dict[str, Any]:
    """Validated, complete parameters of `rail_fat_tree` (links resolved to objects)."""
    gen = data.get("generator")
    if gen not in GENERATOR_DEFAULTS:
        raise SpecError(f"unknown generator {show(gen)} (known: {', '.join(GENERATOR_DEFAULTS)})",
                        field=f"{where}.generator")
    defaults = {**FAT_TREE_DEFAULTS, **GENERATOR_DEFAULTS[gen]}
    required = [f for f in FAT_TREE_FIELDS if f not in defaults]
    _keys(where, data, ["generator", *required], [f for f in FAT_TREE_FIELDS if f in defaults])
    p = {**defaults, **{k: v for k, v in data.items() if k != "generator"}}
    for k in ("gpus_per_host", "hosts_per_domain", "nvswitches", "hosts_per_leaf", "spines"):
        _integer(f"{where}.{k}", p[k], hi=100_000)
    p["taper"] = _number(f"{where}.taper", p["taper"], lo=1.0, strict=False, hi=1e3)
    p["hop_latency"] = _number(f"{where}.hop_latency", p["hop_latency"], strict=False, hi=1.0)
    for k in ("nvlink", "network"):
        p[k] = LinkClass.from_dict(p[k], f"{where}.{k}", resolve)
    if p["network"].latency < p["hop_latency"]:
        raise SpecError(f"the network's end-to-end latency ({p['network'].latency:g} s) is below one switch hop "
                        f"({p['hop_latency']:g} s)", field=f"{where}.hop_latency")
    if p["nvlink"].name == p["network"].name:
        raise SpecError("the NVLink and network link classes need different names", field=f"{where}.network")
    return p


def _build_fat_tree(p: dict[str, Any], hosts: int) -> tuple[nx.Graph, tuple[Tier, ...]]:
    """The graph of `rail_fat_tree` (see its docstring) for `hosts` hosts."""
    import networkx as nx

    g = nx.Graph()
    fast, net = p["nvlink"], p["network"]
    gph, hpd, nsw = p["gpus_per_host"], p["hosts_per_domain"], p["nvswitches"]
    hop = p["hop_latency"]
    domains = -(-hosts // hpd)
    sus = -(-hosts // p["hosts_per_leaf"])
    for d in range(domains):
        for k in range(nsw):
            g.add_node(f"d{d}/nvswitch{k}", kind="nvswitch")
    for u in range(sus):
        for r in range(gph):
            g.add_node(f"su{u}/leaf{r}", kind="leaf")
    leaves = sus * gph
    if leaves > 1:
        for k in range(p["spines"]):
            g.add_node(f"spine{k}", kind="spine")
        up = p["hosts_per_leaf"] * net.bandwidth / p["taper"] / p["spines"]
        for u in range(sus):
            for r in range(gph):
                for k in range(p["spines"]):
                    g.add_edge(f"su{u}/leaf{r}", f"spine{k}", bandwidth=up, latency=hop / 2, tier=net.name)
    for h in range(hosts):
        d, u = h // hpd, h // p["hosts_per_leaf"]
        for i in range(gph):
            gpu, nic = f"h{h}/gpu{i}", f"h{h}/nic{i}"
            g.add_node(gpu, kind="gpu", rank=h * gph + i, host=f"h{h}")
            g.add_node(nic, kind="nic")
            for k in range(nsw):
                g.add_edge(gpu, f"d{d}/nvswitch{k}", bandwidth=fast.bandwidth / nsw, latency=fast.latency / 2,
                           tier=fast.name)
            g.add_edge(gpu, nic, bandwidth=net.bandwidth, latency=(net.latency - hop) / 2, tier=net.name)
            g.add_edge(nic, f"su{u}/leaf{i}", bandwidth=net.bandwidth, latency=hop / 2, tier=net.name)
    return g, (fast.tier, net.tier)


def _graph_from_dict(data: dict[str, Any], where: str) -> tuple[nx.Graph, tuple[Tier, ...]]:
    _keys(where, data, ("tiers", "nodes", "edges"))
    if not isinstance(data["tiers"], list) or not data["tiers"]:
        raise SpecError("must be a non-empty list of tiers, fastest first", field=f"{where}.tiers")
    tiers = []
    for i, t in enumerate(data["tiers"]):
        w = f"{where}.tiers[{i}]"
        d = _keys(w, t, ("name",), ("efficiency", "source"))
        try:
            tiers.append(Tier(**d))
        except SpecError as exc:
            raise SpecError(str(exc).removeprefix(f"{exc.field}: "), field=w) from None
    import networkx as nx

    g = nx.Graph()
    if not isinstance(data["nodes"], list) or not data["nodes"]:
        raise SpecError("must be a non-empty list of nodes", field=f"{where}.nodes")
    for i, n in enumerate(data["nodes"]):
        w = f"{where}.nodes[{i}]"
        kind = _keys(w, n, ("id", "kind"), ("rank", "host")).get("kind")
        node_id = _text(f"{w}.id", n["id"])
        _text(f"{w}.kind", kind)
        if node_id in g:
            raise SpecError(f"node {show(node_id)} is listed twice", field=f"{w}.id")
        if kind == "gpu":
            if "rank" not in n or "host" not in n:
                raise SpecError("a GPU needs a rank and a host", field=w)
            g.add_node(node_id, kind="gpu", rank=_integer(f"{w}.rank", n["rank"], lo=0),
                       host=_text(f"{w}.host", n["host"]))
        else:
            if "rank" in n or "host" in n:
                raise SpecError(f"only GPUs have a rank and a host (this node is a {show(kind)})", field=w)
            g.add_node(node_id, kind=kind)
    if not isinstance(data["edges"], list):
        raise SpecError("must be a list of links", field=f"{where}.edges")
    names = {t.name for t in tiers}
    for i, e in enumerate(data["edges"]):
        w = f"{where}.edges[{i}]"
        _keys(w, e, ("a", "b", "bandwidth", "latency", "tier"))
        for end in ("a", "b"):
            if not isinstance(e[end], str) or e[end] not in g:
                raise SpecError(f"unknown node {show(e[end])}", field=f"{w}.{end}")
        if e["a"] == e["b"]:
            raise SpecError("a link needs two different nodes", field=f"{w}.b")
        if g.has_edge(e["a"], e["b"]):
            raise SpecError(f"a second link {e['a']}-{e['b']}: give one link with their summed bandwidth",
                            field=w)
        if e["tier"] not in names:
            raise SpecError(f"unknown tier {show(e['tier'])} (known: {', '.join(sorted(names))})", field=f"{w}.tier")
        g.add_edge(e["a"], e["b"], bandwidth=_number(f"{w}.bandwidth", e["bandwidth"]),
                   latency=_number(f"{w}.latency", e["latency"], strict=False, hi=10.0), tier=e["tier"])
    return g, tuple(tiers)


@lru_cache(maxsize=32)
def _fabric(spec_json: str, num_gpus: int | None) -> _Fabric:
    """The fabric of a canonical description, cut to the first `num_gpus` ranks (None: all of it)."""
    spec = json.loads(spec_json)
    where = "topology"
    if "generator" in spec:
        p = dict(spec)
        p["nvlink"], p["network"] = LinkClass(**p["nvlink"]), LinkClass(**p["network"])
        hosts = -(-num_gpus // p["gpus_per_host"])
        graph, tiers = _build_fat_tree(p, hosts)
    else:
        graph, tiers = _graph_from_dict(spec, where)
    fabric = _Fabric(graph, tiers, where)
    if num_gpus is not None and num_gpus < fabric.num_gpus:
        graph = graph.copy()
        graph.remove_nodes_from([node for r, node in fabric.rank_node.items() if r >= num_gpus])
        fabric = _Fabric(graph, tiers, where)
    elif num_gpus is not None and num_gpus > fabric.num_gpus:
        raise SpecError(f"{num_gpus} GPUs is more than the {fabric.num_gpus} the graph holds", field=where)
    return fabric


class Topology:
    """A cluster's fabric (see the module docstring). Immutable; equal when built from the same
    description for the same number of GPUs. Build one with `rail_fat_tree`, `dgx_fat_tree`, `nvl72`,
    `from_graph` or `Topology.from_dict`."""

    def __init__(self, spec: dict[str, Any], num_gpus: int | None = None) -> None:
        self._spec_json = json.dumps(spec, sort_keys=True)
        self._spec = json.loads(self._spec_json)
        self._cache: dict[Any, GroupLinks] = {}
        self._built: _Fabric | None = None
        if "generator" in spec:  # built on first use: a generator's sizes follow from its parameters
            self._num_gpus = _integer("gpus", num_gpus)
        else:
            self._built = _fabric(self._spec_json, num_gpus)
            self._num_gpus = self._built.num_gpus

    @property
    def _fab(self) -> _Fabric:
        if self._built is None:
            self._built = _fabric(self._spec_json, self._num_gpus)
        return self._built

    # identity: a Topology is a value
    def _key(self) -> tuple[str, int]:
        return self._spec_json, self._num_gpus

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Topology) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __deepcopy__(self, memo: dict[int, Any]) -> Topology:
        return self  # immutable

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        return _topology, (self._spec_json, self._num_gpus)  # pickles as its description, not its graph

    def __repr__(self) -> str:
        kind = self._spec.get("generator", "graph")
        return (f"Topology({kind}, {self.num_gpus} GPUs, {self.gpus_per_host} per host, "
                f"NVLink domain {self.nvlink_domain})")

    @property
    def graph(self) -> nx.Graph:
        """The networkx graph (read-only view): GPUs, switches, NICs; links with bandwidth, latency, tier."""
        import networkx as nx

        return nx.graphviews.generic_graph_view(self._fab.graph)

    @property
    def tiers(self) -> tuple[Tier, ...]:
        return self._fab.tiers

    @property
    def num_gpus(self) -> int:
        return self._num_gpus

    @property
    def gpus_per_host(self) -> int:
        """GPUs per host: torchrun's --nproc-per-node (4 on a GB200 compute tray)."""
        if "generator" in self._spec:
            return min(self._spec["gpus_per_host"], self._num_gpus)
        return self._fab.gpus_per_host

    @property
    def num_hosts(self) -> int:
        return -(-self._num_gpus // self.gpus_per_host)

    @property
    def nvlink_domain(self) -> int:
        """GPUs one fast (tier 0) domain holds: 8 on a DGX, 72 on an NVL72 rack, also when the job uses
        fewer (ranks r and q share a domain when r // nvlink_domain == q // nvlink_domain)."""
        if "generator" in self._spec:
            return self._spec["gpus_per_host"] * self._spec["hosts_per_domain"]
        return _fabric(self._spec_json, None).nvlink_domain

    def domain_of(self, rank: int) -> int:
        return self._fab.domain_of[self._rank(rank)]

    def host_of(self, rank: int) -> str:
        return self._fab.host[self._rank(rank)]

    def node_of(self, rank: int) -> Any:
        """The graph node of a global rank."""
        return self._fab.rank_node[self._rank(rank)]

    def _rank(self, rank: Any) -> int:
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < self.num_gpus:
            raise SpecError(f"no rank {show(rank)} among {self.num_gpus} GPUs", field="ranks")
        return rank

    def links(self, groups: Sequence[Sequence[int]]) -> GroupLinks:
        """Rings over each group, all running at once: the worst group's tier, bandwidth, hops, latency."""
        checked = []
        for g in groups:
            members = [self._rank(r) for r in g]
            if len(set(members)) != len(members):
                raise SpecError(f"a group lists a rank twice: {show(list(g))}", field="ranks")
            checked.append(tuple(sorted(members)))
        key = tuple(sorted(checked))
        if key not in self._cache:
            self._cache[key] = self._fab.links(checked)
        return self._cache[key]

    def group(self, ranks: Iterable[int]) -> GroupLinks:
        """One group's ring, nothing else running."""
        return self.links([list(ranks)])

    def layout(self, size: int, stride: int) -> GroupLinks:
        """Every group of `size` ranks spaced `stride` apart under the standard rank layout (a dimension
        of the device mesh: ranks base + i*stride), all running at once."""
        _integer("size", size)
        _integer("stride", stride)
        span = size * stride
        if self.num_gpus % span:
            raise SpecError(f"groups of {size} ranks {stride} apart do not tile {self.num_gpus} GPUs",
                            field="size")
        key = ("layout", size, stride)
        if key not in self._cache:
            groups = [[b + o + i * stride for i in range(size)]
                      for b in range(0, self.num_gpus, span) for o in range(stride)]
            self._cache[key] = self.links(groups)
        return self._cache[key]

    def for_gpus(self, n: int) -> Topology:
        """The same fabric holding `n` GPUs: a generator builds enough hosts and the first n ranks are
        kept; an explicit graph keeps its first n ranks."""
        _integer("gpus", n)
        if n == self.num_gpus:
            return self
        return _topology(self._spec_json, n)

    def tier_summary(self) -> tuple[TierSummary, TierSummary | None]:
        """The two link tiers the flat cost model uses, from the graph: a ring over one whole fast domain
        (all domains busy), and a ring over the same position of every fast domain (all positions busy).
        Generators are measured on two fast domains under one leaf (so the numbers do not depend on the
        job's size); an explicit graph on the whole graph. None for the network when there is one domain."""
        spec = self.to_dict()
        if "generator" in spec:
            per = spec["gpus_per_host"] * spec["hosts_per_domain"]
            spec["hosts_per_leaf"] = max(spec["hosts_per_leaf"], 2 * spec["hosts_per_domain"])
            base = _topology(json.dumps(spec, sort_keys=True), 2 * per)
        else:
            base = _topology(self._spec_json, None)
        dom = base.nvlink_domain
        if base.num_gpus % dom:
            raise SpecError(f"{base.num_gpus} GPUs are not whole fast domains of {dom}", field="topology")
        fast = base.layout(dom, 1) if dom > 1 else None
        fast_tier = base.tiers[0]
        fast_sum = TierSummary(fast_tier, fast.bandwidth, fast.latency, fast.hops) if fast else \
            TierSummary(fast_tier, math.inf, 0.0, 0)
        if base.num_gpus // dom < 2:
            return fast_sum, None
        net = base.layout(base.num_gpus // dom, dom)
        tier = next(t for t in base.tiers if t.name == net.tier)
        return fast_sum, TierSummary(tier, net.bandwidth, net.latency, net.hops)

    def to_dict(self) -> dict[str, Any]:
        """The description (a generator call with every parameter, or the graph); the size is the cluster's."""
        return json.loads(self._spec_json)  # a copy: callers may change it

    @classmethod
    def from_dict(cls, data: Any, where: str = "topology", num_gpus: int | None = None,
                  resolve: Callable[[str], LinkClass] | None = None) -> Topology:
        """From a cluster file's `topology`: `{"generator": ..., params}` or `{"tiers", "nodes", "edges"}`.
        `resolve` turns link preset names into LinkClass (the catalog passes its link presets)."""
        if not isinstance(data, dict):
            raise SpecError(f"expected a JSON object, got {type(data).__name__}", field=where)
        if "generator" in data:
            p = _fat_tree_params(data, where, resolve)
            spec = {"generator": "rail_fat_tree", **{k: p[k] for k in FAT_TREE_FIELDS}}
            spec["nvlink"], spec["network"] = p["nvlink"].to_dict(), p["network"].to_dict()
            if num_gpus is None:
                num_gpus = spec["gpus_per_host"] * spec["hosts_per_domain"]
        else:
            _graph_from_dict(data, where)  # field-precise errors before the fabric is indexed
            spec = data
        try:
            return cls(spec, num_gpus)
        except SpecError as exc:
            if exc.field and exc.field.startswith("topology"):
                raise SpecError(str(exc).removeprefix(f"{exc.field}: "),
                                field=where + exc.field.removeprefix("topology")) from None
            raise


@lru_cache(maxsize=64)
def _topology(spec_json: str, num_gpus: int | None) -> Topology:
    """One shared Topology per description and size, so a resized cluster keeps its group results."""
    return Topology(json.loads(spec_json), num_gpus)


@dataclass(frozen=True)
class TierSummary:
    """One tier as a flat link: per-GPU ring bandwidth and latency found in the graph."""

    tier: Tier
    bandwidth: float  # bytes/s per GPU per direction
    latency: float  # seconds per ring step (one neighbour path)
    hops: int


# ---- generators ----------------------------------------------------------------------------------


def rail_fat_tree(hosts: int, gpus_per_host: int, hosts_per_domain: int, nvswitches: int,
                  nvlink: LinkClass, network: LinkClass, hosts_per_leaf: int = 32, spines: int = 8,
                  taper: float = 1.0, hop_latency: float = 0.5e-6) -> Topology:
    """NVLink domains of `hosts_per_domain` hosts joined by a rail-optimised two-level fat tree.

    Fast tier: every GPU of a domain links to each of its `nvswitches` switches with nvlink.bandwidth /
    nvswitches (NVSwitch chips or switch trays; one logical switch when they are one non-blocking stage).
    Network: GPU i of a host has its own NIC at network.bandwidth to the leaf of rail i of its scalable
    unit (`hosts_per_leaf` hosts); every leaf links to every spine with its downlink bandwidth / `taper`
    split evenly (taper 1: full bisection, as DGX SuperPODs are built).
    Latency: a one-switch path costs the link class's measured end-to-end latency (its GPU-side edges
    carry all but one `hop_latency`); every further switch adds `hop_latency`.
    """
    spec = {"generator": "rail_fat_tree", "gpus_per_host": gpus_per_host, "hosts_per_domain": hosts_per_domain,
            "nvswitches": nvswitches, "nvlink": nvlink, "network": network, "hosts_per_leaf": hosts_per_leaf,
            "spines": spines, "taper": taper, "hop_latency": hop_latency}
    _integer("hosts", hosts)
    return Topology.from_dict(spec, num_gpus=hosts * gpus_per_host)


def dgx_fat_tree(nodes: int, nvlink: LinkClass, network: LinkClass, gpus_per_node: int = 8,
                 **fabric: Any) -> Topology:
    """DGX / HGX nodes (one NVSwitch system of `gpus_per_node` GPUs each, a NIC per GPU) on a rail fat tree."""
    return rail_fat_tree(nodes, gpus_per_node, 1, 1, nvlink, network, **fabric)


def nvl72(racks: int, nvlink: LinkClass, network: LinkClass, gpus_per_tray: int = 4, trays: int = 18,
          switch_trays: int = 9, **fabric: Any) -> Topology:
    """GB200 / GB300 NVL72 racks: `trays` compute trays (hosts) of `gpus_per_tray` GPUs in one NVLink domain,
    each GPU linked to all `switch_trays` NVLink switch trays; racks joined by a NIC per GPU."""
    return rail_fat_tree(racks * trays, gpus_per_tray, trays, switch_trays, nvlink, network, **fabric)


def from_graph(graph: nx.Graph, tiers: Sequence[Tier]) -> Topology:
    """A Topology from a networkx graph laid out as the module docstring says (node attributes kind, rank,
    host; edge attributes bandwidth, latency, tier)."""
    nodes = []
    for node, attrs in graph.nodes(data=True):
        entry = {"id": str(node), "kind": attrs.get("kind")}
        entry.update({k: attrs[k] for k in ("rank", "host") if k in attrs})
        nodes.append(entry)
    edges = [{"a": str(a), "b": str(b), **{k: attrs.get(k) for k in ("bandwidth", "latency", "tier")}}
             for a, b, attrs in graph.edges(data=True)]
    return Topology.from_dict({"tiers": [t.to_dict() for t in tiers], "nodes": nodes, "edges": edges})
