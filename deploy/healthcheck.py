"""Container health checks for the compose file (Kubernetes uses its own httpGet and grpc probes).

The image has no curl or grpc_health_probe, and one script serves every service:

    python /app/deploy/healthcheck.py metrics [--port 9464]     # the Prometheus endpoint answers
    python /app/deploy/healthcheck.py grpc [--port 50051]       # grpc.health.v1 says SERVING

A stream service is healthy once its metrics endpoint answers (it serves it from start-up until
it stops). The scorer is healthy once its standard gRPC health service reports SERVING, which it
does only while a champion model is loaded. Exit 0 healthy, 1 not.
"""

from __future__ import annotations

import argparse
import sys
import urllib.request


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Exit 0 when the service in this container is healthy.")
    parser.add_argument("check", choices=["metrics", "grpc"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="Default: 9464 (metrics) or 50051 (grpc).")
    parser.add_argument("--service", default="", help="grpc.health.v1 service name ('' = the whole server).")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.check == "metrics":
        healthy = metrics_ok(args.host, args.port or 9464, args.timeout)
    else:
        healthy = grpc_ok(args.host, args.port or 50051, args.service, args.timeout)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
