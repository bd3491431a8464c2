"""Fit the two A100 efficiencies of the compute model to Korthikanti et al. 2022 Table 4.

The fitted parameters are the sustained GEMM fraction of peak (`gemm_efficiency`) and the achieved
fraction of HBM bandwidth of memory-bound kernels (`memory_efficiency`) of A100-SXM4-80GB. Only the
ten Table 4 values (one 22B layer, forward and backward, five recompute / sequence-parallel modes)
are used; Table 5 iteration times and the memory figures stay held out (`planner validate
--published` reports them). Everything else is a datasheet number or a microbenchmark result
(see docs/cost-model.md). Usage: python benchmarks/fit_a100.py
"""

from __future__ import annotations

import dataclasses

import numpy as np

from planner.published import CLUSTER, published_rows
from planner.specs.catalog import load_cluster


def main() -> None:
    base = load_cluster(CLUSTER)

    def with_eff(gemm: float, mem: float):
        gpu = dataclasses.replace(base.gpu, gemm_efficiency=round(float(gemm), 2),
                                  memory_efficiency=round(float(mem), 2))
        return dataclasses.replace(base, gpu=gpu)

    best = None
    for gemm in np.arange(0.60, 0.90, 0.01):
        for mem in np.arange(0.70, 0.96, 0.01):
            rows = published_rows(with_eff(gemm, mem), sources=("table4",))
            rms = float(np.sqrt(np.mean([r.error ** 2 for r in rows])))
            if best is None or rms < best[0]:
                best = (rms, gemm, mem)
    rms, gemm, mem = best
    print(f"fit on the 10 Table 4 values: gemm_efficiency = {gemm:.2f}, memory_efficiency = {mem:.2f} "
          f"(RMS error {rms * 100:.2f}%)")
    print(f"catalog (planner/data/gpus.json): gemm_efficiency = {base.gpu.gemm_efficiency:.2f}, "
          f"memory_efficiency = {base.gpu.memory_efficiency:.2f}")
    held = published_rows(with_eff(gemm, mem), sources=("table5",))
    mape = np.mean([abs(r.error) for r in held])
    print(f"held-out Table 5 iteration times with the fitted values: MAPE {mape * 100:.1f}%, "
          f"worst {max(abs(r.error) for r in held) * 100:.1f}%")


if __name__ == "__main__":
    main()
