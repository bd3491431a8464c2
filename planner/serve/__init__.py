"""Serving planner: KV cache, step cost, request-stream simulation and search (issue 15).

Public entry points: `planner.serve.search.search_serving` (-> `ServeResult`), `planner.serve.predict.predict`
(one plan's prediction), `planner.serve.plan` (the `kind: "serve"` document), `planner.serve.kv` (KV sizing).
"""
