"""One ranking path (issue "One cost-model core"): `planner plan`, the dashboard's search and
`planner validate`'s choice of the search's best plan return the same ranking for the same problem,
because all three call `planner.search.search` (which re-ranks by simulation)."""

from __future__ import annotations

import json

import pytest

from planner.cli import main
from planner.plan import Plan
from planner.search import search
from planner.specs.catalog import load_cluster, load_model
from planner.validate import choose_plans

PROBLEM = ["--model", "llama3-8b", "--cluster", "dgx-h100", "--gpus", "64", "--global-batch", "256"]


def _cli_ranking(capsys: pytest.CaptureFixture[str]) -> list[str]:
    assert main(["plan", *PROBLEM, "--json", "--top", "10"]) == 0
    docs = json.loads(capsys.readouterr().out)
    return [Plan.from_dict(d).describe() for d in docs]


def test_cli_dashboard_and_validate_rank_alike(capsys: pytest.CaptureFixture[str]) -> None:
    model, cluster = load_model("llama3-8b"), load_cluster("dgx-h100", gpus=64)
    cli = _cli_ranking(capsys)
    lib = [p.describe() for p in search(model, cluster, 256, top_k=10).plans]
    assert cli == lib
    best = choose_plans(model, cluster, 256, 1, model.dtype, lambda p: True)
    assert best[0][0] == "search best" and best[0][1].describe() == cli[0]
    app = pytest.importorskip("app", reason="the dashboard needs streamlit")
    raw = app.cached_search.__wrapped__(json.dumps(model.to_dict()), json.dumps(cluster.to_dict()), 256, "time", (), 10)
    assert [p.describe() for p in raw["plans"]] == cli
