"""Container health checks for the compose file (Kubernetes uses its own httpGet and grpc probes).

The image has no curl or grpc_health_probe, and one script serves every service:

    python /app/deploy/healthcheck.py metrics [--port N]   # the Prometheus endpoint answers
    python /app/deploy/healthcheck.py grpc [--port N]      # grpc.health.v1 says SERVING

The port defaults to the one the service in this container listens on, read from the same
variables: ``STREAMLOOP_METRICS_PORT`` (9464) for metrics; for gRPC the scorer's plaintext health
port ``SCORER_HEALTH_PORT`` (50052 when ``SCORER_TLS_CERT_FILE`` is set), else ``SCORER_GRPC_PORT``
(50051). This check speaks no TLS, so it must not be pointed at a TLS port.

A stream service is healthy once its metrics endpoint answers (it serves it from start-up until
it stops). The scorer is healthy once its standard gRPC health service reports SERVING, which it
does only while a champion model is loaded. Exit 0 healthy, 1 not.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.request
from collections.abc import Mapping

# services/online_scorer/settings.py: DEFAULT_TLS_HEALTH_PORT (this script imports nothing of
# streamloop, so it starts fast and cannot fail on an unrelated setting).
TLS_HEALTH_PORT = 50052


def metrics_ok(host: str, port: int, timeout_s: float) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout_s) as response:  # noqa: S310
            return response.status == 200
    except OSError:
        return False


def grpc_ok(host: str, port: int, service: str, timeout_s: float) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"{host}:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def default_port(check: str, env: Mapping[str, str]) -> int:
    """The port the service in this container serves ``check`` on, by its own settings."""
    if check == "metrics":
        return int(env.get("STREAMLOOP_METRICS_PORT") or 9464)
    if env.get("SCORER_HEALTH_PORT"):
        return int(env["SCORER_HEALTH_PORT"])
    if env.get("SCORER_TLS_CERT_FILE"):
        return TLS_HEALTH_PORT
    return int(env.get("SCORER_GRPC_PORT") or 50051)


def main(argv: list[str] | None = None, env: Mapping[str, str] = os.environ) -> int:
    parser = argparse.ArgumentParser(description="Exit 0 when the service in this container is healthy.")
    parser.add_argument("check", choices=["metrics", "grpc"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None,
                        help="Default: the service's own (STREAMLOOP_METRICS_PORT; SCORER_HEALTH_PORT or "
                             "SCORER_GRPC_PORT).")
    parser.add_argument("--service", default="", help="grpc.health.v1 service name ('' = the whole server).")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    try:
        port = args.port if args.port is not None else default_port(args.check, env)
    except ValueError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1
    if port <= 0:
        # STREAMLOOP_METRICS_PORT=0 turns the endpoint off, -1 picks a port nobody here knows.
        print(f"healthcheck: no {args.check} port to check ({port}); pass --port", file=sys.stderr)
        return 1
    if args.check == "metrics":
        healthy = metrics_ok(args.host, port, args.timeout)
    else:
        healthy = grpc_ok(args.host, port, args.service, args.timeout)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
