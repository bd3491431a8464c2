"""`python -m planner.dashboard.serve APP [streamlit options]`: `streamlit run`, libraries imported first.

Streamlit runs a page's script only when a browser connects, so on a fresh server the first visitor
waits for pandas, plotly's validators and the cost model to import (1-2 s on a 2-core machine).
`planner dashboard` starts the server through this module, which imports them before serving.
"""

from __future__ import annotations

import sys


def preload() -> None:
    """Import what the dashboard's first run would (kept in sys.modules for every session)."""
    import pandas  # noqa: F401
    import plotly.graph_objects  # noqa: F401  (st.plotly_chart validates figures with it)

    import planner.dashboard.charts
    import planner.evidence
    import planner.feasible
    import planner.graph
    import planner.pricing
    import planner.search
    import planner.simulate
    import planner.whatif  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    preload()
    from streamlit.web import cli

    sys.argv = ["streamlit", "run", *(sys.argv[1:] if argv is None else argv)]
    return cli.main(prog_name="streamlit")


if __name__ == "__main__":
    sys.exit(main())
