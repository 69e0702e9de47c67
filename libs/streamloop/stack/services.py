"""The services of the loop: their names (as the catalog uses them) and their Python modules.

``streamloop up`` launches each one as its own OS process with ``python -m <module>``; docker and
Kubernetes run the same modules through ``streamloop service <name>``.
"""

from __future__ import annotations

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
IDLE_FETCH_PAUSE_MS: dict[str, int] = {"featurizer": 10, "online-scorer": 10}
BACKGROUND_IDLE_FETCH_PAUSE_MS = 100
