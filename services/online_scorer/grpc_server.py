"""The gRPC server around the scoring service: statuses, authentication, TLS, health, reflection.

:class:`ErrorInterceptor` is the one place exceptions become gRPC statuses (``errors.status_of``);
unexpected ones are logged, never revealed. :class:`TokenAuthInterceptor` checks a bearer token on
every call except the health service (probes carry no token). :class:`ScoringServer` serves
``ScoringService`` beside the standard ``grpc.health.v1.Health`` service (NOT_SERVING until a
champion is live and again from the start of a graceful stop) and server reflection; given a
``health_port``, that health service alone is also served there in plaintext, for probes that
speak no TLS. Request bytes are parsed inside the error interceptor, so a message that is not a
valid protobuf is INVALID_ARGUMENT, not INTERNAL. Security: docs/security.md.
"""

from __future__ import annotations

import hmac
import logging
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.online_scorer.errors import (
    InvalidScoreRequest,
    ModelFailedUnexpectedly,
    ScorerError,
    Unauthenticated,
    status_of,
)
from services.online_scorer.grpc_service import SERVICE_NAME, ScoringServicer
from streamloop.contracts.generated.scoring.v1 import scoring_pb2_grpc
from streamloop.telemetry import ServiceMetrics

log = logging.getLogger(__name__)

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

UNAVAILABLE_LOG_INTERVAL_S = 10.0


def requests_counter(metrics: ServiceMetrics | None) -> Callable[..., None] | None:
    """``streamloop_grpc_requests_total{method, code}``, which both interceptors count calls in."""
    return metrics.counter("streamloop_grpc_requests_total", "gRPC calls by method and status.") if metrics else None


def short_method(method_path: str) -> str:
    """``Score`` for ``/streamloop.scoring.v1.ScoringService/Score``: the metric's ``method`` label."""
    return method_path.rsplit("/", 1)[-1]


class ErrorInterceptor(grpc.ServerInterceptor):
    """The one place exceptions become gRPC statuses; unexpected ones are logged, not revealed."""

    def __init__(self, metrics: ServiceMetrics | None = None) -> None:
        self._count = requests_counter(metrics)
        self._wrapped: dict[str, Any] = {}
        self._unavailable_logged_at = -UNAVAILABLE_LOG_INTERVAL_S

    def _unavailable(self, method: str, exc: Exception) -> None:
        """Log why the client was told UNAVAILABLE (it is not told: the reason names the server's
        address), at most every UNAVAILABLE_LOG_INTERVAL_S: an outage fails every call."""
        now = time.monotonic()
        if now - self._unavailable_logged_at >= UNAVAILABLE_LOG_INTERVAL_S:
            self._unavailable_logged_at = now
            log.warning("%s answered UNAVAILABLE: %s", method, exc)

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = continuation(handler_call_details)
            if handler is None:  # an unknown method: not cached, so callers cannot grow the cache
                return None
            # A method's registered handler never changes, so each is wrapped once, not per call.
            wrapped = self._wrapped[method] = self._wrap(handler, method)
        return wrapped

    def _wrap(self, handler: Any, method_path: str) -> Any:
        if handler.unary_unary is None:
            return handler
        method = short_method(method_path)
        inner = handler.unary_unary
        parse = handler.request_deserializer
        count = self._count

        def call(raw: bytes, context: grpc.ServicerContext) -> Any:
            try:
                try:
                    request = parse(raw) if parse is not None else raw
                except (DecodeError, ValueError, TypeError) as exc:
                    raise InvalidScoreRequest(f"the request is not a valid {method} message") from exc
                response = inner(request, context)
            except Exception as exc:  # noqa: BLE001 - every failure leaves with a status
                code, message = status_of(exc)
                if code is grpc.StatusCode.INTERNAL and not isinstance(exc, ModelFailedUnexpectedly):
                    log.exception("%s failed", method)
                elif code is grpc.StatusCode.UNAVAILABLE:
                    self._unavailable(method, exc)
                if count is not None:
                    count(1, {"method": method, "code": code.name})
                context.abort(code, message)
            if count is not None:
                count(1, {"method": method, "code": "OK"})
            return response

        return grpc.unary_unary_rpc_method_handler(call, request_deserializer=None,
                                                   response_serializer=handler.response_serializer)


def _abort_handler(handler: Any, code: grpc.StatusCode, message: str,
                   on_abort: Callable[[], None] = lambda: None) -> Any:
    """A handler of the same shape as ``handler`` that calls ``on_abort``, then ends the call with ``code``."""

    def unary(_request: Any, context: grpc.ServicerContext) -> Any:
        on_abort()
        context.abort(code, message)

    def streaming(_requests: Any, context: grpc.ServicerContext) -> Any:
        on_abort()
        context.abort(code, message)

    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(unary)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(streaming)
    return grpc.stream_stream_rpc_method_handler(streaming)


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Every call needs ``authorization: Bearer <token>``, except the health service (for probes).

    Reflection describes the API, so it needs the token too unless ``reflection_open``. Tokens are
    compared in constant time and never logged; a refused call is UNAUTHENTICATED, and counted
    here: the refusal replaces the handler the error interceptor would have counted it in.
    """

    def __init__(self, token: str, *, reflection_open: bool = False, metrics: ServiceMetrics | None = None) -> None:
        if not token:
            raise ScorerError("the gRPC bearer token must not be empty")
        self._count = requests_counter(metrics)
        self._expected = f"Bearer {token}".encode()
        self._open = {f"/{HEALTH_SERVICE}/"}
        if reflection_open:
            self._open.add(f"/{reflection.SERVICE_NAME}/")

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        method = handler_call_details.method
        if any(method.startswith(prefix) for prefix in self._open):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        supplied = b""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                supplied = value.encode() if isinstance(value, str) else bytes(value)
                break
        if hmac.compare_digest(supplied, self._expected):
            return handler
        error = Unauthenticated("missing or invalid bearer token")
        count, labels = self._count, {"method": short_method(method), "code": error.code.name}
        return _abort_handler(handler, error.code, str(error),
                              on_abort=(lambda: count(1, labels)) if count is not None else lambda: None)


@dataclass(frozen=True)
class ServerTLS:
    """PEM bytes: the server's certificate chain and key; a client CA turns on mutual TLS."""

    certificate_chain: bytes
    private_key: bytes = field(repr=False)
    client_ca: bytes | None = None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.private_key, self.certificate_chain)],
                                           root_certificates=self.client_ca,
                                           require_client_auth=self.client_ca is not None)


def _check_listen_address(host: str, port: int) -> None:
    """Refuse an address this host cannot listen on, before gRPC tries: its C core would log the
    failed bind on stderr beside our one line. Probes port 0 so a busy ``port`` is left to gRPC."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host.strip("[]"), 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, protocol) as probe:
            probe.bind(address)
    except OSError as exc:
        raise ScorerError(f"cannot listen for gRPC on {host}:{port}: {exc.strerror or exc}") from exc


def _release_ports(server: grpc.Server) -> None:
    """Free the ports of a server that is bound but was never started: grpcio's stop() does nothing
    before start(), and such a server holds its ports even once garbage-collected, until the
    process exits. Started only to be stopped at once: stop(None) cancels any call that reached it."""
    server.start()
    server.stop(None).wait()


class ScoringServer:
    """The gRPC server: scoring, health and reflection, on a thread pool."""

    def __init__(self, servicer: ScoringServicer, *, host: str = "127.0.0.1", port: int = 0, workers: int = 8,
                 max_concurrent_rpcs: int | None = None, metrics: ServiceMetrics | None = None,
                 tls: ServerTLS | None = None, auth_token: str | None = None, reflection_open: bool = False,
                 max_message_bytes: int = 4 * 1024 * 1024, health_port: int | None = None) -> None:
        interceptors: list[grpc.ServerInterceptor] = [ErrorInterceptor(metrics)]
        if auth_token is not None:
            interceptors.insert(0, TokenAuthInterceptor(auth_token, reflection_open=reflection_open, metrics=metrics))
        self.server = grpc.server(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scorer-grpc"),
                                  interceptors=interceptors, maximum_concurrent_rpcs=max_concurrent_rpcs,
                                  options=[("grpc.max_receive_message_length", max_message_bytes)])
        scoring_pb2_grpc.add_ScoringServiceServicer_to_server(servicer, self.server)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE_NAME, HEALTH_SERVICE, reflection.SERVICE_NAME), self.server)
        _check_listen_address(host, port)
        try:
            if tls is None:
                self.port = self.server.add_insecure_port(f"{host}:{port}")
            else:
                self.port = self.server.add_secure_port(f"{host}:{port}", tls.credentials())
        except RuntimeError as exc:  # grpcio 1.6x and later raise where older ones returned 0
            raise ScorerError(f"cannot listen for gRPC on {host}:{port}: {exc}") from exc
        self.tls = tls is not None
        self._mtls = tls is not None and tls.client_ca is not None
        self.authenticated = auth_token is not None
        if self.port == 0:
            raise ScorerError(f"cannot listen for gRPC on {host}:{port}")
        self.host = host
        self.health_server: grpc.Server | None = None
        self.health_port: int | None = None
        if health_port is not None:
            try:
                self.health_server, self.health_port = self._plaintext_health(host, health_port)
            except BaseException:
                _release_ports(self.server)
                raise
        self.set_serving(False)

    def _plaintext_health(self, host: str, port: int) -> tuple[grpc.Server, int]:
        """A second server with the same health servicer and nothing else, in plaintext: probes that
        speak no TLS reach it, and no scoring call can bypass TLS, the token or the interceptors."""
        server = grpc.server(ThreadPoolExecutor(max_workers=2, thread_name_prefix="scorer-health"),
                             maximum_concurrent_rpcs=16)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        _check_listen_address(host, port)
        # The setting is named because TLS opens this port even when it is unset.
        where = f"gRPC health on {host}:{port} (SCORER_HEALTH_PORT)"
        try:
            bound = server.add_insecure_port(f"{host}:{port}")
        except RuntimeError as exc:
            raise ScorerError(f"cannot listen for {where}: {exc}") from exc
        if bound == 0:
            raise ScorerError(f"cannot listen for {where}")
        return server, bound

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> ScoringServer:
        self.server.start()
        log.info("gRPC scoring service listening on %s (%s, %s)", self.address,
                 "mutual TLS" if self.tls and self._mtls else "TLS" if self.tls else "plaintext",
                 "bearer token required" if self.authenticated else "no authentication")
        if self.health_server is not None:
            self.health_server.start()
            log.info("gRPC health (only) listening on %s:%d (plaintext, for probes)", self.host, self.health_port)
        return self

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def begin_shutdown(self) -> None:
        """Health turns NOT_SERVING (and stays so), so load balancers drain before the server stops."""
        self.health.enter_graceful_shutdown()

    def stop(self, grace_s: float) -> None:
        """NOT_SERVING at once, then refuse new calls and let in-flight ones finish within ``grace_s``."""
        self.begin_shutdown()
        stopped = self.server.stop(grace_s)
        if self.health_server is not None:
            self.health_server.stop(grace_s).wait()
        stopped.wait()
