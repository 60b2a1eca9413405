"""Settings: defaults, types, and one clear line naming a bad variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rag.config import ConfigError, Settings

REPO = Path(__file__).resolve().parent.parent


def test_defaults_are_the_embedded_mode() -> None:
    s = Settings.from_environ({}, env_file=None)
    assert s.store_kind == "embedded" and not s.llm_enabled
    assert s.chunk_size == 512 and s.chunk_overlap == 64 and s.min_chunk_size == 50 and s.top_k == 5
    assert s.cors_origins == ("https://mrowaisabdullah.github.io", "http://localhost:3000")
    assert s.book_base_url == "https://mrowaisabdullah.github.io/ai-humanoid-robotics/docs"
    assert s.embedding_model == "text-embedding-3-small" and s.embedding_dimensions == 1536


def test_keys_switch_modes_and_blank_means_unset() -> None:
    s = Settings.from_environ(
        {"OPENAI_API_KEY": "sk-x", "QDRANT_URL": "https://q.example:6333/", "QDRANT_API_KEY": " "},
        env_file=None,
    )
    assert s.llm_enabled and s.store_kind == "qdrant"
    assert s.qdrant_url == "https://q.example:6333" and s.qdrant_api_key is None


def test_env_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("TOP_K=7\nCHAT_MODEL=from-file\n")
    s = Settings.from_environ({"CHAT_MODEL": "from-env"}, env_file=env)
    assert s.top_k == 7 and s.chat_model == "from-env"


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("CHUNK_SIZE", "big", "whole number"),
        ("TOP_K", "50", "1..20"),
        ("QDRANT_URL", "localhost:6333", "http(s) URL"),
        ("CORS_ORIGINS", "https://ok.example,not a url", "http(s) URL"),
        ("AUTO_INGEST", "maybe", "true or false"),
        ("CHUNK_OVERLAP", "600", "smaller than CHUNK_SIZE"),
        ("QDRANT_COLLECTION", "a/b", "letters"),
        ("STREAM_DEADLINE_SECONDS", "nan", "must be"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_environ({name: value}, env_file=None)
    message = str(info.value)
    assert message.startswith(f"{name}:") and needle in message and "\n" not in message


def test_service_refuses_to_start_with_one_clear_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI", "QDRANT"))}
    env["TOP_K"] = "zero"
    proc = subprocess.run(
        [sys.executable, "-c", "import main"], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["configuration error: TOP_K: expected a whole number, got 'zero'"]
