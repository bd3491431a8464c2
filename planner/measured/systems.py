"""The machines the published runs used, mapped to catalog clusters where the catalog has them.

A system is found by name in the catalog (`planner clusters`), so a preset added later (GB200 NVL72,
the 500 W / 96 GB H100 of Meta's Grand Teton, ...) is picked up without changing this file. Where the
catalog lacks a system, the run's reason names it; `substitute` (opt-in, for exploring accuracy only)
names the nearest catalog system, and every row mapped that way says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.specs.catalog import cluster_names, cluster_preset, gpu_preset, link_preset
from planner.specs.cluster import ClusterSpec, LinkSpec


@dataclass(frozen=True)
class System:
    description: str  # as the reason prints it
    presets: tuple[tuple[str, ...], ...]  # catalog cluster names matching all tokens of one tuple
    substitute: str | None = None  # nearest catalog cluster (opt-in, flagged per row)
    sku_printed: bool = True


SYSTEMS: dict[str, System] = {
    # NVIDIA EOS: DGX H100 (700 W, 8 GPUs, NVLink 4, 8x NDR 400 Gb/s) - the dgxc READMEs
    "dgx-h100": System("DGX H100", (("dgx-h100",),)),
    "gb200-nvl72": System("GB200 NVL72", (("gb200",),), substitute=None),
    # Meta Grand Teton: H100 SXM 96 GB HBM2e at a 500 W limit, 400 Gb/s RDMA per GPU (torchtitan benchmarks)
    "h100-96gb-500w": System("H100 96GB HBM2e 500 W (Grand Teton)",
                             (("grand-teton",), ("h100", "500w"), ("h100", "96gb")), substitute="dgx-h100"),
    # torchtitan docs/performance.md: "64 A100 80GB" (network not printed: DGX A100 80GB assumed)
    "a100-80gb": System("A100 80GB", (("dgx-a100-80gb",),)),
    # WhiteFiber: 8 H200 per host on NVLink, 400 Gb/s CX-7 per GPU (= the catalog's dgx-h200)
    "h200": System("H200", (("dgx-h200",),)),
    "b200-power-limited": System("B200 power-limited (limit not printed)", (("b200", "power-limited"),),
                                 substitute="dgx-b200"),
    "blackwell-unknown": System("Blackwell (SKU not printed)", (), sku_printed=False),
    "jean-zay-a100": System("Jean Zay A100 80GB", ()),  # built below from catalog parts
}

# Jean Zay (BLOOM): 8 A100 80GB per node on NVLink; 4 Omni-Path 100 Gb/s links per node (Le Scao et al.
# 2022, arXiv 2211.05100, section 3.4.1) = 50 GB/s per node = 6.25 GB/s per GPU. Achieved fraction measured
# on the same partition in the BLOOM team's environment (bigscience-workshop/bigscience,
# experiments/bandwidth/all_reduce_bench-a100-n4.txt, commit 358e3c8, 2022-01-28): a 4 GB fp32 all-reduce
# over 4 nodes x 8 A100 (NCCL 2.10.3, NET/IB verbs on the hfi1 Omni-Path adapters; NCCL's log shows its 2
# ring channels crossing each node boundary through one adapter) reaches a bus bandwidth of 40.55 Gb/s
# (the median of its 128 steady trials; the first trial of each rank, 15 Gb/s, is warm-up), 40.55 / 100 of
# one adapter's line rate. Latency as the catalog's InfiniBand tier.
_IB = link_preset("ib-hdr-200")
OPA_ACHIEVED = 40.55 / 100  # all_reduce_bench bus bandwidth over one 100 Gb/s adapter's line rate
OMNI_PATH_4X100 = LinkSpec(name="omni-path-4x100", bandwidth=4 * 100e9 / 8 / 8, latency=_IB.latency,
                           efficiency=OPA_ACHIEVED,
                           source="4 x Omni-Path 100 Gb/s per 8-GPU node (BLOOM paper, section 3.4.1); NCCL over "
                                  "Omni-Path verbs achieves 40.55 Gb/s of 100 (bigscience all_reduce_bench on "
                                  "Jean Zay's A100 partition, 2022-01-28); latency as ib-hdr-200")


def jean_zay() -> ClusterSpec:
    return ClusterSpec(name="jean-zay-a100", gpu=gpu_preset("A100-SXM4-80GB"), gpus_per_node=8,
                       intra_node=link_preset("nvlink3"), inter_node=OMNI_PATH_4X100,
                       source="Jean Zay gpu_p5 (BLOOM): A100-SXM4-80GB x 8 per node, NVLink 3, "
                              "4 x Omni-Path 100 Gb/s per node")


def catalog_name(key: str) -> str | None:
    """The catalog cluster a system maps to today, or None."""
    names = cluster_names()
    for tokens in SYSTEMS[key].presets:
        for name in names:
            if all(t in name.lower() for t in tokens):
                return name
    return None


def cluster_for(key: str, substitute: bool = False) -> tuple[ClusterSpec | None, str | None]:
    """(the base cluster of a system, the substitution note if one was made); (None, None) if absent."""
    if key == "jean-zay-a100":
        return jean_zay(), None
    name = catalog_name(key)
    if name is not None:
        return cluster_preset(name), None
    sub = SYSTEMS[key].substitute
    if substitute and sub is not None:
        return cluster_preset(sub), f"system {SYSTEMS[key].description} substituted by catalog {sub}"
    return None, None
