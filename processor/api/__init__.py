"""The HTTP API: event ingest (docs/contract.md §5) and the read API (§6) on Litestar.

``create_app(settings)`` builds the ASGI app; ``serve(settings)`` runs it with uvicorn.
"""

from processor.api.app import create_app, serve

__all__ = ["create_app", "serve"]
