"""Safe JSON loading and atomic file writing, shared by every command that touches files."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from planner.errors import InputFileError, LockedError, OutputPathError, PlannerError

MAX_JSON_BYTES = 16 * 1024 * 1024  # no legitimate plan/profile/config is near this
MAX_JSON_DEPTH = 64


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name} is not allowed")


def _finite_float(text: str) -> float:
    """Number hook: 1e400 would silently become inf (parse_constant only sees the words)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of the float range")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Object hook: a key given twice is an error (json's default silently keeps the last one)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return obj


def _depth(obj: Any, limit: int) -> int:
    """Iterative nesting depth (no recursion, so hostile inputs cannot blow the stack)."""
    stack = [(obj, 1)]
    deepest = 0
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node)
    return deepest


def parse_json_text(text: str, source: str = "<string>") -> Any:
    """Parse JSON strictly: no NaN/Infinity, bounded size and depth; errors name the source."""
    if len(text) > MAX_JSON_BYTES:
        raise InputFileError(f"{source}: file is larger than {MAX_JSON_BYTES // 2**20} MiB")
    try:
        obj = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float,
                         object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise InputFileError(f"{source}: JSON nested too deeply") from None
    except ValueError as exc:
        raise InputFileError(f"{source}: malformed JSON ({exc})") from None
    if _depth(obj, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise InputFileError(f"{source}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return obj


def load_json(path: str | os.PathLike[str]) -> Any:
    """Read and strictly parse a JSON file (never executes code)."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise InputFileError(f"{p}: cannot read ({exc.strerror or exc})") from None
    except ValueError as exc:  # e.g. an embedded NUL byte in the path
        raise InputFileError(f"{str(p)!r}: not a usable path ({exc})") from None
    if size > MAX_JSON_BYTES:
        raise InputFileError(f"{p}: file is larger than {MAX_JSON_BYTES // 2**20} MiB")
    try:  # read at most the cap + 1 byte: a pipe or a device (/dev/zero) reports size 0 and never ends
        with p.open("rb") as fh:
            data = fh.read(MAX_JSON_BYTES + 1)
        if len(data) > MAX_JSON_BYTES:
            raise InputFileError(f"{p}: more than {MAX_JSON_BYTES // 2**20} MiB (not a JSON file)")
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"{p}: cannot read ({exc})") from None
    return parse_json_text(text, str(p))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(obj: Any, indent: int | None = 2) -> str:
    """JSON text with numpy values converted; non-finite floats raise ValueError (allow_nan=False)."""
    return json.dumps(obj, indent=indent, default=_json_default, allow_nan=False)


def output_target(path: str | os.PathLike[str], field: str = "out",
                  inputs: tuple[str | os.PathLike[str] | None, ...] = (),
                  replaces: frozenset[str] | None = None) -> Path:
    """The regular file that writing `path` will replace (a symbolic link is followed, so the link
    stays), or OutputPathError naming why `path` must not be written: empty, a directory (or a name
    ending in a separator), an existing device, FIFO or socket (renaming over /dev/null as root would
    replace the device), one of the command's `inputs`, or a directory that cannot be written. With
    `replaces` (the document kinds this output may overwrite), an existing planner document of another
    kind (a plan where a serving plan or a trace would go) is refused too.
    Commands call it before any work starts; the atomic writers call it again at the last moment."""
    text = os.fspath(path)
    if not text.strip():
        raise OutputPathError("is empty: give a file name", field=field)
    if text.endswith((os.sep, "/")) or Path(text).is_dir():
        raise OutputPathError(f"{text} is a directory: give a file name", field=field)
    p = Path(os.path.realpath(text)) if Path(text).is_symlink() else Path(text)
    if p.exists() and not p.is_file():
        raise OutputPathError(f"{text} is not a regular file (a device, FIFO or socket): outputs go only to "
                              "regular files", field=field)
    for other in inputs:
        if other is not None and os.fspath(other) and os.path.realpath(other) == os.path.realpath(p):
            raise OutputPathError(f"{text} is also this command's input: write somewhere else", field=field)
    existing = nearest_existing(p.parent)
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write {text}: {existing} is not a writable directory", field=field)
    if replaces is not None and p.is_file():
        kind = document_kind(p)
        if kind is not None and kind not in replaces:
            raise OutputPathError(f"{text} holds a {kind!r} document that this output would replace: write "
                                  f"somewhere else, or delete it first", field=field)
    return p


def document_kind(path: Path) -> str | None:
    """The `kind` of a planner JSON document at `path`, or None for any other file."""
    try:
        data = load_json(path)
    except (OSError, PlannerError):
        return None
    kind = data.get("kind") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else None


def check_folder_target(path: Path, field: str) -> None:
    """A folder a command will write into (a run's checkpoints, validate's reports) must be one this
    user can write, or creatable in one: OutputPathError naming `field` otherwise, before any work."""
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{path} exists and is not a folder", field=field)
    existing = nearest_existing(path)
    if not existing.is_dir():
        raise OutputPathError(f"cannot write into {path}: {existing} is not a writable folder (not a folder at "
                              f"all)", field=field)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write into {path}: {existing} is not a writable folder (no permission)",
                              field=field)


def nearest_existing(path: Path) -> Path:
    """`path` or its nearest ancestor that exists (where creating `path` would start)."""
    return next((d for d in (path, *path.parents) if d.exists()), Path("."))


def _file_mode(p: Path) -> int:
    """The mode a rewritten file keeps, or a new one gets from the umask (mkstemp's 0600 otherwise)."""
    with contextlib.suppress(OSError):
        return p.stat().st_mode & 0o7777
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write bytes to a temp file in the same directory, fsync, then rename over the target: a reader
    (or a crash at any moment) sees the old file or the new one, never a torn one. Only a regular file
    is replaced (`output_target`)."""
    p = output_target(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        os.fchmod(fd, _file_mode(p))
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return p


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 text atomically (temp file + fsync + rename; see `atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """For writers that insist on a file name (e.g. torch.profiler's `export_chrome_trace`): yields a
    temp path in the target's directory and renames it over `path` only if the block succeeds."""
    p = output_target(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.fchmod(fd, _file_mode(p))
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_kernel_control(path: str, value: str) -> bool:
    """Write `value` to a Linux control file under /proc (a command to the kernel, not a document: no
    atomic rename applies); False where the file is absent or refused (other systems, containers)."""
    if not path.startswith("/proc/"):
        raise ValueError(f"{path}: not a /proc control file")
    try:
        with open(path, "w") as fh:
            fh.write(value)
        return True
    except OSError:
        return False


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Serialise first (so a serialisation error leaves the old file untouched), then write atomically."""
    return atomic_write_text(path, dumps(obj) + "\n")


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` (created if missing, kept afterwards) for the block;
    LockedError at once if another process holds it, InputFileError if it cannot be created."""
    import fcntl

    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fh = p.open("a")
    except OSError as exc:
        raise InputFileError(f"{p}: cannot create a lock file ({exc.strerror or exc})") from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise LockedError(f"{p} is held by another process") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
