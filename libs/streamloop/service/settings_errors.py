"""A settings error as one line naming the environment variable to change.

pydantic names a field (``grpc_port``) of whichever settings class failed, and pydantic-settings
a field whose value is not JSON; the operator sets ``SCORER_GRPC_PORT``. The settings classes a
service's settings embed are searched for that field to name its variable.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any, get_args, get_origin

from pydantic import AliasChoices, BaseModel, ValidationError
from pydantic_settings import BaseSettings, SettingsError

_FIELD_NOT_PARSED = re.compile(r'error parsing value for field "([^"]+)"')


def _classes_in(annotation: Any) -> Iterator[Any]:
    yield annotation
    for argument in get_args(annotation):  # KafkaSettings | None, list[...]
        yield from _classes_in(argument)


def settings_classes(root: Any) -> list[type[BaseSettings]]:
    """``root`` (a settings class or a tuple of them) and every settings class their fields embed."""
    found: list[type[BaseSettings]] = []
    pending = list(root) if isinstance(root, tuple) else [root]
    while pending:
        candidate = pending.pop()
        if not (isinstance(candidate, type) and issubclass(candidate, BaseSettings)) or candidate in found:
            continue
        found.append(candidate)
        for field in candidate.model_fields.values():
            pending.extend(_classes_in(field.annotation))
    return found


def environment_variable(settings: type[BaseSettings], field_name: str) -> str | None:
    """The variable a field is read from, as operators write it (pydantic matches any case)."""
    field = settings.model_fields.get(field_name)
    if field is None:
        return None
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        alias = next((choice for choice in alias.choices if isinstance(choice, str)), None)
    if isinstance(alias, str):
        return alias.upper()
    return f"{settings.model_config.get('env_prefix', '')}{field_name}".upper()


def describe_validation_error(exc: ValidationError, root: Any) -> str:
    """The first error: ``where (VARIABLE): what``; a check of several fields names them itself."""
    error = exc.errors()[0]
    location = [str(part) for part in error["loc"]]
    cause = error.get("ctx", {}).get("error") if error["type"] == "value_error" else None
    message = str(cause) if cause is not None else error["msg"]
    if not location:
        return message
    failed = next((settings for settings in settings_classes(root) if settings.__name__ == exc.title), None)
    variable = environment_variable(failed, location[0]) if failed is not None else None
    if error["type"] == "extra_forbidden":
        known = ", ".join(_field_names(failed, location[:-1]))
        message = f"unknown key; the keys are {known}" if known else "unknown key"
    return f"{'.'.join(location)}{f' ({variable})' if variable else ''}: {message}"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    return next((c for c in _classes_in(annotation) if isinstance(c, type) and issubclass(c, BaseModel)), None)


def _field_names(settings: type[BaseModel] | None, path: list[str]) -> list[str]:
    """The fields of the model at ``path`` below ``settings`` (a JSON-typed setting's keys)."""
    model = settings
    for name in path:
        field = model.model_fields.get(name) if model is not None else None
        model = _model_in(field.annotation) if field is not None else None
    return list(model.model_fields) if model is not None else []


def describe_settings_error(exc: SettingsError, root: Any) -> str:
    """A variable whose value should be JSON and is not, named with what it should hold."""
    found = _FIELD_NOT_PARSED.search(str(exc))
    if found is None:
        return str(exc)
    field_name = found.group(1)
    names = {name.upper() for name in os.environ}
    owners = [(settings, environment_variable(settings, field_name)) for settings in settings_classes(root)
              if field_name in settings.model_fields]
    # Several classes may have the field (``runner``, say); the one whose variable is set failed.
    owner = next((o for o in owners if o[1] in names), owners[0] if owners else None)
    where = field_name if owner is None else f"{field_name} ({owner[1]})"
    cause = exc.__cause__
    if not isinstance(cause, json.JSONDecodeError):
        return f"{where}: {cause or exc}"
    expected = "" if owner is None else _json_kind(owner[0].model_fields[field_name].annotation)
    return f"{where}: not JSON ({cause}){f'; expected a JSON {expected}' if expected else ''}"


def _json_kind(annotation: Any) -> str:
    for candidate in _classes_in(annotation):
        origin = get_origin(candidate) or candidate
        if origin in (list, set, frozenset, tuple):
            return 'list, such as ["a", "b"]'
        if origin is dict or _model_in(origin) is not None:
            return 'object, such as {"name": "value"}'
    return ""
