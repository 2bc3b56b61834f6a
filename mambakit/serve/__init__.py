"""Serving: the batch scheduler with state slots (engine.py), the OpenAI wire format (openai_api.py), the
ASGI app (app.py) and the ``serve`` command (commands.py)."""
from mambakit.serve.app import build_app
from mambakit.serve.engine import Engine, QueueFull, Request
from mambakit.serve.openai_api import APIError, ServeConfig

__all__ = ["APIError", "Engine", "QueueFull", "Request", "ServeConfig", "build_app"]
