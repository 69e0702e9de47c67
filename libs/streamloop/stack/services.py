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
