"""The FastAPI app: the OpenAI-compatible endpoints, ``/tokenize`` and ``/detokenize``, the
probes ``/health`` and ``/ready``, and ``/metrics``.

``create_app(config)`` loads the tokenizer at once (a bad model directory fails here, not on the
first request); the lifespan binds the inbox, starts the event thread and the registry refresh,
and stops them on shutdown. Every error leaves as an OpenAI-shaped body: FastAPI's own 422s and
404/405s included.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from kvstore.client import StoreClient
from router import openapi, tokens
from router.admission import read_body
from router.config import RouterConfig
from router.dispatch.cluster import ClusterView
from router.dispatch.dispatcher import Dispatcher
from router.errors import ApiError
from router.observe.dashboard import dashboard_router
from router.observe.history import MetricsHistory
from router.observe.metrics import RouterMetrics
from router.serving import Router, error_response
from router.tokenizer import TextTokenizer
from router.validation import parse_body
from worker.registry import WorkerRegistry
from worker.types import ROLES, WorkerState

log = logging.getLogger(__name__)


def create_app(config: RouterConfig) -> FastAPI:
    """The router app. Raises ``ValueError`` if ``config.model_dir`` has no usable tokenizer."""
    tokenizer = TextTokenizer(config.model_dir)
    metrics = RouterMetrics()
    metrics.set_slo(config.slo.ttft_s, config.slo.tbt_s)
    app = FastAPI(title="Tandem router", lifespan=_lifespan(config, tokenizer, metrics))
    app.state.metrics = metrics
    if config.api_key is not None:
        _require_api_key(app, config.api_key, config.open_paths)
    _add_error_handlers(app)
    _add_endpoints(app, config, metrics)
    app.include_router(dashboard_router())
    return app


def _lifespan(
    config: RouterConfig, tokenizer: TextTokenizer, metrics: RouterMetrics
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """Start the dispatcher, the registry refresh and the metrics history; stop them on shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = WorkerRegistry(config.redis_url)
        store = StoreClient(config.redis_url)
        dispatcher = Dispatcher(
            config.inbox,
            advertise=config.advertise_inbox,
            send_timeout_s=config.send_timeout_s,
            lost_grace_s=config.lost_grace_s,
        )
        dispatcher.start()
        cluster = _cluster_view(config, registry, store, dispatcher)
        metrics.watch(lambda: cluster.snapshot.workers, lambda: cluster.snapshot.store_nodes)
        await cluster.refresh()
        refresher = asyncio.create_task(cluster.run(), name="router-registry-refresh")
        app.state.history = MetricsHistory(metrics, lambda: cluster.snapshot.workers)
        sampler = asyncio.create_task(app.state.history.run(), name="router-metrics-history")
        app.state.router = Router(config, tokenizer, dispatcher, cluster, metrics)
        log.info("router serving %s; worker events to %s", config.model_name, dispatcher.reply_to)
        try:
            yield
        finally:
            refresher.cancel()
            sampler.cancel()
            await asyncio.gather(refresher, sampler, return_exceptions=True)
            dispatcher.stop()
            registry.close()
            store.close()

    return lifespan


def _cluster_view(
    config: RouterConfig, registry: WorkerRegistry, store: StoreClient, dispatcher: Dispatcher
) -> ClusterView:
    """The cluster view of the router's model; every refresh tells the dispatcher who is live."""

    def on_refresh(workers: tuple[WorkerState, ...]) -> None:
        dispatcher.fail_lost({w.info.instance_key for w in workers})  # a restarted worker is another
        dispatcher.prune({w.info.address for w in workers})

    return ClusterView(
        registry, store, refresh_interval_s=config.refresh_interval_s, stale_after_s=config.stale_after_s,
        registry_grace_s=config.registry_grace_s,
        on_refresh=on_refresh, model=config.model_dir.resolve().name,
    )  # fmt: skip


def _require_api_key(app: FastAPI, api_key: str, open_paths: tuple[str, ...]) -> None:
    """401 (OpenAI's body and code) for a request to a closed path without the key as a bearer token."""
    expected = f"Bearer {api_key}".encode()

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        path = request.url.path
        if any(path == p or path.startswith(p.rstrip("/") + "/") for p in open_paths):
            return await call_next(request)
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            text = "incorrect API key provided" if given else "this server needs an API key"
            error = ApiError(401, f"{text}: send it as 'Authorization: Bearer <key>'", code="invalid_api_key")
            return error_response(error, {"WWW-Authenticate": "Bearer"})
        return await call_next(request)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as an OpenAI-shaped body, FastAPI's and Starlette's own included."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(ApiError(400, f"invalid request: {exc.errors()}"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(
            ApiError(exc.status_code, str(exc.detail), code=code), exc.headers
        )  # 405: Allow

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(ApiError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal"))


def _add_generation_endpoints(app: FastAPI, config: RouterConfig) -> None:
    """The two OpenAI generation endpoints, and the OpenAPI document that describes their bodies."""
    errors = openapi.error_responses()

    @app.post(
        "/v1/completions", responses=errors, openapi_extra=openapi.request_docs(openapi.CompletionRequest)
    )
    async def completions(request: Request) -> Response:
        """A completion of a prompt (text or token ids), streamed (SSE) or whole."""
        return await request.app.state.router.serve(request, chat=False)

    @app.post(
        "/v1/chat/completions",
        responses=errors,
        openapi_extra=openapi.request_docs(openapi.ChatCompletionRequest),
    )
    async def chat_completions(request: Request) -> Response:
        """The assistant's answer to a chat (the model's chat template), streamed (SSE) or whole."""
        return await request.app.state.router.serve(request, chat=True)

    def document() -> dict:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version="1", routes=app.routes)
            app.openapi_schema = openapi.add_schemas(document, config.model_name)
        return app.openapi_schema

    app.openapi = document


def _add_endpoints(app: FastAPI, config: RouterConfig, metrics: RouterMetrics) -> None:
    _add_generation_endpoints(app, config)
    _add_token_endpoints(app, config)
    _add_probes(app)

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        """The served model; ``max_model_len`` is the context every live worker can hold."""
        router = request.app.state.router
        card = {
            "id": config.model_name, "object": "model", "created": 0, "owned_by": "tandem",
            "max_model_len": router.admission.max_model_len(),
        }  # fmt: skip
        return {"object": "list", "data": [card]}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)


def _add_token_endpoints(app: FastAPI, config: RouterConfig) -> None:
    """``/tokenize`` and ``/detokenize`` (vLLM's bodies): the router's own tokenizer, the one requests use."""
    errors = openapi.error_responses()

    @app.post("/tokenize", responses=errors, openapi_extra=openapi.request_docs(openapi.TokenizeRequest))
    async def tokenize(request: Request) -> JSONResponse:
        """Token ids of a prompt, or of a chat as the model's template renders it."""
        router = request.app.state.router
        body = parse_body(await read_body(request, config.max_body_bytes, config.body_timeout_s))
        token_ids = await asyncio.to_thread(tokens.tokenize, body, router.tokenizer, config.model_name)
        max_model_len = router.admission.max_model_len()
        return JSONResponse({"count": len(token_ids), "max_model_len": max_model_len, "tokens": token_ids})

    @app.post("/detokenize", responses=errors, openapi_extra=openapi.request_docs(openapi.DetokenizeRequest))
    async def detokenize(request: Request) -> JSONResponse:
        """The text of token ids."""
        router = request.app.state.router
        body = parse_body(await read_body(request, config.max_body_bytes, config.body_timeout_s))
        return JSONResponse({"prompt": tokens.detokenize(body, router.tokenizer, config.model_name)})


def _add_probes(app: FastAPI) -> None:
    """``/health`` (liveness: the process answers) and ``/ready`` (a request could be served now)."""

    def state(request: Request) -> tuple[bool, dict]:
        cluster: ClusterView = request.app.state.router.cluster
        counts = {role: len(cluster.snapshot.by_role(role)) for role in ROLES}
        draining = getattr(request.app.state, "draining", False)
        ready = (
            cluster.fresh
            and not draining
            and (counts["colocated"] > 0 or (counts["prefill"] > 0 and counts["decode"] > 0))
        )
        body = {
            "status": "ok" if ready else "unavailable",
            "draining": draining,
            "registry_fresh": cluster.fresh,
            "registry_reachable": cluster.registry_reachable,  # False: serving on the last view
            "workers": counts,
        }
        return ready, body

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        """200 while the router runs (a liveness probe); the body says whether it is ready (see
        ``/ready``) and counts the live workers by role."""
        return JSONResponse(state(request)[1])

    @app.get("/ready", responses={503: {"description": "not ready: the body says why"}})
    async def ready(request: Request) -> JSONResponse:
        """200 when a request could be routed now: a usable cluster view, a prefill-capable and a
        decode-capable worker (a colocated one is both), and the router not draining; 503 otherwise.
        ``registry_reachable`` is False while Redis is down and the last view is used."""
        is_ready, body = state(request)
        return JSONResponse(body, status_code=200 if is_ready else 503)
