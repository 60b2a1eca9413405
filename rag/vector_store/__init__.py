"""The store interface and its Qdrant implementations (embedded shard, REST server)."""

from rag.vector_store.base import (
    Hit,
    PointRecord,
    SparseVector,
    StoreError,
    StoreInfo,
    VectorStore,
)

__all__ = ["Hit", "PointRecord", "SparseVector", "StoreError", "StoreInfo", "VectorStore"]
