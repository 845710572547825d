"""The web app and REST API (FastAPI): `create_app` for an open collection, `serve` to run it."""

from .app import create_app, serve

__all__ = ["create_app", "serve"]
