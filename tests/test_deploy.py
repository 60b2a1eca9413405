"""Deployment: the Dockerfile meets the Spaces rules, and the app runs as uid 1000 on a read-only tree."""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.servers import free_port

REPO = Path(__file__).resolve().parent.parent


def _dockerfile() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text()
    text = re.sub(r"\\\n\s*", " ", text)  # join continuation lines
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_meets_spaces_requirements() -> None:
    lines = _dockerfile()
    words = [w for w, _ in lines]
    args = {w: [r for ww, r in lines if ww == w] for w in words}
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", args["FROM"][0])
    assert any("--uid 1000 user" in r or "-u 1000 user" in r for r in args["RUN"])
    # USER user comes before the app is copied and installed, so everything is owned by it.
    assert args["USER"] == ["user"]
    assert words.index("USER") < words.index("COPY")
    assert all("--chown=user" in r for r in args["COPY"])
    env = " ".join(args["ENV"])
    assert "HOME=/home/user" in env and 'FORWARDED_ALLOW_IPS="*"' in env
    assert args["WORKDIR"] == ["$HOME/app"]
    assert args["EXPOSE"] == ["7860"]
    assert json.loads(args["CMD"][-1]) == [
        "uvicorn", "main:app", "--host", "0.0.0.0", "--port", "7860",
    ]
    assert "HEALTHCHECK" in words
    assert all("--no-cache-dir" in r for r in args["RUN"] if "pip install" in r)


def test_readme_has_spaces_front_matter() -> None:
    text = (REPO / "README.md").read_text()
    assert text.startswith("---\n")
    front = text.split("---\n", 2)[1]
    assert "sdk: docker" in front and "app_port: 7860" in front


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    for entry in (".env", ".venv", "data", ".git"):
        assert entry in ignored


def _interpreter() -> str:
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    return str(system) if system.exists() else sys.executable


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root + setpriv")
def test_runs_as_uid_1000_with_read_only_app() -> None:
    # pytest's tmp_path lives under a root-only folder: use one uid 1000 can enter.
    tmp_path = Path(tempfile.mkdtemp(prefix="rag-uid1000-"))
    os.chmod(tmp_path, 0o755)
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    for name in ("main.py", "rag", "book_content"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, app_dir / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, app_dir / name)
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 1000, 1000)
    subprocess.run(["chmod", "-R", "a-w", str(app_dir)], check=True)
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "DATA_DIR": str(data),
        "BOOK_CONTENT_DIR": str(app_dir / "book_content"),
        "PYTHONDONTWRITEBYTECODE": "1",
        # The test interpreter may live under root's home (pyenv); uid 1000 runs the
        # system Python of the same minor version on the same installed packages.
        "PYTHONPATH": os.pathsep.join(site.getsitepackages()),
    }
    proc = subprocess.Popen(
        ["setpriv", "--reuid", "1000", "--regid", "1000", "--clear-groups",
         _interpreter(), "-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=app_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        points = 0
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"{base}/health", timeout=2).json()
                points = health["points"]
                if points > 0 and health["ingest"]["running"] is None:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert points > 0
        answer = httpx.post(
            f"{base}/chat", json={"question": "What does a gyroscope measure?", "stream": False},
            timeout=30,
        ).json()
        assert answer["sources"] and answer["answer"]
        assert any(p.stat().st_uid == 1000 for p in data.rglob("*"))
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        subprocess.run(["chmod", "-R", "u+w", str(tmp_path)], check=False)
        shutil.rmtree(tmp_path, ignore_errors=True)
