"""Start the Streamlit dashboard on a feature store (`scope dashboard`, reused by `scope demo`).

The app is package data of `scope.dashboard` (`app.py`, found with `importlib.resources`);
this module only builds the `streamlit run` command line and runs it. It imports neither Streamlit nor the store format, so
`import scope` stays light; the store is checked for a manifest up front so a wrong path fails
here with a clear message instead of inside the browser.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from scope.errors import ScopeError, StoreError

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501


def app_path() -> Path:
    """The dashboard entry script, `scope/dashboard/app.py`, wherever scope is installed."""
    path = Path(str(importlib.resources.files("scope.dashboard").joinpath("app.py")))
    if not path.is_file():
        raise ScopeError(f"dashboard app not found at {path}; reinstall scope "
                         "(pip install 'gemma-scope-toolkit[dashboard]')")
    return path


def dashboard_argv(
    store: str | Path,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    open_browser: bool = False,
) -> list[str]:
    """The command that serves the dashboard for `store` on host:port.

    Args:
        store: a feature store folder (holding manifest.json).
        host: address to listen on; 127.0.0.1 (the default) keeps it local to this machine.
        port: TCP port.
        open_browser: let Streamlit open a browser tab (otherwise it runs headless).

    Returns:
        argv for subprocess: `python -m streamlit run dashboard/app.py ... -- STORE`.
    """
    if not 0 < int(port) < 65536:
        raise ScopeError(f"--port {port}: choose a TCP port between 1 and 65535")
    return [
        sys.executable, "-m", "streamlit", "run", str(app_path()),
        "--server.address", str(host),
        "--server.port", str(int(port)),
        "--server.headless", "false" if open_browser else "true",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",  # no "Deploy" button on a local research tool
        "--logger.hideWelcomeMessage", "true",  # scope prints the URL itself, once
        "--", str(Path(store).resolve()),
    ]


def _check(store: str | Path) -> None:
    if importlib.util.find_spec("streamlit") is None:
        raise ScopeError(
            "the dashboard needs Streamlit and plotly: pip install 'gemma-scope-toolkit[dashboard]'"
        )
    if not (Path(store) / "manifest.json").is_file():
        raise StoreError(
            f"{store}: not a feature store (no manifest.json); make one with `scope extract` "
            "or `scope demo`"
        )


def start_dashboard(
    store: str | Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
    open_browser: bool = False, **popen_kwargs,
) -> subprocess.Popen:
    """Start the dashboard server in the background and return its process (caller stops it)."""
    _check(store)
    argv = dashboard_argv(store, host, port, open_browser=open_browser)
    log.debug("starting %s", " ".join(argv))
    return subprocess.Popen(argv, **popen_kwargs)


class _Terminated(Exception):
    """SIGTERM arrived while serving."""


def _on_sigterm(signum, frame) -> None:
    raise _Terminated


def stop_dashboard(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop a server from `start_dashboard`: SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log.warning("dashboard server %d did not stop in %.0f s; killing it", proc.pid, timeout)
        proc.kill()
        proc.wait()


def dashboard_command(
    store: str | Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
    open_browser: bool = False, say: Callable[[str], None] | None = None,
) -> int:
    """Serve the dashboard for `store` until interrupted; returns Streamlit's exit status.

    The URL is announced once (`say`, the CLI's output line; else logged), Streamlit's own
    banner is off.

    Ctrl-C or SIGTERM to this process stops the Streamlit server too (no orphaned server).
    Ctrl-C is how a user ends a server, so it is a clean end: one short line and status 0
    (as `python -m http.server` does); SIGTERM returns 143.
    """
    tell = say or log.info
    proc = start_dashboard(store, host, port, open_browser=open_browser)
    tell(f"dashboard: http://{host}:{int(port)}  (Ctrl-C stops it)")
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main else None
    try:
        return proc.wait()
    except _Terminated:
        stop_dashboard(proc)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        stop_dashboard(proc)
        tell("dashboard stopped")
        return 0
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
