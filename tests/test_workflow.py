"""The book's CI workflow (examples/github-actions/ingest.yml) and the CLI flags it relies on.

The workflow is parsed as YAML and checked against the real scripts/ingest.py parser and the
service's Settings; its shell steps are run with bash; the CLI runs as a real subprocess.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from rag.config import Settings

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / "examples" / "github-actions" / "ingest.yml"
SCRIPT = REPO / "scripts" / "ingest.py"
SECRETS = ("OPENAI_API_KEY", "QDRANT_URL", "QDRANT_API_KEY")
# Settings that must equal the Space's, passed through from repository variables.
INDEX_SETTINGS = (
    "EMBEDDING_MODEL", "EMBEDDING_DIMENSIONS", "CHUNK_SIZE", "CHUNK_OVERLAP",
    "BOOK_BASE_URL", "QDRANT_COLLECTION",
)
EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}")


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text())


@pytest.fixture(scope="module")
def steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return workflow["jobs"]["ingest"]["steps"]


@pytest.fixture(scope="module")
def cli() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ingest_cli", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def step_running(steps: list[dict[str, Any]], needle: str) -> tuple[int, dict[str, Any]]:
    found = [(i, s) for i, s in enumerate(steps) if needle in s.get("run", "")]
    assert len(found) == 1, f"expected one step running {needle!r}, found {len(found)}"
    return found[0]


def ingest_command(run: str) -> list[str]:
    """The arguments given to scripts/ingest.py, with every literal a `${{ }}` can yield."""
    joined = run.replace("\\\n", " ")
    line = next(ln for ln in joined.splitlines() if "scripts/ingest.py" in ln)
    line = EXPRESSION.sub(lambda m: " ".join(re.findall(r"'([^']+)'", m.group(1))), line)
    tokens = shlex.split(line)
    args = tokens[tokens.index(next(t for t in tokens if t.endswith("scripts/ingest.py"))) + 1 :]
    return args[: args.index(">")] if ">" in args else args


def bash(script: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # GitHub runs `run:` blocks with `bash -e {0}`.
    return subprocess.run(
        ["bash", "-e", "-c", script], env={"PATH": os.environ["PATH"], **env}, cwd=cwd,
        capture_output=True, text=True, timeout=30,
    )


def test_installs_the_backend_requirements(steps: list[dict[str, Any]], workflow: dict) -> None:
    checkout = next(s for s in steps if s.get("with", {}).get("path") == "chat-backend")
    index, install = step_running(steps, "pip install")
    assert shlex.split(install["run"]) == ["pip", "install", "-r", "chat-backend/requirements.txt"]
    assert steps.index(checkout) < index < step_running(steps, "scripts/ingest.py")[0]
    # The backend repo and ref are explicit inputs at the top, from variables, with no guess.
    assert checkout["with"]["repository"] == "${{ env.CHAT_BACKEND_REPO }}"
    assert checkout["with"]["ref"] == "${{ env.CHAT_BACKEND_REF }}"
    assert workflow["env"]["CHAT_BACKEND_REPO"] == "${{ vars.CHAT_BACKEND_REPO }}"
    assert workflow["env"]["CHAT_BACKEND_REF"] == "${{ vars.CHAT_BACKEND_REF }}"


def test_ingest_step_uses_only_arguments_the_script_accepts(
    steps: list[dict[str, Any]], cli: ModuleType
) -> None:
    _, step = step_running(steps, "scripts/ingest.py")
    args = ingest_command(step["run"])
    assert {"--source", "--json", "--require-qdrant", "--full"} <= set(args)
    parsed, unknown = cli.build_parser().parse_known_args(args)
    assert unknown == []
    assert parsed.json and parsed.require_qdrant and parsed.full and str(parsed.source) == "docs"
    assert not parsed.dry_run
    for name in SECRETS:
        assert step["env"][name] == f"${{{{ secrets.{name} }}}}"


def test_index_settings_come_from_variables_with_the_service_defaults(
    workflow: dict[str, Any],
) -> None:
    env = workflow["env"]
    defaults: dict[str, str] = {}
    for name in INDEX_SETTINGS:
        match = re.fullmatch(rf"\$\{{\{{ vars\.{name} \|\| '([^']*)' \}}\}}", env.get(name, ""))
        assert match, f"{name} is not passed through from vars.{name} with a default"
        defaults[name] = match.group(1)
    # Every other value in the workflow-level env is also a vars.* pass-through.
    for name, value in env.items():
        assert value.startswith(f"${{{{ vars.{name}"), name
        defaults.update({name: m.group(1)} if (m := re.search(r"\|\| '([^']*)'", value)) else {})
    # The defaults are exactly the service's: setting them changes nothing.
    assert Settings.from_environ(defaults, env_file=None) == Settings.from_environ({}, env_file=None)
    comments = WORKFLOW.read_text()
    assert "MUST" in comments and all(name in comments.split("jobs:")[0] for name in INDEX_SETTINGS)


def test_required_secrets_are_checked_before_anything_runs(
    steps: list[dict[str, Any]], tmp_path: Path
) -> None:
    check = steps[0]
    script = check["run"]
    assert "${{" not in script  # run verbatim below, as the runner would
    assert {name: check["env"][name] for name in SECRETS} == {
        name: f"${{{{ secrets.{name} }}}}" for name in SECRETS
    }
    good = {name: "set" for name in SECRETS} | {
        "CHAT_BACKEND_REPO": "owner/book-chat", "CHAT_BACKEND_REF": "v1.2.0",
    }
    assert bash(script, good, tmp_path).returncode == 0
    for name in [*SECRETS, "CHAT_BACKEND_REPO", "CHAT_BACKEND_REF"]:
        proc = bash(script, good | {name: ""}, tmp_path)  # a missing secret is an empty value
        assert proc.returncode != 0
        errors = [ln for ln in proc.stdout.splitlines() if ln.startswith("::error")]
        assert len(errors) == 1 and name in errors[0], proc.stdout
    proc = bash(script, {}, tmp_path)
    assert proc.returncode != 0 and proc.stdout.count("::error") == 5
    for branch in ("main", "refs/heads/main"):
        proc = bash(script, good | {"CHAT_BACKEND_REF": branch}, tmp_path)
        assert proc.returncode != 0 and "pin a tag or a commit" in proc.stdout


def test_json_summary_is_printed_even_when_the_ingest_fails(
    steps: list[dict[str, Any]], tmp_path: Path
) -> None:
    index, ingest = step_running(steps, "scripts/ingest.py")
    assert re.search(r"ingest\.py[^\n]*(\\\n[^\n]*)*> ingest-summary\.json", ingest["run"])
    later = [s for s in steps[index + 1 :] if s.get("if") == "always()"]
    assert len(later) == 1
    summary_page = tmp_path / "step-summary.md"
    summary = {"status": "failed", "store": {"kind": "qdrant", "collection": "book"}}
    (tmp_path / "ingest-summary.json").write_text(json.dumps(summary))
    proc = bash(later[0]["run"], {"GITHUB_STEP_SUMMARY": str(summary_page)}, tmp_path)
    assert proc.returncode == 0 and json.loads(proc.stdout) == summary  # in the log
    assert json.dumps(summary) in summary_page.read_text()  # and on the run's page


# --- the CLI, as a real subprocess ------------------------------------------------------------


def run_cli(*args: str, tmp: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "QDRANT_", "CHUNK_", "EMBEDDING_", "BOOK_"))
    }
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--source", str(REPO / "book_content"), *args],
        env={**clean, "DATA_DIR": str(tmp / "data"), **env},
        cwd=tmp,  # no stray .env is read
        capture_output=True, text=True, timeout=300,
    )


def test_require_qdrant_fails_with_one_line_when_qdrant_url_is_unset(tmp_path: Path) -> None:
    for args in [("--json",), ("--dry-run", "--json")]:
        proc = run_cli("--require-qdrant", *args, tmp=tmp_path, QDRANT_URL="")
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "QDRANT_URL is not set" in lines[0], proc.stderr
        assert proc.stdout == ""
    assert not (tmp_path / "data").exists()  # nothing written to an embedded shard
    # Without the flag, a dry run is unaffected.
    proc = run_cli("--dry-run", "--json", tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["store"]["kind"] == "embedded"


def test_summary_names_the_store_and_collection_and_no_secret(tmp_path: Path) -> None:
    secrets = {"OPENAI_API_KEY": "sk-SECRET-openai-123", "QDRANT_API_KEY": "qk-SECRET-qdrant-456"}
    outputs: list[str] = []
    proc = run_cli("--dry-run", "--json", tmp=tmp_path, QDRANT_COLLECTION="bookci", **secrets)
    outputs.append(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["store"] == {"kind": "embedded", "collection": "bookci"}
    assert summary["chunks"] > 0
    url = "https://secret-cluster-789.example.invalid:6333"
    # A dry run never contacts Qdrant, so the configured store can be reported without one.
    proc = run_cli(
        "--dry-run", "--json", "--require-qdrant", tmp=tmp_path, QDRANT_URL=url, **secrets
    )
    outputs.append(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["store"] == {"kind": "qdrant", "collection": "book"}
    # A real (embedded, sparse) ingest: the human summary says where it wrote.
    proc = run_cli(tmp=tmp_path, QDRANT_API_KEY=secrets["QDRANT_API_KEY"])
    outputs.append(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stderr
    assert "store:     embedded, collection book" in proc.stdout.splitlines()
    assert (tmp_path / "data").is_dir()
    for out in outputs:
        assert "SECRET" not in out and "secret-cluster" not in out
