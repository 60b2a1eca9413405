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


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined."""
    text = (REPO / "Dockerfile").read_text()
    text = re.sub(r"\\\n\s*", " ", text)  # join continuation lines
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            if word.upper() == "FROM":
                stages.append([])
            stages[-1].append((word.upper(), rest.strip()))
    return stages


def dockerfile_env(name: str) -> str:
    """The value the final image sets for an ENV variable."""
    for word, rest in dockerfile_stages()[-1]:
        if word == "ENV":
            for m in re.finditer(r'(\w+)=("[^"]*"|\S+)', rest):
                if m.group(1) == name:
                    return m.group(2).strip('"')
    raise KeyError(name)


def test_dockerfile_meets_spaces_requirements() -> None:
    *builds, final = dockerfile_stages()
    words = [w for w, _ in final]
    args = {w: [r for ww, r in final if ww == w] for w in words}
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", args["FROM"][0])
    assert any("--uid 1000 user" in r or "-u 1000 user" in r for r in args["RUN"])
    # The app folder and DATA_DIR belong to uid 1000 whatever the builder.
    assert any("chown -R user:user /home/user/app" in r for r in args["RUN"])
    # USER user comes before the app is copied, so everything copied is owned by it.
    assert args["USER"] == ["user"]
    app_copies = [r for r in args["COPY"] if not r.startswith("--from=")]
    assert app_copies and all("--chown=user" in r for r in app_copies)
    assert words.index("USER") < max(i for i, (w, r) in enumerate(final) if w == "COPY" and r in app_copies)
    env = " ".join(args["ENV"])
    assert "HOME=/home/user" in env
    assert dockerfile_env("DATA_DIR") == "/home/user/app/data"
    assert args["WORKDIR"] == ["$HOME/app"]
    assert args["EXPOSE"] == ["7860"]
    assert json.loads(args["CMD"][-1]) == [
        "uvicorn", "main:app", "--host", "0.0.0.0", "--port", "7860",
    ]
    assert "HEALTHCHECK" in words
    # Small image: build tools only in the build stage, no pip or apt caches anywhere.
    assert builds and all(w != "RUN" or "apt-get install" not in r for w, r in final)
    for w, r in [x for stage in dockerfile_stages() for x in stage]:
        if w == "RUN" and "pip install" in r:
            assert "--no-cache-dir" in r and "--only-binary=:all:" in r
        if w == "RUN" and "apt-get install" in r:
            assert "--no-install-recommends" in r and "rm -rf /var/lib/apt/lists/*" in r
    assert any("slim_packages.sh" in r for w, r in builds[-1] if w == "RUN")
    assert any(r.startswith("--from=") for r in args["COPY"])


def test_proxy_trust_is_the_private_network_not_everyone() -> None:
    """'*' would let uvicorn take the left-most X-Forwarded-For entry, which the client
    writes itself: every request could pick a new rate-limit key."""
    trusted = dockerfile_env("FORWARDED_ALLOW_IPS").split(",")
    assert "*" not in trusted
    for network in ("127.0.0.1", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"):
        assert network in trusted


@pytest.mark.skipif(shutil.which("strip") is None, reason="needs binutils' strip")
def test_slim_packages_strips_libraries_that_still_load(tmp_path: Path) -> None:
    import regex

    package = Path(regex.__file__).parent
    shutil.copytree(package, tmp_path / "regex")
    [lib] = (tmp_path / "regex").glob("_regex*.so")
    before = lib.stat().st_size
    (tmp_path / "numpy.libs").mkdir()
    vendored = tmp_path / "numpy.libs" / "libopenblas-1a2b3c.so"
    vendored.write_bytes(b"\x7fELF not to be touched")  # strip would fail on it, too
    subprocess.run(["sh", str(REPO / "scripts" / "slim_packages.sh"), str(tmp_path)], check=True)
    assert lib.stat().st_size < before
    assert vendored.read_bytes() == b"\x7fELF not to be touched"  # auditwheel's, left alone
    out = subprocess.run(
        [sys.executable, "-c", "import regex; print(regex.__file__, regex.findall(r'\\p{L}+', 'héllo wörld'))"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True,
        check=True,
    ).stdout
    assert str(tmp_path) in out and "['héllo', 'wörld']" in out


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
