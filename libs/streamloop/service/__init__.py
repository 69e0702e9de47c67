"""What every service shares: common settings, the service context and the run entry point.

Each service keeps a small composition root (``services/<name>/app.py``) that asks this package
for its context and hands its pure processor to the stage runner.
"""

from streamloop.service.context import ServiceContext
from streamloop.service.settings import CommonSettings, SerdeSettings

__all__ = ["CommonSettings", "SerdeSettings", "ServiceContext"]
