"""Harness of the hostile-input suites (tests/test_hostile*.py).

Each row of a suite is a `Case`: how to build its inputs in a fresh folder, the `scope` command
line to run (through `scope.cli.main.main`, in-process, or as a subprocess), and the verdict expected:
a named scope error (its class, a fragment of its message, the exit status) or correct
behaviour (exit 0 plus a check). `run_case` fails the row on a traceback, on a silent success,
on a different error, and on any file created, changed or removed outside the folders the row
allows (the whole case folder is snapshotted before and after).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Case:
    """One hostile input or fault and what `scope` must do with it."""

    id: str
    """Row name (the pytest id)."""
    argv: Callable[[Path], list[str]]
    """Builds the command line from the case folder (after `setup`)."""
    error: type | None = None
    """Named error class expected; None = correct behaviour (exit 0)."""
    fragment: str = ""
    """Text the error message (or, for correct behaviour, stdout+stderr) must contain."""
    code: int | None = None
    """Exit status expected (default: the error's `exit_code`, 0 for correct behaviour)."""
    setup: Callable[[Path], Any] | None = None
    """Writes the inputs into the case folder."""
    writes: tuple[str, ...] = ()
    """Paths (relative to the case folder) the command may create or change."""
    check: Callable[[Path], None] | None = None
    """More assertions after the run (e.g. what a correct run wrote)."""
    marks: tuple = field(default_factory=tuple)
    """pytest marks (slow, xfail)."""

    @property
    def verdict(self) -> str:
        return "named error" if self.error is not None else "correct behaviour"


def params(cases: list[Case]) -> list:
    return [pytest.param(c, id=c.id, marks=c.marks) for c in cases]


def snapshot(root: Path) -> dict[str, tuple]:
    """path -> (kind, size, mtime_ns, mode) of everything under root (links not followed)."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            kind = "link" if p.is_symlink() else "dir" if p.is_dir() else "file"
            size = 0 if kind == "dir" else st.st_size
            mtime = 0 if kind == "dir" else st.st_mtime_ns
            out[str(p.relative_to(root))] = (kind, size, mtime, st.st_mode)
    return out


def outside(before: dict, after: dict, allowed: tuple[str, ...]) -> list[str]:
    """Paths created, removed or changed that lie outside every allowed prefix."""
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}

    def ok(path: str) -> bool:
        return any(path == a or path.startswith(a.rstrip("/") + "/") for a in allowed)

    return sorted(p for p in changed if not ok(p))


def run_case(case: Case, root: Path, capsys, monkeypatch) -> None:
    """Run one row in-process through `scope.cli.main.main` and check its verdict."""
    import scope.cli.main as cli

    root.mkdir(parents=True, exist_ok=True)
    work = root / "cwd"
    work.mkdir(exist_ok=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if case.setup:
        case.setup(root)
    argv = case.argv(root)
    seen: list[BaseException] = []
    real_report = cli.report

    def spy(where, exc, **kw):
        seen.append(exc)
        return real_report(where, exc, **kw)

    monkeypatch.setattr(cli, "report", spy)
    capsys.readouterr()
    before = snapshot(root)
    code = cli.main(argv)
    after = snapshot(root)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err[-3000:]
    stray = outside(before, after, case.writes)
    assert not stray, f"wrote outside the allowed folders: {stray[:10]}"
    if case.error is None:
        assert not seen, f"unexpected error {type(seen[0]).__name__}: {seen[0]}"
        assert code == (case.code or 0), err[-2000:]
        assert case.fragment in out + err, (out + err)[-2000:]
    else:
        assert seen, f"silent success or no named error (exit {code}): {(out + err)[-1500:]}"
        exc = seen[-1]
        assert isinstance(exc, case.error), f"{type(exc).__name__}: {exc}"
        assert case.fragment in str(exc), str(exc)
        assert case.fragment in err, err[-2000:]
        want = case.code if case.code is not None else getattr(exc, "exit_code", 1)
        assert code == want, err
    if case.check:
        case.check(root)


def run_subprocess(args: list[str], cwd: Path, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """`python -m scope.cli.main ARGS` with this checkout first on the path, offline."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "scope.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, **kw)
