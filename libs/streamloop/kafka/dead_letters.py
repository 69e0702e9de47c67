"""Dead-letter records: the original bytes and headers, plus Kafka Connect's error headers.

Using Connect's ``__connect.errors.*`` names means existing DLQ tooling (and people who know it)
can read our dead letters without learning a new convention.
"""

from __future__ import annotations

from streamloop.kafka.records import Headers

PREFIX = "__connect.errors."
TOPIC = PREFIX + "topic"
PARTITION = PREFIX + "partition"
OFFSET = PREFIX + "offset"
STAGE = PREFIX + "stage"
CLASS_NAME = PREFIX + "exception.class.name"
MESSAGE = PREFIX + "exception.message"
CONNECTOR = PREFIX + "connector.name"
RULE = "streamloop.errors.rule"
# Every rule an invalid record broke, comma-separated, when it broke more than one (RULE is the first).
RULES = "streamloop.errors.rules"

# Stages, named as Connect does where one fits.
STAGE_DECODE = "VALUE_CONVERTER"
STAGE_VALIDATION = "VALIDATION"
STAGE_PROCESS = "TASK_PUT"
STAGE_ENCODE = "PRODUCER_SERIALIZATION"
STAGE_PRODUCE = "KAFKA_PRODUCE"  # Kafka refused the record's output for good (too large, say)
# Set on a dead letter sent without the original value, which Kafka refused to take (too large
# with the error headers added): says why, and where the original still is (within retention).
VALUE_DROPPED = "streamloop.errors.value.dropped"

_MAX_MESSAGE_BYTES = 2_000
_OWN_HEADERS = (RULE, RULES, VALUE_DROPPED)


def dead_letter_headers(
    original: Headers | None,
    *,
    topic: str,
    partition: int,
    offset: int,
    stage: str,
    error: BaseException,
    service: str,
) -> Headers:
    # A dead letter re-driven and failing again keeps none of its first failure's error headers.
    headers = [(k, v) for k, v in (original or []) if not k.startswith(PREFIX) and k not in _OWN_HEADERS]
    message = str(error).encode("utf-8", "replace")[:_MAX_MESSAGE_BYTES]
    headers += [
        (TOPIC, topic.encode()),
        (PARTITION, str(partition).encode()),
        (OFFSET, str(offset).encode()),
        (STAGE, stage.encode()),
        (CLASS_NAME, f"{type(error).__module__}.{type(error).__qualname__}".encode()),
        (MESSAGE, message),
        (CONNECTOR, service.encode()),
    ]
    rule = getattr(error, "rule", None)
    if rule:
        headers.append((RULE, str(rule).encode()))
    rules = getattr(error, "rules", None) or []
    if len(rules) > 1:
        headers.append((RULES, ",".join(rules).encode()))
    return headers


def read_error_headers(headers: Headers | None) -> dict[str, str]:
    """The ``__connect.errors.*`` and ``streamloop.errors.*`` headers of a dead letter, decoded, for tools and tests."""
    return {
        key: value.decode("utf-8", "replace")
        for key, value in (headers or [])
        if (key.startswith(PREFIX) or key in _OWN_HEADERS) and value is not None
    }
