"""`planner fit --overlaps`: a framework's overlap slowdown fitted on runs generated at a known value.

The reference is the cost model itself at the known value (synthetic measured step times), as for the GPU
and fabric parameters in tests/test_fit.py: the fit must find the value that generated the runs, leave
runs that do not depend on it out, and report a value at an end of [0, 1] without adopting it. The
override the fit prices candidates with must apply to a framework and its releases only, and be undone.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from planner import fit
from planner.cli import main
from planner.cost import estimate
from planner.framework import framework, framework_root, overlap_slowdowns
from planner.measured import MeasuredRun, express_all, printed_runs
from planner.simulate import simulate_plans


@pytest.fixture(scope="module")
def nemo_runs() -> list[MeasuredRun]:
    """Pre-training runs under NeMo's profiles (nemo and its FlashAttention-2 release nemo-fa2) on DGX H100,
    every fifth: tensor, pipeline and data parallel, overlapped TP and DP communication."""
    runs = [r for r in express_all(printed_runs(("dgxc",))) if isinstance(r, MeasuredRun) and r.step_time_s
            and r.cluster.gpu.name == "H100-SXM5-80GB" and fit.run_framework(r) == "nemo"
            and r.plan.finetune == "full"]
    return runs[::5][:14]


def _at(runs: list[MeasuredRun], slowdown: float) -> list[MeasuredRun]:
    """The runs with their measured step time replaced by the cost model's at `slowdown` for NeMo."""
    return [dataclasses.replace(r, run=dataclasses.replace(r.run, step_time_s=fit.step_time(r, {}, {"nemo": slowdown})))
            for r in runs]


def test_fit_recovers_a_known_overlap_slowdown(nemo_runs: list[MeasuredRun]) -> None:
    """Generated at 0.40 (the catalog's is 0.15): the framework's value is found, the GPU's efficiencies
    (generated at the catalog's) stay, and the real cost model at the adopted values reproduces the runs."""
    runs = _at(nemo_runs, 0.40)
    surfaces = fit.tabulate(runs)
    gpus = {s.gpu: s.run.cluster.gpu for s in surfaces}
    fitted = {f.name: f for f in fit.fit_all(surfaces, gpus, overlaps=True)}
    name = fit.overlap_parameter("nemo")
    assert fitted[name].adopted and fitted[name].value == pytest.approx(0.40, abs=0.02)
    assert fitted[name].before == pytest.approx(0.15) and fitted[name].gpu == ""
    assert fitted[name].rows >= fit.MIN_ROWS
    score = fit.Score.of(fit.predict(runs, fitted.values()), [r.step_time_s for r in runs])
    assert score.mape < 0.02


def test_a_value_at_an_end_of_the_range_is_not_adopted(nemo_runs: list[MeasuredRun]) -> None:
    """Generated with every overlapped collective free (0), the fit lands on the bound: reported, not used."""
    runs = _at(nemo_runs, 0.0)
    fitted = fit.fit_overlaps(fit.tabulate_overlaps(runs, {}))
    (f,) = fitted
    assert f.value == pytest.approx(0.0, abs=0.005) and f.at_bound and not f.adopted
    assert fit.values_by_framework(fitted) == {}


def test_only_runs_whose_step_depends_on_it_inform_it(nemo_runs: list[MeasuredRun]) -> None:
    """A run counts where its step time moves by FABRIC_SENSITIVITY or more between 0 and 1; the table of
    each counted run is the cost model's at the grid's values, and runs under a framework that overlaps
    nothing (BLOOM's Megatron-DeepSpeed) count for none."""
    surfaces = fit.tabulate_overlaps(nemo_runs, {})
    assert surfaces and all(s.name == fit.overlap_parameter("nemo") for s in surfaces)
    for s in surfaces[:3]:
        for v, t in zip(fit.OVERLAP_GRID, s.table, strict=True):
            assert t == pytest.approx(fit.step_time(s.run, {}, {"nemo": v}), rel=1e-12)
        assert s.table[-1] >= s.table[0] * (1 + fit.FABRIC_SENSITIVITY)
    bloom = [r for r in express_all(printed_runs(("bloom",))) if isinstance(r, MeasuredRun) and r.step_time_s][:6]
    assert fit.tabulate_overlaps(bloom, {}) == []


def test_the_override_reaches_releases_and_is_undone(nemo_runs: list[MeasuredRun]) -> None:
    """Inside the block NeMo and its release nemo-fa2 take the value, torchtitan keeps its own; after it
    every profile is as before, and a run's step time with it."""
    assert framework_root("nemo-fa2") == "nemo" and framework_root("torchtitan-async-tp-2024") == "torchtitan"
    before = {n: framework(n).overlap_slowdown for n in ("nemo", "nemo-fa2", "torchtitan")}
    run = nemo_runs[0]
    t0 = estimate(run.model, run.cluster, run.plan)["step_time_s"]
    with overlap_slowdowns({"nemo": 0.9}):
        assert framework("nemo").overlap_slowdown == framework("nemo-fa2").overlap_slowdown == 0.9
        assert framework("torchtitan").overlap_slowdown == before["torchtitan"]
        assert estimate(run.model, run.cluster, run.plan)["step_time_s"] > t0
        with overlap_slowdowns({"nemo": None}):  # nested: the cluster's value
            assert framework("nemo").overlap_slowdown is None
        assert framework("nemo").overlap_slowdown == 0.9
    assert {n: framework(n).overlap_slowdown for n in before} == before
    assert estimate(run.model, run.cluster, run.plan)["step_time_s"] == t0


def test_a_full_slowdown_prices_overlap_as_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """At 1 an overlapped collective costs its whole time, as on the compute stream: a NeMo run (TP 4 with
    SP, data parallel, one stage) priced under NeMo's profile at 1 takes exactly the step of the same profile
    with no overlap at all (TP, gradient reduction and parameter gather exposed: another pricing path), and
    at the catalog's 0.15 less."""
    import planner.framework as fwmod

    run = next(r for r in express_all(printed_runs(("dgxc",))) if isinstance(r, MeasuredRun) and r.step_time_s
               and r.plan.framework == "nemo" and r.plan.tp > 1 and r.plan.pp == r.plan.cp == r.plan.ep == 1
               and r.plan.dp > 1)
    base = fwmod._catalog()
    serial = {**base["nemo"], "tp_overlap": "none", "dp_overlap": False, "param_gather_overlap": False}
    monkeypatch.setattr(fwmod, "_catalog", lambda: {**base, "nemo-serial": serial})
    fwmod.framework.cache_clear()
    try:
        def step(name: str, slowdown: float, simulated: bool = False) -> float:
            with overlap_slowdowns({"nemo": slowdown, "nemo-serial": slowdown}):
                plan = dataclasses.replace(run.plan, framework=name)
                if simulated:  # the step simulation the search re-ranks with prices overlap the same way
                    return float(simulate_plans(run.model, run.cluster, [plan])[0].step_time_s)
                return float(estimate(run.model, run.cluster, plan, check=False)["step_time_s"])

        for sim in (False, True):
            assert step("nemo", 1.0, sim) == pytest.approx(step("nemo-serial", 1.0, sim), rel=1e-9)
            assert step("nemo-serial", 0.15, sim) == pytest.approx(step("nemo-serial", 1.0, sim), rel=1e-9)
            assert step("nemo", 0.15, sim) < step("nemo-serial", 0.15, sim)
    finally:
        fwmod.framework.cache_clear()


def test_cli_fits_overlaps_of_one_framework(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`planner fit --overlaps --framework paxml` fits on PaxML's runs alone and lists its overlap slowdown
    with its meaning; an unknown framework is one line and exit status 2."""
    out = tmp_path / "fit.json"
    assert main(["fit", "--quiet", "--overlaps", "--framework", "paxml", "--cv", "none", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "overlap_slowdown[paxml]" in text
    doc = json.loads(out.read_text())
    (f,) = [f for f in doc["fitted"] if f["name"] == "overlap_slowdown[paxml]"]
    assert "slows the compute beside it" in f["meaning"] and f["rows"] >= fit.MIN_ROWS
    assert doc["runs"] == f["rows"]  # PaxML's runs only, every one of them waiting on overlapped collectives
    assert main(["fit", "--framework", "nosuch"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown framework 'nosuch'" in err[0]


def test_a_fitted_profile_carries_its_frameworks_overlap(tmp_path: Path) -> None:
    """`--profile-out` with `--overlaps` writes the framework's value into the cluster profile; a plan under
    PaxML priced on that profile costs what the cost model gives at that value, and a NeMo plan on it keeps
    the framework's catalog value (no NeMo run was fitted)."""
    from planner.specs.catalog import load_cluster

    out, prof = tmp_path / "fit.json", tmp_path / "profile.json"
    assert main(["fit", "--quiet", "--overlaps", "--framework", "paxml", "--cv", "none", "--out", str(out),
                 "--cluster", "dgx-h100", "--profile-out", str(prof)]) == 0
    (f,) = [f for f in json.loads(out.read_text())["fitted"] if f["name"] == "overlap_slowdown[paxml]"]
    cluster = load_cluster(str(prof))
    assert dict(cluster.overlap_slowdown_by_framework) == {"paxml": f["value"]}
    assert cluster.overlap_slowdown_for(framework("paxml")) == f["value"]
    assert cluster.overlap_slowdown_for(framework("nemo-fa2")) == framework("nemo").slowdown_beside(0.15)
    run = next(r for r in express_all(printed_runs(("dgxc",))) if isinstance(r, MeasuredRun)
               and r.plan.framework == "paxml" and r.cluster.gpu.name == "H100-SXM5-80GB")
    mine = dataclasses.replace(run.cluster, overlap_slowdown_by_framework=(("paxml", 0.7),))
    with overlap_slowdowns({"paxml": 0.7}):
        reference = estimate(run.model, run.cluster, run.plan)["step_time_s"]
    assert estimate(run.model, mine, run.plan)["step_time_s"] == pytest.approx(reference, rel=1e-12)


@pytest.mark.parametrize("value, match", [({"nosuch": 0.2}, "unknown framework 'nosuch'"),
                                          ({"nemo-fa2": 0.2}, "name the framework nemo, which nemo-fa2 extends"),
                                          ({"nemo": 1.5}, "<= 1"), ({"nemo": "fast"}, "fractions in 0..1"),
                                          (None, "fractions in 0..1"), ([["nemo", 0.2]], "fractions in 0..1")])
def test_a_bad_per_framework_overlap_in_a_profile_is_one_clear_error(value: object, match: str) -> None:
    from planner.errors import SpecError
    from planner.specs.catalog import load_cluster
    from planner.specs.cluster import ClusterSpec

    doc = {**load_cluster("dgx-h100").to_dict(), "overlap_slowdown_by_framework": value}
    with pytest.raises(SpecError, match=match):
        ClusterSpec.from_dict(doc)
