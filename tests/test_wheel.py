"""A built wheel works outside the repository: registry, bundled SAE and dashboard included.

The wheel is built from a copy of the project's files and installed (`--no-deps`) into a fresh
virtual environment in a temporary folder; that environment sees this test environment's
third-party packages through a path file (offline, fast) but not the repository or its editable
install, so only what the wheel carries can make `scope saes`, `load_sae("bundled")` and
`scope dashboard` work.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "scope", "dashboard", "configs"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif (REPO / name).exists():
            shutil.copy(REPO / name, src / name)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                          "--no-build-isolation", "-w", str(root / "dist"), str(src)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "license" not in out.stderr.lower() or "deprecat" not in out.stderr.lower()
    wheel = next((root / "dist").glob("*.whl"))
    env_dir = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True,
                               check=True).stdout.strip())
    # third-party packages of this environment, without running its .pth files (which would
    # put the repository's editable install on the path)
    (site / "_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True, timeout=600)
    shutil.rmtree(src)
    return env_dir, site


def _env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SCOPE_RELEASES_DIR")}
    return {**env, "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_wheel_runs_registry_bundled_sae_and_dashboard(venv, tmp_path):
    env_dir, site = venv
    env = _env(tmp_path)
    assert (site / "scope" / "saes" / "registry" / "index.json").is_file()
    assert (site / "scope" / "dashboard" / "app.py").is_file()
    missing = [p.relative_to(REPO).as_posix() for p in (REPO / "scope").rglob("*")
               if p.suffix in (".py", ".json", ".safetensors") and "__pycache__" not in p.parts
               and not (site / p.relative_to(REPO)).is_file()]
    assert missing == [], f"the wheel lacks {missing[:5]}"
    assert not (site / "dashboard").exists() and not (site / "configs").exists()
    out = subprocess.run([str(env_dir / "bin" / "scope"), "saes"], capture_output=True,
                         text=True, cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "gemma-scope-2b-pt-res" in out.stdout
    code = ("import scope, sys; sae = scope.load_sae('bundled'); "
            "print(scope.__file__); print(sae.cfg.d_sae, sae.cfg.hook_name)")
    out = subprocess.run([str(env_dir / "bin" / "python"), "-c", code], capture_output=True,
                         text=True, cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    where, shape = out.stdout.strip().splitlines()
    assert where.startswith(str(site)) and not where.startswith(str(REPO))
    assert int(shape.split()[0]) > 0
    code = ("from scope.dashboard.launch import app_path; p = app_path(); "
            "from scope.dashboard import data, render; print(p); print(data.__file__)")
    out = subprocess.run([str(env_dir / "bin" / "python"), "-c", code], capture_output=True,
                         text=True, cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert all(line.startswith(str(site / "scope" / "dashboard"))
               for line in out.stdout.split())

    from builders import tiny_hooked_model
    from extract_helpers import synthetic_sae

    import scope

    model = tiny_hooked_model()
    sae = synthetic_sae(model.cfg.d_model, 16, "blocks.1.hook_resid_post")
    store = scope.extract(model, [sae], ["Some text to read. " * 20], tmp_path / "store",
                          ctx=16, batch_size=4, progress=False)
    port = _free_port()
    proc = subprocess.Popen([str(env_dir / "bin" / "scope"), "dashboard", str(store.path),
                             "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, status = time.monotonic() + 120, None
        while time.monotonic() < deadline and status != 200:
            if proc.poll() is not None:
                pytest.fail(f"dashboard exited: {proc.stdout.read().decode()[-2000:]}")
            try:
                status = urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health",
                                                timeout=5).status
            except OSError:
                time.sleep(1)
        assert status == 200
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).status == 200
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
