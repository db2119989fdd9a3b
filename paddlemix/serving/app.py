"""The ASGI app: ``build_app(engine, ...)`` wires the routes, the scheduler (started and stopped with the app), the
OpenAI-shaped error handlers and the static web page at ``/``."""

import contextlib
import logging
import os

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .api_router import error_response, router
from .scheduler import Scheduler

logger = logging.getLogger(__name__)

STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")


def _describe(errors):
    """One line per pydantic error: 'body.field: message'."""
    lines = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        lines.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(lines) or "invalid request"


def build_app(engine, max_batch_size=8, max_queue=64, timeout=600.0, batch_wait=0.05, max_body_bytes=64 * 2**20):
    """A FastAPI app serving ``engine`` (an ``Engine``) through one ``Scheduler`` with these settings; request bodies
    over ``max_body_bytes`` get 413 before they are read."""
    scheduler = Scheduler(engine, max_batch_size=max_batch_size, max_queue=max_queue, timeout=timeout,
                          batch_wait=batch_wait)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        try:
            yield
        finally:
            logger.info("shutting down: cancelling waiting requests, stopping the running batch")
            scheduler.shutdown()

    app = FastAPI(title="paddlemix Emu3 server", lifespan=lifespan)
    app.state.engine = engine
    app.state.scheduler = scheduler

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body_bytes):
            return error_response(413, f"the request body is larger than the server's limit of {max_body_bytes} "
                                       "bytes")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        param = None
        if errors:
            loc = [str(p) for p in errors[0].get("loc", ()) if p != "body"]
            param = ".".join(loc) or None
        return error_response(400, _describe(errors), param=param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail),
                              type_="invalid_request_error" if exc.status_code < 500 else "server_error")

    app.include_router(router)
    app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static")
    return app
