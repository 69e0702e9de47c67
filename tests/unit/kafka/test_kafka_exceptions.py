"""A producer's fatal error, whichever form confluent-kafka raises it in."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from streamloop.kafka.exceptions import kafka_error_of, unwrapped_kafka_exceptions
from tests.kafka_fakes import fatal_error_as_system_error


def test_the_system_error_form_is_raised_as_its_kafka_exception() -> None:
    with pytest.raises(KafkaException) as info, unwrapped_kafka_exceptions():
        raise fatal_error_as_system_error()
    assert kafka_error_of(info.value).code() == KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER
    assert info.value.__suppress_context__


def test_a_system_error_of_no_kafka_exception_is_left_alone() -> None:
    with pytest.raises(SystemError, match="a bug, not the broker"), unwrapped_kafka_exceptions():
        raise SystemError("a bug, not the broker")
