"""Book RAG chat backend: files -> chunks -> vectors -> store -> hits -> prompt -> stream."""

__version__ = "0.1.0"
