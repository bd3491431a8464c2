"""Files: everything the tool writes goes through planner/io.py (temp file + fsync + rename), and
nothing it loads can execute code (no pickle, no eval, torch.load only with weights_only=True).

The first test scans the shipped source (planner/, executor/, app.py) with `ast`, so a new
`open(path, "w")` or `Path.write_text` anywhere else fails the suite. The scanner is itself tested
on a snippet full of violations (it must find every one). The rest check the atomic writers'
behaviour when a write fails half-way, and the dashboard's serving defaults.
"""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import tomllib

from planner.cli import main
from planner.dashboard_cmd import MAX_UPLOAD_MB, dashboard_command
from planner.io import atomic_output, atomic_write_bytes, atomic_write_json, atomic_write_text
from planner.uploads import MAX_UPLOAD_BYTES

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = [*sorted((ROOT / "planner").rglob("*.py")), *sorted((ROOT / "executor").rglob("*.py")), ROOT / "app.py"]
WRITER = ROOT / "planner" / "io.py"  # the one module allowed to open files for writing
# Library calls that write to a path they are given: allowed only inside `with atomic_output(...)`.
PATH_WRITERS = {"export_chrome_trace", "savefig", "write_html", "write_image", "to_csv", "to_parquet",
                "to_pickle", "to_feather", "to_excel"}
# DCP writes a directory of shards; executor/checkpoint.py commits it with a signed manifest written last.
DIRECTORY_WRITERS = {("executor/checkpoint.py", "save")}
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}


def _mode(call: ast.Call, position: int) -> str | None:
    for kw in call.keywords:
        if kw.arg == "mode" and isinstance(kw.value, ast.Constant):
            return str(kw.value.value)
    if len(call.args) > position and isinstance(call.args[position], ast.Constant):
        return str(call.args[position].value)
    return None


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return f"{_name(func.value)}.{func.attr}"
    return "?"


def scan(source: str, rel: str) -> list[str]:
    """Violations in one file's source: 'rel:line: what'."""
    tree = ast.parse(source)
    found: list[str] = []
    guarded: set[int] = set()  # ids of calls lexically inside `with atomic_output(...)`
    for node in ast.walk(tree):
        if isinstance(node, ast.With) and any(
                isinstance(i.context_expr, ast.Call) and _name(i.context_expr.func).endswith("atomic_output")
                for i in node.items):
            guarded |= {id(n) for stmt in node.body for n in ast.walk(stmt)}

    def bad(node: ast.AST, what: str) -> None:
        found.append(f"{rel}:{getattr(node, 'lineno', 0)}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in UNSAFE_MODULES:
                    bad(node, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            bad(node, f"from {node.module} import")
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        attr = node.func.attr if isinstance(node.func, ast.Attribute) else name
        writes = rel != "planner/io.py"
        if name in ("open", "io.open", "codecs.open") and writes:
            mode = _mode(node, 1)
            if mode is None and (node.args[1:] or any(k.arg == "mode" for k in node.keywords)):
                bad(node, f"{name}() with a computed mode")
            elif mode and set(mode) & set("wax+"):
                bad(node, f"{name}(..., {mode!r})")
        elif name == "os.fdopen" and writes and set(_mode(node, 1) or "") & set("wax+"):
            bad(node, "os.fdopen for writing")
        elif attr == "open" and isinstance(node.func, ast.Attribute) and name not in ("io.open", "codecs.open") \
                and writes and set(_mode(node, 0) or "") & set("wax+"):
            bad(node, f"{name}(mode)")
        elif attr in ("write_text", "write_bytes") and writes:
            bad(node, f".{attr}()")
        elif attr in PATH_WRITERS and isinstance(node.func, ast.Attribute) and id(node) not in guarded:
            bad(node, f".{attr}() outside `with atomic_output(...)`")
        elif name in ("torch.save",) and id(node) not in guarded:
            bad(node, "torch.save outside `with atomic_output(...)`")
        elif name.endswith(".save") and name.startswith("dcp") and (rel, "save") not in DIRECTORY_WRITERS:
            bad(node, "torch.distributed.checkpoint save outside executor/checkpoint.py")
        if name == "torch.load" or name.endswith(".torch.load"):
            weights_only = [k for k in node.keywords if k.arg == "weights_only"]
            if not weights_only or not (isinstance(weights_only[0].value, ast.Constant)
                                        and weights_only[0].value.value is True):
                bad(node, "torch.load without weights_only=True")
        elif name in ("np.load", "numpy.load") and any(
                k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                for k in node.keywords):
            bad(node, "np.load(allow_pickle=...)")
        elif name in ("eval", "exec", "yaml.load", "yaml.unsafe_load", "pd.read_pickle", "pandas.read_pickle"):
            bad(node, f"{name}()")
    return found


def test_shipped_source_writes_only_through_planner_io_and_never_unpickles() -> None:
    assert WRITER in SHIPPED and len(SHIPPED) > 30
    problems = []
    for path in SHIPPED:
        problems += scan(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix())
    assert problems == [], "\n".join(problems)


def test_the_scanner_finds_every_kind_of_violation() -> None:
    snippet = '''
import pickle
from marshal import loads
import torch, numpy as np, yaml
open("a", "w"); open("b", mode="ab"); open("c"); open("d", "r+")
with open(p, "wb") as fh: pass
Path("x").write_text("t"); p.write_bytes(b""); p.open("w")
os.fdopen(fd, "w")
torch.load("m.pt"); torch.load("m.pt", weights_only=False); torch.load("ok.pt", weights_only=True)
np.load("a.npy", allow_pickle=True); np.load("b.npy")
eval("1"); exec("x=1"); yaml.load(s)
prof.export_chrome_trace("t.json"); torch.save(sd, "m.pt")
with atomic_output(path) as tmp:
    prof.export_chrome_trace(str(tmp))
    torch.save(sd, tmp)
'''
    found = scan(snippet, "planner/example.py")
    expected = ["import pickle", "from marshal", "open(..., 'w')", "open(..., 'ab')", "open(..., 'r+')",
                "open(..., 'wb')", ".write_text()", ".write_bytes()", "p.open(mode)", "os.fdopen",
                "torch.load without", "torch.load without", "np.load(allow_pickle", "eval()", "exec()",
                "yaml.load()", "export_chrome_trace() outside", "torch.save outside"]
    for what in expected:
        assert any(what in f for f in found), (what, found)
    assert len(found) == len(expected), found  # and nothing else (reads, guarded writes, weights_only=True)
    assert scan('open("a", "w")', "planner/io.py") == []


# ---- atomic writers: a failure half-way leaves the old file and no debris --------------------------------


def _debris(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("write", [
    lambda p: atomic_write_text(p, "new"), lambda p: atomic_write_bytes(p, b"new"),
    lambda p: atomic_write_json(p, {"new": True})])
def test_atomic_writers_keep_the_old_file_when_the_rename_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                write) -> None:
    target = tmp_path / "measured.json"
    target.write_bytes(b"old")
    monkeypatch.setattr(os, "replace", lambda *_: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        write(target)
    assert target.read_bytes() == b"old" and _debris(tmp_path) == []


def test_atomic_write_json_refuses_nan_before_touching_the_file(tmp_path: Path) -> None:
    target = tmp_path / "plan.json"
    target.write_text("{}")
    with pytest.raises(ValueError):
        atomic_write_json(target, {"x": float("nan")})
    assert target.read_text() == "{}" and _debris(tmp_path) == []


def test_atomic_output(tmp_path: Path) -> None:
    target = tmp_path / "trace.json"
    with atomic_output(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"done")  # a third-party writer that needs a path
        assert not target.exists()
    assert target.read_bytes() == b"done" and _debris(tmp_path) == []
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer crashed")
    assert target.read_bytes() == b"done" and _debris(tmp_path) == []


# ---- the dashboard: local only, bounded uploads, whatever the working directory ------------------------


def test_streamlit_config_binds_locally_and_bounds_uploads() -> None:
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1" and config["browser"]["serverAddress"] == "127.0.0.1"
    assert config["server"]["maxUploadSize"] == MAX_UPLOAD_MB
    assert MAX_UPLOAD_BYTES == MAX_UPLOAD_MB * 2**20  # what the app's upload parser refuses beyond


def test_dashboard_command_is_explicit(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cmd = dashboard_command()
    settings = dict(zip(cmd[4::2], cmd[5::2], strict=True))
    assert cmd[:4] == [sys.executable, "-m", "planner.dashboard.serve", str(ROOT / "app.py")]  # streamlit run
    assert settings["--server.address"] == "127.0.0.1" and settings["--server.maxUploadSize"] == str(MAX_UPLOAD_MB)
    assert settings["--server.enableXsrfProtection"] == "true" and settings["--browser.gatherUsageStats"] == "false"
    monkeypatch.chdir(tmp_path)  # another working directory: no .streamlit/config.toml here
    assert main(["dashboard", "--print-command", "--port", "8765"]) == 0
    out = capsys.readouterr().out
    assert "--server.address 127.0.0.1" in out and "--server.port 8765" in out
    for argv, flag in ((["--port", "0"], "--port"), (["--port", "http"], "--port"), (["--address", "evil.example"],
                                                                                       "--address")):
        with pytest.raises(SystemExit) as exc:
            main(["dashboard", *argv])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and flag in err


def _listening(port: int) -> list[str]:
    """Local addresses listening on `port` (from /proc/net/tcp and tcp6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.rsplit(":", 1)
            if state == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                found.append(socket.inet_ntoa(bytes.fromhex(addr)[::-1]) if len(addr) == 8 else addr)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs /proc/net/tcp")
def test_dashboard_serves_on_127_0_0_1_from_any_directory(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "planner.cli", "dashboard", "--port", str(port)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                time.sleep(0.3)
        assert proc.poll() is None, "the dashboard exited"
        assert _listening(port) == ["127.0.0.1"]  # not 0.0.0.0, not ::
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
