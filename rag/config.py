"""Settings from the environment and `.env`, validated once at start-up.

Starlette's `Config` reads the environment (which wins) and the `.env` file;
this module turns that into one frozen, typed `Settings` object. A bad value
raises `ConfigError` whose message is one line naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from starlette.config import Config

T = TypeVar("T")

DEFAULT_BOOK_BASE_URL = "https://mrowaisabdullah.github.io/ai-humanoid-robotics/docs"
DEFAULT_CORS_ORIGINS = "https://mrowaisabdullah.github.io,http://localhost:3000"


class ConfigError(ValueError):
    """A configuration value is missing or invalid; str() is one line naming it."""


@dataclass(frozen=True)
class Settings:
    # Upstreams. Secrets are plain strings here but are never logged: see `redacted()`.
    openai_api_key: str | None = None
    openai_base_url: str = "https://api.openai.com/v1"
    chat_model: str = "gpt-4o-mini"
    embedding_model: str = "text-embedding-3-small"
    embedding_dimensions: int = 1536
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    qdrant_collection: str = "book"
    upstream_timeout: float = 30.0
    # Content.
    book_title: str = "Physical AI & Humanoid Robotics"
    book_content_dir: Path = Path("book_content")
    book_base_url: str = DEFAULT_BOOK_BASE_URL
    data_dir: Path = Path("data")
    chunk_size: int = 512
    chunk_overlap: int = 64
    min_chunk_size: int = 50
    auto_ingest: bool = True
    # Retrieval and answers.
    top_k: int = 5
    relevance_floor: float = 0.5
    dense_relevance_floor: float = 0.2
    history_token_budget: int = 1500
    # HTTP surface.
    cors_origins: tuple[str, ...] = field(
        default_factory=lambda: tuple(DEFAULT_CORS_ORIGINS.split(","))
    )
    ingest_token: str | None = None
    rate_limit_per_minute: int = 20
    daily_token_budget: int = 0  # 0 = unlimited
    max_body_bytes: int = 64 * 1024
    max_question_chars: int = 2000
    max_history_messages: int = 20
    max_history_chars: int = 8000
    max_selected_text_chars: int = 8000
    heartbeat_seconds: float = 10.0
    stream_deadline_seconds: float = 120.0
    log_level: str = "info"

    @property
    def llm_enabled(self) -> bool:
        return bool(self.openai_api_key)

    @property
    def store_kind(self) -> str:
        return "qdrant" if self.qdrant_url else "embedded"

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = ".env"
    ) -> Settings:
        env = dict(os.environ if environ is None else environ)
        path = Path(env_file) if env_file is not None else None
        config = Config(env_file=path if path is not None and path.is_file() else None, environ=env)
        return _load(config)


def _get(config: Config, name: str, cast: Callable[[str], T], default: T) -> T:
    raw = config(name, default=None)
    if raw is None or str(raw).strip() == "":
        return default
    try:
        return cast(str(raw).strip())
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _secret(config: Config, name: str) -> str | None:
    raw = config(name, default=None)
    value = str(raw).strip() if raw is not None else ""
    return value or None


def _int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    def cast(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"expected a whole number, got {raw!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"{low}..{high}" if high is not None else f">= {low}"
            raise ValueError(f"must be {bound}, got {value}")
        return value

    return cast


def _float_in(low: float, high: float | None = None) -> Callable[[str], float]:
    def cast(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
        if not (value >= low and (high is None or value <= high)):
            bound = f"{low}..{high}" if high is not None else f">= {low}"
            raise ValueError(f"must be {bound}, got {value}")
        return value

    return cast


def _bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _http_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueError(f"expected an http(s) URL, got {raw!r}")
    return raw.rstrip("/")


def _origins(raw: str) -> tuple[str, ...]:
    origins = tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    for origin in origins:
        if origin != "*":
            _http_url(origin)
    return origins


def _name(raw: str) -> str:
    if not all(c.isalnum() or c in "-_" for c in raw):
        raise ValueError(f"only letters, digits, '-' and '_' allowed, got {raw!r}")
    return raw


def _log_level(raw: str) -> str:
    level = raw.lower()
    if level not in {"debug", "info", "warning", "error"}:
        raise ValueError(f"expected debug, info, warning or error, got {raw!r}")
    return level


def _load(config: Config) -> Settings:
    d = Settings()
    qdrant_url = _get(config, "QDRANT_URL", _http_url, None)
    values: dict[str, Any] = dict(
        openai_api_key=_secret(config, "OPENAI_API_KEY"),
        openai_base_url=_get(config, "OPENAI_BASE_URL", _http_url, d.openai_base_url),
        chat_model=_get(config, "CHAT_MODEL", str, d.chat_model),
        embedding_model=_get(config, "EMBEDDING_MODEL", str, d.embedding_model),
        embedding_dimensions=_get(
            config, "EMBEDDING_DIMENSIONS", _int_in(1, 65536), d.embedding_dimensions
        ),
        qdrant_url=qdrant_url,
        qdrant_api_key=_secret(config, "QDRANT_API_KEY"),
        qdrant_collection=_get(config, "QDRANT_COLLECTION", _name, d.qdrant_collection),
        upstream_timeout=_get(config, "UPSTREAM_TIMEOUT", _float_in(0.1, 600), d.upstream_timeout),
        book_title=_get(config, "BOOK_TITLE", str, d.book_title),
        book_content_dir=_get(config, "BOOK_CONTENT_DIR", Path, d.book_content_dir),
        book_base_url=_get(config, "BOOK_BASE_URL", _http_url, d.book_base_url),
        data_dir=_get(config, "DATA_DIR", Path, d.data_dir),
        chunk_size=_get(config, "CHUNK_SIZE", _int_in(64, 8191), d.chunk_size),
        chunk_overlap=_get(config, "CHUNK_OVERLAP", _int_in(0), d.chunk_overlap),
        min_chunk_size=_get(config, "MIN_CHUNK_SIZE", _int_in(0), d.min_chunk_size),
        auto_ingest=_get(config, "AUTO_INGEST", _bool, d.auto_ingest),
        top_k=_get(config, "TOP_K", _int_in(1, 20), d.top_k),
        relevance_floor=_get(config, "RELEVANCE_FLOOR", _float_in(0.0), d.relevance_floor),
        dense_relevance_floor=_get(
            config, "DENSE_RELEVANCE_FLOOR", _float_in(-1.0, 1.0), d.dense_relevance_floor
        ),
        history_token_budget=_get(
            config, "HISTORY_TOKEN_BUDGET", _int_in(0), d.history_token_budget
        ),
        cors_origins=_get(config, "CORS_ORIGINS", _origins, d.cors_origins),
        ingest_token=_secret(config, "INGEST_TOKEN"),
        rate_limit_per_minute=_get(
            config, "RATE_LIMIT_PER_MINUTE", _int_in(0), d.rate_limit_per_minute
        ),
        daily_token_budget=_get(config, "DAILY_TOKEN_BUDGET", _int_in(0), d.daily_token_budget),
        max_body_bytes=_get(config, "MAX_BODY_BYTES", _int_in(1024), d.max_body_bytes),
        max_question_chars=_get(config, "MAX_QUESTION_CHARS", _int_in(1), d.max_question_chars),
        max_history_messages=_get(
            config, "MAX_HISTORY_MESSAGES", _int_in(0), d.max_history_messages
        ),
        max_history_chars=_get(config, "MAX_HISTORY_CHARS", _int_in(0), d.max_history_chars),
        max_selected_text_chars=_get(
            config, "MAX_SELECTED_TEXT_CHARS", _int_in(1), d.max_selected_text_chars
        ),
        heartbeat_seconds=_get(config, "HEARTBEAT_SECONDS", _float_in(0.05, 300), d.heartbeat_seconds),
        stream_deadline_seconds=_get(
            config, "STREAM_DEADLINE_SECONDS", _float_in(1, 3600), d.stream_deadline_seconds
        ),
        log_level=_get(config, "LOG_LEVEL", _log_level, d.log_level),
    )
    if values["chunk_overlap"] >= values["chunk_size"]:
        raise ConfigError(
            f"CHUNK_OVERLAP: must be smaller than CHUNK_SIZE ({values['chunk_size']}), "
            f"got {values['chunk_overlap']}"
        )
    if values["min_chunk_size"] >= values["chunk_size"]:
        raise ConfigError(
            f"MIN_CHUNK_SIZE: must be smaller than CHUNK_SIZE ({values['chunk_size']}), "
            f"got {values['min_chunk_size']}"
        )
    return Settings(**values)
