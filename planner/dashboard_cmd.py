"""`planner dashboard`: serve the Streamlit dashboard (app.py), bound to 127.0.0.1 unless told otherwise.

The server settings are passed on the command line, so they hold whatever the working directory is
(`.streamlit/config.toml` is only read from the directory streamlit starts in): the address (local
only by default; `--address 0.0.0.0` exposes the dashboard to the network, on purpose), the upload
limit (`server.maxUploadSize`, MB; app.py also rejects larger files itself), headless mode, no usage
statistics, XSRF protection on.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from planner.errors import PlannerError

DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 8501
MAX_UPLOAD_MB = 4  # the same limit as planner.uploads.MAX_UPLOAD_BYTES and .streamlit/config.toml
REPO_ROOT = Path(__file__).resolve().parent.parent


def app_path() -> Path:
    app = REPO_ROOT / "app.py"
    if not app.is_file():
        raise PlannerError(f"the dashboard's app.py is not at {app}; run it from a source checkout "
                           "(pip install -e .)", field="app")
    return app


def _address(text: str) -> str:
    if text == "localhost":
        return text
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an IP address such as 127.0.0.1, got {text[:60]!r}") from None


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text[:40]!r}") from None
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 1-65535, got {text[:40]}")
    return v


def dashboard_command(address: str = DEFAULT_ADDRESS, port: int = DEFAULT_PORT) -> list[str]:
    """The `streamlit run` command line (every security-relevant setting explicit), through
    planner.dashboard.serve, which imports the dashboard's libraries before the first visitor."""
    return [sys.executable, "-m", "planner.dashboard.serve", str(app_path()),
            "--server.address", address, "--server.port", str(port),
            "--server.headless", "true", "--server.maxUploadSize", str(MAX_UPLOAD_MB),
            "--server.enableXsrfProtection", "true", "--server.runOnSave", "false",
            "--browser.gatherUsageStats", "false", "--browser.serverAddress", address,
            "--browser.serverPort", str(port)]


def cmd_dashboard(args: argparse.Namespace) -> int:
    cmd = dashboard_command(args.address, args.port)
    if args.print_command:
        print(" ".join(cmd))
        return 0
    if args.address not in ("127.0.0.1", "::1", "localhost"):
        print(f"planner dashboard: warning: serving on {args.address}, reachable from other machines",
              file=sys.stderr)
    print(f"planner dashboard: http://{args.address}:{args.port} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    env = {**os.environ, "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    return subprocess.call(cmd, cwd=str(REPO_ROOT), env=env)


def register(sub: Any) -> None:
    """Add `planner dashboard` to the CLI's subcommands."""
    p = sub.add_parser("dashboard", help="serve the dashboard (Streamlit) on 127.0.0.1")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--address", type=_address, default=DEFAULT_ADDRESS,
                   help=f"address to bind (default {DEFAULT_ADDRESS}: this machine only; 0.0.0.0 exposes it)")
    p.add_argument("--print-command", action="store_true", help="print the streamlit command and exit")
    p.set_defaults(func=cmd_dashboard)
