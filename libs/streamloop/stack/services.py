"""The services of the loop: their names (as the catalog uses them) and their Python modules.

``streamloop up`` launches each one as its own OS process with ``python -m <module>``; docker and
Kubernetes run the same modules through ``streamloop service <name>``.
"""

from __future__ import annotations

from collections.abc import Mapping

SERVICES: dict[str, str] = {
    "featurizer": "services.featurizer",
    "online-scorer": "services.online_scorer",
    "ground-truth-collector": "services.ground_truth_collector",
    "drift-detector": "services.drift_detector",
    "retrainer": "services.retrainer",
    "model-publisher": "services.model_publisher",
}

# Who else appears in the catalog as a producer or consumer, without being a service of ours.
EXTERNAL_PARTIES = {"user", "dashboard"}

# On a broker that answers empty fetches at once (noida-db, see kafka/pacing.py), how long each
# service's consumer rests once it has read everything: the prediction path waits little, the
# learning loop's services (whose reaction is measured in seconds) can wait longer and spare the CPU.
# 30 ms on the prediction path, not 10: on a 2-core machine each rest-and-fetch cycle costs CPU
# that the rest of the loop needs (the featurizer used 30.5 CPU-s per 50k demo at 10 ms, 21.9 at
# 30 ms), for at most 20 ms more per hop while the stream is slow (docs/benchmarks.md).
IDLE_FETCH_PAUSE_MS: dict[str, int] = {"featurizer": 30, "online-scorer": 30}
BACKGROUND_IDLE_FETCH_PAUSE_MS = 100


def embedded_replicas(environ: Mapping[str, str]) -> dict[str, int]:
    """Replicas per service for `streamloop up` and `streamloop demo` on the embedded stack.

    The ground-truth collector is the loop's slowest stage: with one replica the demo waited for
    it for a third of its run on a 2-core machine. Two replicas split its partitions the way Kafka
    scales any service out (more members in the group), and each has its own interpreter. The
    faust runtime stays at one worker per group on noida-db (docs/embedded-stack.md, N1).
    """
    if environ.get("COLLECTOR_RUNTIME", "runner").lower() == "faust":
        return {}
    return {"ground-truth-collector": 2}
