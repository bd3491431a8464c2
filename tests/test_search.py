"""Exhaustive search: legality, optimality against a scalar brute force, exact agreement of the
vectorised and scalar scores, constraints, the Pareto front, and clear failures."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import pytest

from planner.cost import estimate, evaluate, prediction
from planner.errors import PlanError
from planner.plan import RECOMPUTE, SCHEDULES, Plan, check_plan
from planner.search import Constraints, divisors, enumerate_plans, search
from planner.specs.catalog import cluster_preset, load_cluster, model_preset

# The brute-force problem: GPT-2 (124M) on 4 A100-80GB of one node, global batch 8, with 95 %
# headroom (a 4 GiB budget) so that some plans do not fit.
MODEL = model_preset("gpt2")
CLUSTER = cluster_preset("dgx-a100-80gb").with_gpus(4)
GLOBAL_BATCH = 8
HEADROOM = 0.95
DTYPE = "bf16"


def _canonical(p: Plan) -> Plan:
    """Collapse spellings the search enumerates once: ZeRO without data-parallel replicas is ZeRO-0,
    and without pipelining GPipe is 1F1B."""
    if p.dp * p.cp == 1:
        p = replace(p, zero_stage=0)
    if p.pp == 1:
        p = replace(p, schedule="1f1b")
    return p


def _brute_force_plans() -> set[Plan]:
    """Every Plan object check_plan accepts (default rank placement), built one by one."""
    n = CLUSTER.num_gpus
    out: set[Plan] = set()
    for tp, pp, cp in itertools.product(divisors(n), repeat=3):
        if n % (tp * pp * cp):
            continue
        dp = n // (tp * pp * cp)
        for mb, vpp, sched, rc, sp, zero in itertools.product(
                divisors(GLOBAL_BATCH), divisors(MODEL.num_layers), SCHEDULES, RECOMPUTE, (False, True),
                range(4)):
            try:
                plan = Plan(tp=tp, pp=pp, dp=dp, cp=cp, vpp=vpp, micro_batch=mb, global_batch=GLOBAL_BATCH,
                            schedule=sched, recompute=rc, sequence_parallel=sp, zero_stage=zero, dtype=DTYPE)
                check_plan(MODEL, CLUSTER, plan)
            except PlanError:
                continue
            out.add(plan)
    return out


@pytest.fixture(scope="module")
def brute_all() -> dict[Plan, dict[str, Any]]:
    """The scalar scores (planner.cost.estimate, one call per plan) of every canonical legal plan."""
    plans = {_canonical(p) for p in _brute_force_plans()}
    return {p: estimate(MODEL, CLUSTER, p, headroom=HEADROOM) for p in sorted(plans, key=repr)}


@pytest.fixture(scope="module")
def brute(brute_all: dict[Plan, dict[str, Any]]) -> dict[Plan, dict[str, Any]]:
    """The space the search covers by default: GPipe plans left out where 1F1B is allowed (dominated)."""
    return {p: pred for p, pred in brute_all.items() if p.schedule != "gpipe"}


def test_gpipe_is_dominated_by_1f1b(brute_all: dict[Plan, dict[str, Any]]) -> None:
    """Why the search skips GPipe when 1F1B is allowed: each GPipe plan's 1F1B twin, scored one by one,
    takes the same step time and no more memory (all forwards run before the first backward)."""
    pairs = [(pred, brute_all[replace(p, schedule="1f1b")]) for p, pred in brute_all.items()
             if p.schedule == "gpipe"]
    assert pairs
    for g, f in pairs:
        assert f["step_time_s"] == pytest.approx(g["step_time_s"], rel=1e-12)
        assert f["memory_gib_per_gpu"] <= g["memory_gib_per_gpu"]
    assert any(f["memory_gib_per_gpu"] < g["memory_gib_per_gpu"] for g, f in pairs)


def _enumerated(constraints: Constraints | None = None) -> list[tuple[Any, Any]]:
    return list(enumerate_plans(MODEL, CLUSTER, GLOBAL_BATCH, DTYPE, True,
                                constraints or Constraints(placements=False, recompute=RECOMPUTE)))


def test_enumeration_is_the_brute_force_space(brute_all: dict[Plan, dict[str, Any]],
                                              brute: dict[Plan, dict[str, Any]]) -> None:
    """Every legal plan but GPipe ones where 1F1B is allowed too (dominated: see the test above)."""
    enumerated = [b.plan(i) for b in _enumerated() for i in range(len(b))]
    assert len(enumerated) == len(set(enumerated)), "a plan is enumerated twice"
    assert set(enumerated) == set(brute)
    gpipe = [b.plan(i) for b in _enumerated(Constraints(placements=False, recompute=RECOMPUTE, schedules=("gpipe",)))
             for i in range(len(b))]
    assert {p for p in gpipe if p.pp > 1} == {p for p in brute_all if p.schedule == "gpipe"}
    for p in enumerated:
        check_plan(MODEL, CLUSTER, p)
    # the space is non-trivial: some plans fit, some do not
    fits = [pred["fits"] for pred in brute.values()]
    assert any(fits) and not all(fits)


def test_brute_force_extras_score_like_their_canonical_plan(brute_all: dict[Plan, dict[str, Any]]) -> None:
    extras = sorted((p for p in _brute_force_plans() if p not in brute_all), key=repr)
    assert extras  # ZeRO stages without replicas, GPipe without pipelining
    for p in extras[::7]:
        assert estimate(MODEL, CLUSTER, p, headroom=HEADROOM) == brute_all[_canonical(p)]


def test_vectorised_scores_equal_scalar_scores_exactly(brute: dict[Plan, dict[str, Any]]) -> None:
    seen = 0
    for batch in _enumerated():
        scores = evaluate(MODEL, CLUSTER, batch, HEADROOM)
        for i in range(len(batch)):
            p = batch.plan(i)
            assert prediction(scores, i, CLUSTER, DTYPE) == brute[p], p.describe()
            seen += 1
    assert seen == len(brute)


def test_top_plans_are_the_brute_force_optimum(brute: dict[Plan, dict[str, Any]]) -> None:
    result = search(MODEL, CLUSTER, GLOBAL_BATCH, dtype=DTYPE, headroom=HEADROOM, top_k=10, rerank=0,
                    constraints=Constraints(recompute=RECOMPUTE))
    fitting = sorted(pred["step_time_s"] for pred in brute.values() if pred["fits"])
    got = [pred["step_time_s"] for pred in result.predictions]
    assert got[0] <= fitting[0]
    assert got == fitting[:10]  # one node: every placement is the same layout, scored once
    assert got == sorted(got)
    assert result.fitting == len(fitting)
    assert result.pruned["does not fit in memory"] == len(brute) - len(fitting)
    for p, pred in zip(result.plans, result.predictions, strict=True):
        check_plan(MODEL, CLUSTER, p)
        assert pred["fits"] and pred["memory_gib_per_gpu"] <= pred["memory_limit_gib"]
        assert estimate(MODEL, CLUSTER, p, headroom=HEADROOM) == pred


def test_objectives_rank_alike() -> None:
    """For a fixed GPU count and batch, time, throughput and cost order plans the same way."""
    tops = [search(MODEL, CLUSTER, GLOBAL_BATCH, dtype=DTYPE, objective=o, top_k=5).plans
            for o in ("time", "throughput", "cost")]
    described = [[p.describe() for p in top] for top in tops]
    assert described[0] == described[1] == described[2]


# ---- a multi-node problem: placements matter ----------------------------------------------------


@pytest.fixture(scope="module")
def llama_result() -> Any:
    m = model_preset("llama2-7b")
    c = cluster_preset("dgx-a100-80gb").with_gpus(16)
    return m, c, search(m, c, 64, top_k=20)


def test_every_returned_plan_is_legal_fits_and_rescores_identically(llama_result: Any) -> None:
    m, c, result = llama_result
    assert result.plans and result.pareto
    for p, pred in [*zip(result.plans, result.predictions, strict=True), *result.pareto]:
        check_plan(m, c, p)
        assert pred["fits"]
        assert estimate(m, c, p) == pred
    steps = [pred["step_time_s"] for pred in result.predictions]
    assert steps == sorted(steps)


def test_pareto_front_is_non_dominated_and_contains_the_fastest(llama_result: Any) -> None:
    _, _, result = llama_result
    pts = [(pred["step_time_s"], pred["memory_gib_per_gpu"]) for _, pred in result.pareto]
    assert pts == sorted(pts)
    for a, b in itertools.permutations(pts, 2):
        dominates = a[0] <= b[0] and a[1] <= b[1] and a != b
        assert not dominates, (a, b)
    assert len(set(pts)) == len(pts)
    # along the front, memory strictly falls as time rises
    assert all(p[1] > q[1] and p[0] < q[0] for p, q in itertools.pairwise(pts))
    assert pts[0][0] == result.predictions[0]["step_time_s"]


def test_pareto_front_against_brute_force(brute: dict[Plan, dict[str, Any]]) -> None:
    """No fitting plan of the whole space dominates a front member, and every fitting plan is
    dominated by (or ties with) one."""
    result = search(MODEL, CLUSTER, GLOBAL_BATCH, dtype=DTYPE, headroom=HEADROOM,
                    constraints=Constraints(placements=False, recompute=RECOMPUTE))
    front = [(pred["step_time_s"], pred["memory_gib_per_gpu"]) for _, pred in result.pareto]
    pts = [(pred["step_time_s"], pred["memory_gib_per_gpu"]) for pred in brute.values() if pred["fits"]]
    for f in front:
        assert not any(q[0] <= f[0] and q[1] <= f[1] and q != f for q in pts), f
    for q in pts:
        assert any(f[0] <= q[0] and f[1] <= q[1] for f in front), q


# ---- rank placement ---------------------------------------------------------------------------

PLACEMENT_CASES = [
    ("gpt2", {"tp": 2, "cp": 2, "pp": 4, "dp": 2}),  # tied embeddings: first/last stage all-reduce
    ("gpt2", {"tp": 2, "cp": 16, "pp": 1, "dp": 1}),
    ("llama2-7b", {"tp": 2, "cp": 2, "pp": 2, "dp": 4}),
    ("mixtral-8x7b", {"tp": 4, "cp": 8, "pp": 1, "dp": 1, "ep": 1}),
    ("mixtral-8x7b", {"tp": 2, "cp": 2, "pp": 1, "dp": 8, "ep": 4}),
]


@pytest.mark.parametrize(("name", "sizes"), PLACEMENT_CASES, ids=[f"{n}-{s}" for n, s in PLACEMENT_CASES])
def test_placement_search_finds_the_best_of_all_24_orders(name: str, sizes: dict[str, int]) -> None:
    """On 4 nodes, the search scores one placement per distinct link layout; none of the 24 rank
    orders (scored one by one) may beat what it returns."""
    m = model_preset(name)
    c = cluster_preset("dgx-a100-80gb").with_gpus(32)
    knobs = {"micro_batch": 1, "recompute": "full", "zero_stage": 3, "sequence_parallel": False}
    cons = Constraints(**sizes, vpp=1, micro_batch=1, recompute=("full",), zero_stages=(3,),
                       sequence_parallel=False, schedules=("1f1b",))
    result = search(m, c, 64, constraints=cons, top_k=1)
    preds = [estimate(m, c, Plan(**sizes, **knobs, global_batch=64, placement=order))
             for order in itertools.permutations(("tp", "cp", "dp", "pp"))]
    assert all(p["fits"] for p in preds)
    assert result.predictions[0]["step_time_s"] <= min(p["step_time_s"] for p in preds)


def test_one_node_placements_are_scored_once() -> None:
    """Inside one node every order gives the same links: no plan appears twice in the top K."""
    result = search(MODEL, CLUSTER, GLOBAL_BATCH, dtype=DTYPE, top_k=30)
    described = [p.describe() for p in result.plans]
    assert len(set(described)) == len(described)


# ---- constraints ------------------------------------------------------------------------------

CONSTRAINTS = [
    ({"tp": 2}, lambda p: p.tp == 2),
    ({"pp": 2}, lambda p: p.pp == 2),
    ({"dp": 2}, lambda p: p.dp == 2),
    ({"cp": 2}, lambda p: p.cp == 2),
    ({"micro_batch": 1}, lambda p: p.micro_batch == 1),
    ({"pp": 2, "vpp": 2}, lambda p: p.vpp == 2 and p.schedule == "interleaved-1f1b"),
    ({"recompute": ("full",)}, lambda p: p.recompute == "full"),
    ({"sequence_parallel": True}, lambda p: p.sequence_parallel and p.tp > 1),
    ({"sequence_parallel": False}, lambda p: not p.sequence_parallel),
    ({"zero_stages": (3,)}, lambda p: p.zero_stage == 3),
    ({"zero_stages": (0, 1)}, lambda p: p.zero_stage in (0, 1)),
    ({"pp": 4, "schedules": ("gpipe",)}, lambda p: p.schedule == "gpipe" and p.pp == 4),
    ({"max_memory_gib": 3.0}, None),
]


@pytest.mark.parametrize(("kw", "holds"), CONSTRAINTS, ids=[str(c[0]) for c in CONSTRAINTS])
def test_constraints_are_respected(kw: dict[str, Any], holds: Any) -> None:
    result = search(MODEL, CLUSTER, GLOBAL_BATCH, dtype=DTYPE, constraints=Constraints(**kw), top_k=50)
    assert result.plans
    for p, pred in [*zip(result.plans, result.predictions, strict=True), *result.pareto]:
        check_plan(MODEL, CLUSTER, p)
        if holds is None:
            assert pred["memory_gib_per_gpu"] <= kw["max_memory_gib"]
        else:
            assert holds(p), p.describe()


def test_ep_constraint_on_moe() -> None:
    m = model_preset("mixtral-8x7b")
    c = cluster_preset("dgx-a100-80gb").with_gpus(16)
    result = search(m, c, 32, constraints=Constraints(ep=4), top_k=10)
    assert all(p.ep == 4 and p.dp % 4 == 0 for p in result.plans)


# ---- failures ---------------------------------------------------------------------------------


def test_no_fitting_plan_raises_plan_error_naming_the_reason() -> None:
    m = model_preset("gpt3-175b")
    with pytest.raises(PlanError) as err:
        search(m, cluster_preset("dgx-a100-80gb").with_gpus(8), 8)
    msg = str(err.value)
    assert err.value.field == "plan"
    assert "no plan fits gpt3-175b" in msg and "does not fit in memory" in msg and "\n" not in msg


def test_impossible_constraint_raises_plan_error() -> None:
    with pytest.raises(PlanError) as err:
        search(MODEL, CLUSTER, GLOBAL_BATCH, constraints=Constraints(tp=3))
    assert err.value.field == "plan" and "tp 3 does not divide the 4 GPUs" in str(err.value)
    with pytest.raises(PlanError) as err:
        search(MODEL, CLUSTER, GLOBAL_BATCH, constraints=Constraints(tp=1, sequence_parallel=True))
    assert "sp" in str(err.value)
    with pytest.raises(PlanError) as err:
        search(MODEL, CLUSTER, GLOBAL_BATCH, constraints=Constraints(max_memory_gib=0.01))
    assert "does not fit in memory" in str(err.value)


def test_pruned_reasons_are_counted() -> None:
    result = search(MODEL, cluster_preset("dgx-a100-80gb").with_gpus(16), 6, top_k=1)
    assert result.pruned.get("no split of the layers over pp stages", 0) >= 1  # pp 16 vs 12 layers
    assert result.pruned.get("dp does not divide global_batch", 0) >= 1  # dp 4, 8, 16 vs batch 6


@pytest.mark.parametrize(("kw", "field"), [({"objective": "speed"}, "objective")])
def test_bad_arguments(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(PlanError) as err:
        search(MODEL, CLUSTER, GLOBAL_BATCH, **kw)
    assert err.value.field == field


@pytest.mark.parametrize("gb", [0, -1, True, 2.0])
def test_bad_global_batch(gb: Any) -> None:
    with pytest.raises(PlanError) as err:
        search(MODEL, CLUSTER, gb)
    assert err.value.field == "global_batch"


MEGATRON_2021 = [  # Narayanan et al. 2021 Table 1 configurations: model, GPUs, global batch, tp, pp
    ("megatron-1.7b", 32, 512, 1, 1),
    ("megatron-18b", 256, 1024, 8, 1),
    ("megatron-145b", 1536, 2304, 8, 8),
    ("megatron-1t", 3072, 3072, 8, 64),
]


@pytest.mark.parametrize(("name", "gpus", "batch", "tp", "pp"), MEGATRON_2021)
def test_search_at_least_as_fast_as_the_published_megatron_configuration(
        name: str, gpus: int, batch: int, tp: int, pp: int) -> None:
    """The search covers the published tp/pp (with any micro-batch, recompute, schedule), so its best
    plan is predicted no slower than the best way to run the configuration the paper used."""
    model = model_preset(name)
    cluster = load_cluster("dgx-a100-80gb", gpus=gpus)
    published = search(model, cluster, batch, top_k=1, constraints=Constraints(tp=tp, pp=pp))
    best = search(model, cluster, batch, top_k=1)
    assert best.predictions[0]["step_time_s"] <= published.predictions[0]["step_time_s"] * (1 + 1e-12)


def _legal_by_brute_force(model: Any, gpus: int, global_batch: int) -> bool:
    """Some tp x cp x pp x dp = gpus passes the rules check_plan states (heads, kv heads and FFN width
    divisible by tp, sequence by cp, at least one layer per pipeline rank (uneven splits allowed),
    global batch by dp)."""
    for tp, cp, pp in itertools.product(divisors(gpus), repeat=3):
        if gpus % (tp * cp * pp):
            continue
        dp = gpus // (tp * cp * pp)
        if (model.num_heads % tp == 0 and model.num_kv_heads % tp == 0 and model.ffn_hidden % tp == 0
                and model.seq_len % cp == 0 and pp <= model.num_layers and global_batch % dp == 0):
            return True
    return False


def test_no_legal_split_names_the_nearest_batches_and_gpu_counts() -> None:
    """Calculon's README problem (GPT-3 on 5128 GPUs at batch 2520): 5128 = 8 x 641 and 641 is a prime
    that divides neither the heads, the layers, the sequence nor the batch, so nothing is legal. The
    error names the nearest batches (and whole-node GPU counts) that are legal, checked here by brute
    force: they are legal and nothing between them and the request is."""
    model = model_preset("gpt3-175b")
    cluster = cluster_preset("dgx-a100-80gb").with_gpus(5128)
    with pytest.raises(PlanError) as err:
        search(model, cluster, 2520)
    msg = str(err.value)
    batches = [int(x) for x in msg.split("nearest global batches that work on 5128 GPUs: ")[1].split(";")[0]
               .split(" or ")]
    gpus = [int(x) for x in msg.split("with global batch 2520: ")[1].split(" or ")]
    assert batches[0] < 2520 < batches[1] and gpus[0] < 5128 < gpus[1]
    for b in batches:
        assert _legal_by_brute_force(model, 5128, b)
    for b in range(batches[0] + 1, batches[1]):
        assert not _legal_by_brute_force(model, 5128, b)
    for g in gpus:
        assert g % 8 == 0 and _legal_by_brute_force(model, g, 2520)
    for g in range(gpus[0] + 8, gpus[1], 8):
        assert not _legal_by_brute_force(model, g, 2520)


def test_nothing_fits_says_how_much_memory_the_leanest_plan_needs() -> None:
    """GPT-3 175B on one 8-GPU node: its weights and optimizer states alone (18 bytes per parameter,
    sharded at most 8 ways) are about 18 x 175e9 / 8 bytes = 367 GiB per GPU."""
    model = model_preset("gpt3-175b")
    with pytest.raises(PlanError, match=r"leanest legal plan needs (\d+\.\d) GiB") as err:
        search(model, cluster_preset("dgx-a100-80gb").with_gpus(8), 8)
    need = float(str(err.value).split("needs ")[1].split(" GiB")[0])
    assert 18 * model.params / 8 / 2**30 <= need <= 1.1 * 18 * model.params / 8 / 2**30
