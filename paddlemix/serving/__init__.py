"""An OpenAI-compatible server for Emu3: protocol (request/response models), engine (the model side), scheduler
(request lifecycle and batching on one worker thread), api_router (routes) and app (``build_app``)."""

from .app import build_app
from .engine import Emu3Engine, Engine
from .scheduler import Scheduler

__all__ = ["build_app", "Emu3Engine", "Engine", "Scheduler"]
