"""Dead-letter headers: Kafka Connect's error headers, plus the rules an invalid record broke."""

from __future__ import annotations

from streamloop.kafka import InvalidRecordError
from streamloop.kafka.dead_letters import RULE, RULES, STAGE_VALIDATION, dead_letter_headers, read_error_headers


def headers_for(error: BaseException) -> dict[str, str]:
    return read_error_headers(dead_letter_headers([("trace", b"1"), ("__connect.errors.topic", b"stale")],
                                                  topic="txns", partition=2, offset=41, stage=STAGE_VALIDATION,
                                                  error=error, service="featurizer"))


def test_a_record_that_broke_one_rule_names_it_once() -> None:
    headers = headers_for(InvalidRecordError("amount is -5.0, below the minimum 0", rule="amount.min"))
    assert headers[RULE] == "amount.min" and RULES not in headers
    assert headers["__connect.errors.topic"] == "txns", "an earlier dead letter's headers are replaced"
    assert headers["__connect.errors.exception.message"] == "amount is -5.0, below the minimum 0"


def test_a_record_that_broke_several_rules_names_every_one() -> None:
    error = InvalidRecordError("amount is -5.0, below the minimum 0; country has length 3, above the maximum 2",
                               rule="amount.min", rules=["amount.min", "country.max_length"])
    headers = headers_for(error)
    assert headers[RULE] == "amount.min"
    assert headers[RULES] == "amount.min,country.max_length"
    assert headers["__connect.errors.exception.message"] == str(error)


def test_an_error_without_a_rule_has_no_rule_headers() -> None:
    headers = headers_for(ValueError("not a valid Avro record"))
    assert RULE not in headers and RULES not in headers
    assert headers["__connect.errors.exception.class.name"] == "builtins.ValueError"


def test_a_dead_letter_that_fails_again_keeps_none_of_its_first_rules() -> None:
    first = dead_letter_headers([("trace", b"1")], topic="txns", partition=2, offset=41, stage=STAGE_VALIDATION,
                                error=InvalidRecordError("x", rule="amount.min", rules=["amount.min", "country.max"]),
                                service="featurizer")
    again = read_error_headers(dead_letter_headers(first, topic="txns", partition=2, offset=41, stage=STAGE_VALIDATION,
                                                   error=ValueError("not a valid Avro record"), service="featurizer"))
    assert RULE not in again and RULES not in again, again
