"""Each service's settings as the launcher will give them, checked before anything starts.

A service whose settings are invalid exits 2 at start (service/entrypoint.py); a launcher that
found out only then had started the broker, Redis and every service, and ``up`` restarted the
service for ever (the demo then waited 90 s for a champion). ``settings_problem`` builds the
service's own settings class from the environment the launcher would give the process and
describes the first error as the service would.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator, Mapping

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsError

from streamloop.service.settings_errors import describe_settings_error, describe_validation_error

# Each service's settings class, as its app.py loads it (``start_service(SERVICE, Settings, build)``).
SETTINGS: dict[str, str] = {
    "featurizer": "services.featurizer.settings:FeaturizerSettings",
    "online-scorer": "services.online_scorer.settings:ScorerSettings",
    "ground-truth-collector": "services.ground_truth_collector.settings:CollectorSettings",
    "drift-detector": "services.drift_detector.settings:DriftSettings",
    "retrainer": "services.retrainer.settings:RetrainerSettings",
    "model-publisher": "services.model_publisher.settings:PublisherSettings",
}


def settings_class(service: str) -> type[BaseSettings]:
    module, _, name = SETTINGS[service].partition(":")
    return getattr(importlib.import_module(module), name)


def settings_problem(service: str, environ: Mapping[str, str]) -> str | None:
    """The service's first settings error in ``environ``, in one line as the service prints it; None when valid."""
    settings = settings_class(service)
    with environment(environ):
        try:
            settings()
        except ValidationError as exc:
            return f"{service}: invalid settings: {describe_validation_error(exc, settings)}"
        except SettingsError as exc:
            return f"{service}: invalid settings: {describe_settings_error(exc, settings)}"
    return None


@contextlib.contextmanager
def environment(environ: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` is ``environ`` inside, and as it was after. pydantic-settings reads only
    ``os.environ``, and a settings class builds its nested ones (``CommonSettings``) from it too;
    the launcher checks before it starts any thread."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
