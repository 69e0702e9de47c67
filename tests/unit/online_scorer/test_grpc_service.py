"""The gRPC handlers on an in-process server with an in-memory feature store."""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import generate_latest

from services.online_scorer import scoring as scoring_module
from services.online_scorer.client import score
from services.online_scorer.errors import ScoreFailed, ScorerError, ScorerUnreachable
from services.online_scorer.grpc_server import ScoringServer
from services.online_scorer.grpc_service import SERVICE_NAME, RequestLimits, ScoringServicer
from services.online_scorer.models import ModelHolder
from services.online_scorer.scoring import Scorer
from streamloop.contracts.feature_specs import MAX_KEY_BYTES
from streamloop.contracts.generated.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from streamloop.ml.features import MAX_TEXT_LENGTH
from streamloop.ml.prediction import ModelOutputError
from streamloop.stack.process import free_port
from streamloop.store import (
    FeatureStoreAccessDenied,
    FeatureStoreError,
    FeatureStoreUnavailable,
    FeatureWrite,
    UnreadableFeatureRow,
)
from tests.unit.online_scorer.fakes import MemoryFeatureStore, publish, slot_key, trained_model

NOW = 1_700_000_100_000
# As the featurizer writes the demo spec's features: merchant_category one-hot, country as text.
STORED = {"amount": 420.0, "distance_from_home_km": 250.0, "txn_count_10m": 3.0, "merchant_category=fuel": 1.0}
STORED_CATEGORICAL = {"country": "DE"}


class Served:
    def __init__(self, spec, artifacts, metrics, *, champion: bool = True, delay_s: float = 0.0,
                 limits: RequestLimits | None = None, auth_token: str | None = None) -> None:
        self.spec = spec
        self.store = MemoryFeatureStore(delay_s)
        stored = FeatureWrite("card-1", NOW - 2_000, 1, dict(STORED), dict(STORED_CATEGORICAL))
        self.store.write("features", stored)
        self.holder = ModelHolder(spec, artifacts)
        if champion:
            record = publish(artifacts, spec, trained_model(spec), "v1")
            self.holder.on_deployment(slot_key(record), record)
        self.servicer = ScoringServicer(spec, self.holder, self.store, limits=limits, metrics=metrics,
                                        clock=lambda: NOW)
        self.server = ScoringServer(self.servicer, metrics=metrics, auth_token=auth_token).start()
        self.channel = grpc.insecure_channel(self.server.address)
        self.stub = scoring_pb2_grpc.ScoringServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        self.server.stop(0)


@pytest.fixture
def served(spec, artifacts, metrics) -> Iterator[Served]:
    s = Served(spec, artifacts, metrics)
    yield s
    s.close()


def status_of_call(call, request, **kwargs) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(request, **kwargs)
    return info.value.code(), info.value.details()


def test_score_reads_the_store_and_uses_the_shared_scorer(served: Served) -> None:
    response = served.stub.Score(scoring_pb2.ScoreRequest(entity_id="card-1"), timeout=5)
    expected = Scorer(served.spec).score(served.holder.current.champion.model, STORED, STORED_CATEGORICAL)
    assert dict(response.prediction.probabilities) == expected.output.probabilities
    assert response.prediction.predicted_class == expected.output.predicted_class
    assert response.prediction.action == expected.output.action
    assert not response.prediction.HasField("value")
    assert (response.model_name, response.model_version, response.entity_id) == ("fraud", "v1", "card-1")
    assert response.feature_freshness_ms == 2_000
    assert not response.default_prediction
    assert response.explanation.method == "" and not response.explanation.contributions


def test_request_time_features_override_and_extend_stored_ones(served: Served) -> None:
    request = scoring_pb2.ScoreRequest(entity_id="card-1", numeric_features={"amount": 5.0, "amount_max_1h": 9.0},
                                       categorical_features={"country": "FR"})
    response = served.stub.Score(request, timeout=5)
    expected = Scorer(served.spec).score(served.holder.current.champion.model,
                                         {**STORED, "amount": 5.0, "amount_max_1h": 9.0},
                                         {"country": "FR"})
    assert dict(response.prediction.probabilities) == expected.output.probabilities


def test_a_request_time_one_hot_category_replaces_the_stored_column(served: Served) -> None:
    # Encoded as the featurizer encodes it: the stored merchant_category=fuel column goes, one hot column stays.
    request = scoring_pb2.ScoreRequest(entity_id="card-1", categorical_features={"merchant_category": "jewelry"})
    response = served.stub.Score(request, timeout=5)
    numeric = {k: v for k, v in STORED.items() if k != "merchant_category=fuel"} | {"merchant_category=jewelry": 1.0}
    expected = Scorer(served.spec).score(served.holder.current.champion.model, numeric, STORED_CATEGORICAL)
    stale = Scorer(served.spec).score(served.holder.current.champion.model, STORED | {"merchant_category=jewelry": 1.0},
                                      STORED_CATEGORICAL)
    assert dict(response.prediction.probabilities) == expected.output.probabilities
    assert expected.output.probabilities != stale.output.probabilities, "the test can tell one hot column from two"


@pytest.mark.parametrize(("features", "problem"), [
    ({"numeric_features": {"amout": 5.0}},
     "numeric_features['amout']: not a numeric feature of pipeline 'card-fraud'; it has amount, amount_max_1h"),
    ({"numeric_features": {"country": 1.0}},
     "numeric_features['country']: country is a categorical feature of pipeline 'card-fraud'; "
     "send it in categorical_features"),
    ({"numeric_features": {"merchant_category=fuel": 1.0}},
     "numeric_features['merchant_category=fuel']: a one-hot column of merchant_category; "
     "send merchant_category='fuel' in categorical_features"),
    ({"categorical_features": {"amount": "5"}},
     "categorical_features['amount']: amount is a numeric feature of pipeline 'card-fraud'; "
     "send it in numeric_features"),
    ({"categorical_features": {"tier": "gold"}},
     "categorical_features['tier']: not a categorical feature of pipeline 'card-fraud'; it has country, "
     "merchant_category"),
    # Its one-hot column, merchant_category=<value>, would be a feature name longer than 1,024: the
    # request's fault, not the stored row's (it was FAILED_PRECONDITION).
    ({"categorical_features": {"merchant_category": "x" * 1020}},
     "categorical_features['merchant_category']: longer than 1006 characters "
     "(one-hot column merchant_category=<value>)"),
    ({"categorical_features": {"country": "x" * (MAX_TEXT_LENGTH + 1)}},
     "categorical_features['country']: longer than 1024 characters"),
])
def test_a_feature_the_pipeline_does_not_produce_is_invalid_argument(served: Served, features, problem) -> None:
    # The model has never learned a weight for such a name: scoring it would silently ignore it.
    code, details = status_of_call(served.stub.Score, scoring_pb2.ScoreRequest(entity_id="card-1", **features),
                                   timeout=5)
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, problem) or (code is grpc.StatusCode.INVALID_ARGUMENT
                                                                              and details.startswith(problem)), details
    assert served.store.reads == 0, "refused before any read"
    batch = scoring_pb2.ScoreBatchRequest(requests=[scoring_pb2.ScoreRequest(entity_id="card-1"),
                                                    scoring_pb2.ScoreRequest(entity_id="card-2", **features)])
    code, details = status_of_call(served.stub.ScoreBatch, batch, timeout=5)
    assert code is grpc.StatusCode.INVALID_ARGUMENT and details.startswith("requests[1]." + problem), details


def test_explanations_on_request(served: Served) -> None:
    response = served.stub.Score(scoring_pb2.ScoreRequest(entity_id="card-1", explain=True), timeout=5)
    assert response.explanation.method == "linear_contribution"
    assert len(response.explanation.contributions) == served.spec.model.explanations.top_k
    kinds = {c.feature: c.WhichOneof("feature_value") for c in response.explanation.contributions}
    # Both ways a category is stored (country as text, merchant_category one-hot by the featurizer) show the
    # field with its category.
    assert all(kind == ("categorical_value" if f in ("country", "merchant_category") else "numeric_value")
               for f, kind in kinds.items()), kinds
    assert not any("=" in c.feature for c in response.explanation.contributions)


def test_a_one_hot_column_the_featurizer_encoded_is_explained_as_its_field_and_category(spec) -> None:
    from streamloop.ml.explain import linear_contributions

    model = trained_model(spec)
    x = {k: v for k, v in STORED.items() if k != "merchant_category=fuel"} | {"merchant_category=jewelry": 1.0}
    shown = {c.feature: c.value for c in linear_contributions(model, x).contributions}
    assert shown["merchant_category"] == "jewelry" and "merchant_category=jewelry" not in shown
    zero = {c.feature: c.value for c in linear_contributions(model, {**x, "merchant_category=fuel": 0.0}).contributions}
    assert zero["merchant_category=fuel"] == 0.0, "a column at 0.0 (fixed width) is not the event's category"


@pytest.mark.parametrize(("request_kwargs", "problem"), [
    ({"entity_id": ""}, "entity_id: must not be empty"),
    ({"entity_id": "x" * 2000}, "entity_id: longer than 1024"),
    # The featurizer bounds the keys it stores in UTF-8 bytes: 513 characters here, 1,026 bytes.
    ({"entity_id": "é" * (MAX_KEY_BYTES // 2 + 1)}, f"entity_id: longer than {MAX_KEY_BYTES} bytes in UTF-8"),
    ({"entity_id": "card-1", "numeric_features": {"amount": math.nan}}, "numeric_features['amount']: nan"),
    ({"entity_id": "card-1", "numeric_features": {"amount": math.inf}}, "is not a finite number"),
    ({"entity_id": "card-1", "numeric_features": {"amount": -1e160}}, "numeric_features['amount']: -1e+160 is beyond"),
    ({"entity_id": "card-1", "numeric_features": {f"f{i}": 1.0 for i in range(300)}}, "300 request-time features"),
    ({"entity_id": "card-1", "numeric_features": {"f0": 1.0}}, "numeric_features['f0']: not a numeric feature"),
    ({"entity_id": "card-1", "categorical_features": {"": "x"}}, "categorical_features: a feature has an empty name"),
])
def test_malformed_requests_are_invalid_argument_naming_the_problem(served: Served, request_kwargs, problem) -> None:
    code, details = status_of_call(served.stub.Score, scoring_pb2.ScoreRequest(**request_kwargs), timeout=5)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert problem in details
    assert served.store.reads == 0, "nothing is read for a malformed request"


def test_unknown_entity_is_not_found(served: Served) -> None:
    code, details = status_of_call(served.stub.Score, scoring_pb2.ScoreRequest(entity_id="card-404"), timeout=5)
    assert code is grpc.StatusCode.NOT_FOUND
    assert "card-404" in details
    longest = "é" * (MAX_KEY_BYTES // 2)  # as long a key as the featurizer stores
    code, _ = status_of_call(served.stub.Score, scoring_pb2.ScoreRequest(entity_id=longest), timeout=5)
    assert code is grpc.StatusCode.NOT_FOUND


def test_unknown_entity_gets_the_spec_default_prediction(spec, artifacts, metrics) -> None:
    with_default = spec.model_copy(update={"model": spec.model.model_copy(update={"default_prediction": 0.05})})
    s = Served(with_default, artifacts, metrics)
    try:
        response = s.stub.Score(scoring_pb2.ScoreRequest(entity_id="card-404"), timeout=5)
    finally:
        s.close()
    assert response.default_prediction
    assert dict(response.prediction.probabilities) == {"true": 0.05}
    assert response.prediction.action == "allow"
    assert response.feature_freshness_ms == -1 and response.model_version == "v1"


def test_no_champion_is_unavailable(spec, artifacts, metrics) -> None:
    s = Served(spec, artifacts, metrics, champion=False)
    try:
        code, details = status_of_call(s.stub.Score, scoring_pb2.ScoreRequest(entity_id="card-1"), timeout=5)
    finally:
        s.close()
    assert code is grpc.StatusCode.UNAVAILABLE and "no champion" in details


def test_feature_store_outage_is_unavailable_and_surprises_are_internal(served: Served, monkeypatch, caplog) -> None:
    def unavailable(*_a, **_k):
        raise FeatureStoreUnavailable("Timeout connecting to server 10.0.3.7:6379")

    monkeypatch.setattr(served.store, "read_many", unavailable)
    with caplog.at_level(logging.WARNING, logger="services.online_scorer.grpc_server"):
        for _ in range(3):
            code, details = status_of_call(served.stub.Score, scoring_pb2.ScoreRequest(entity_id="card-1"), timeout=5)
            assert code is grpc.StatusCode.UNAVAILABLE and "feature store is unavailable" in details
            assert "10.0.3.7" not in details, "the server's address is not for a client"
    logged = [r.getMessage() for r in caplog.records if "UNAVAILABLE" in r.getMessage()]
    assert len(logged) == 1 and "10.0.3.7:6379" in logged[0], "in the scorer's log, once per interval"

    def bug(*_a, **_k):
        raise KeyError("secret internals")

    monkeypatch.setattr(served.store, "read_many", bug)
    code, details = status_of_call(served.stub.Score, scoring_pb2.ScoreRequest(entity_id="card-1"), timeout=5)
    assert code is grpc.StatusCode.INTERNAL and "secret" not in details


@pytest.mark.parametrize("error", [
    FeatureStoreAccessDenied("cannot read 1 rows from card-fraud/features: NOPERM User scorer has no permissions "
                             "to access the 'streamloop:card-fraud:features:card-1' key"),
    FeatureStoreError("cannot read 1 rows from card-fraud/features: ERR max number of clients reached"),
])
def test_internal_errors_of_our_own_reveal_nothing_internal(served: Served, monkeypatch, caplog, error) -> None:
    def failing(*_a, **_k):
        raise error

    monkeypatch.setattr(served.store, "read_many", failing)
    with caplog.at_level(logging.ERROR, logger="services.online_scorer.grpc_server"):
        code, details = status_of_call(served.stub.Score, scoring_pb2.ScoreRequest(entity_id="card-1"), timeout=5)
    assert (code, details) == (grpc.StatusCode.INTERNAL, "internal error (see the scorer's log)")
    assert any(r.exc_info and r.exc_info[1] is error for r in caplog.records), "the detail is in the scorer's log"


def test_deadlines_are_respected_and_late_work_is_skipped(spec, artifacts, metrics) -> None:
    s = Served(spec, artifacts, metrics, delay_s=0.4)
    try:
        code, _ = status_of_call(s.stub.Score, scoring_pb2.ScoreRequest(entity_id="card-1"), timeout=0.1)
        assert code is grpc.StatusCode.DEADLINE_EXCEEDED
        # The handler notices the passed deadline after its slow read (0.4 s) and stops there.
        deadline, exposition = time.monotonic() + 10, ""
        while 'code="DEADLINE_EXCEEDED",method="Score"' not in exposition and time.monotonic() < deadline:
            time.sleep(0.05)
            exposition = generate_latest(metrics.registry).decode()
        assert 'code="DEADLINE_EXCEEDED",method="Score"' in exposition
        assert "streamloop_predictions_total" not in exposition
    finally:
        s.close()


def test_a_call_refused_for_its_token_is_counted_as_unauthenticated(spec, artifacts, metrics) -> None:
    token = "unit-test-token"  # noqa: S105 - made up
    s = Served(spec, artifacts, metrics, auth_token=token)
    try:
        code, _ = status_of_call(s.stub.Score, scoring_pb2.ScoreRequest(entity_id="card-1"))
        assert code is grpc.StatusCode.UNAUTHENTICATED
        s.stub.Score(scoring_pb2.ScoreRequest(entity_id="card-1"), metadata=(("authorization", f"Bearer {token}"),))
        counted = sorted(line for line in generate_latest(metrics.registry).decode().splitlines()
                         if line.startswith("streamloop_grpc_requests_total{"))
        assert len(counted) == 2, counted
        assert 'code="OK",method="Score"' in counted[0] and counted[0].endswith(" 1.0")
        assert 'code="UNAUTHENTICATED",method="Score"' in counted[1] and counted[1].endswith(" 1.0")
    finally:
        s.close()


def test_a_call_without_a_deadline_waits_for_a_slow_read(spec, artifacts, metrics) -> None:
    s = Served(spec, artifacts, metrics, delay_s=0.3)
    try:
        assert s.stub.Score(scoring_pb2.ScoreRequest(entity_id="card-1")).model_version == "v1"
    finally:
        s.close()


def test_score_batch_answers_each_entity_with_one_read(served: Served) -> None:
    served.store.write("features", FeatureWrite("card-2", NOW - 10, 1, {"amount": 1.0}, {}))
    request = scoring_pb2.ScoreBatchRequest(requests=[
        scoring_pb2.ScoreRequest(entity_id="card-1"), scoring_pb2.ScoreRequest(entity_id="card-404"),
        scoring_pb2.ScoreRequest(entity_id="card-2")])
    response = served.stub.ScoreBatch(request, timeout=5)
    assert [r.WhichOneof("result") for r in response.results] == ["response", "error", "response"]
    assert response.results[1].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    single = served.stub.Score(scoring_pb2.ScoreRequest(entity_id="card-1"), timeout=5)
    assert response.results[0].response.prediction == single.prediction
    assert served.store.reads == 2


def failing_on_card_13(served: Served, monkeypatch, error: Exception) -> scoring_pb2.ScoreBatchRequest:
    """The model raises ``error`` on card-13's features (written to the store), and scores the others;
    returns a batch of card-1 and card-13."""
    predict = scoring_module.predict

    def failing_on_13(model, x, spec):
        if x.get("amount") == 13.0:
            raise type(error)(*error.args)  # a new one at each call, as a model raises
        return predict(model, x, spec)

    monkeypatch.setattr(scoring_module, "predict", failing_on_13)
    served.store.write("features", FeatureWrite("card-13", NOW - 10, 1, {"amount": 13.0}, {}))
    return scoring_pb2.ScoreBatchRequest(requests=[scoring_pb2.ScoreRequest(entity_id="card-1"),
                                                   scoring_pb2.ScoreRequest(entity_id="card-13")])


def test_a_model_that_fails_on_one_entity_fails_only_that_entity_s_result(served: Served, monkeypatch,
                                                                          caplog) -> None:
    request = failing_on_card_13(served, monkeypatch,
                                 ModelOutputError("the classifier returned probability nan for True"))
    with caplog.at_level(logging.WARNING, logger="services.online_scorer.grpc_service"):
        response = served.stub.ScoreBatch(request, timeout=5)
        assert [r.WhichOneof("result") for r in response.results] == ["response", "error"]
        assert response.results[1].error.code == grpc.StatusCode.INTERNAL.value[0]
        assert response.results[1].error.message == \
            "the model failed: the classifier returned probability nan for True"
        for _ in range(3):
            code, details = status_of_call(served.stub.Score, scoring_pb2.ScoreRequest(entity_id="card-13"),
                                           timeout=5)
            assert (code, details) == (grpc.StatusCode.INTERNAL, response.results[1].error.message), "the same, alone"
    logged = [r.getMessage() for r in caplog.records if "card-13" in r.getMessage()]
    assert len(logged) == 1 and "probability nan" in logged[0], "logged once per 1,000 errors, by any path"


def test_a_model_that_raises_anything_on_one_entity_fails_only_that_entity_s_result(served: Served, monkeypatch,
                                                                                     caplog) -> None:
    # A river model's own error, no ModelError.
    request = failing_on_card_13(served, monkeypatch, ValueError("math domain error in secret_module.py"))
    with caplog.at_level(logging.WARNING, logger="services.online_scorer.grpc_service"):
        response = served.stub.ScoreBatch(request, timeout=5)
    assert [r.WhichOneof("result") for r in response.results] == ["response", "error"]
    error = response.results[1].error
    assert error.code == grpc.StatusCode.INTERNAL.value[0]
    assert "secret" not in error.message and "ValueError" not in error.message
    assert any("card-13" in r.getMessage() and r.exc_info for r in caplog.records), "the detail is in the log"
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            code, details = status_of_call(served.stub.Score, scoring_pb2.ScoreRequest(entity_id="card-13"),
                                           timeout=5)
            assert (code, details) == (grpc.StatusCode.INTERNAL, error.message), "the same, alone"
    assert sum(1 for r in caplog.records if r.exc_info) == 1, "logged once per 1,000 failures, by any path"


def test_an_unreadable_stored_row_fails_only_its_entity_s_result(served: Served, monkeypatch) -> None:
    read_many = served.store.read_many

    def corrupt_card_13(group, entity_keys, now_ms=None):
        if "card-13" in entity_keys:
            raise UnreadableFeatureRow("streamloop:card-fraud:features:card-13: corrupt row")
        return read_many(group, entity_keys, now_ms)

    monkeypatch.setattr(served.store, "read_many", corrupt_card_13)
    request = scoring_pb2.ScoreBatchRequest(requests=[scoring_pb2.ScoreRequest(entity_id="card-1"),
                                                      scoring_pb2.ScoreRequest(entity_id="card-13")])
    response = served.stub.ScoreBatch(request, timeout=5)
    assert [r.WhichOneof("result") for r in response.results] == ["response", "error"]
    code, details = status_of_call(served.stub.Score, scoring_pb2.ScoreRequest(entity_id="card-13"), timeout=5)
    assert (response.results[1].error.code, response.results[1].error.message) == (code.value[0], details)
    # The row is bad, not the scorer: as documented, and without the Redis key in the message.
    assert code is grpc.StatusCode.FAILED_PRECONDITION and "streamloop:" not in details


def test_score_batch_rejects_a_malformed_item_by_index(served: Served) -> None:
    request = scoring_pb2.ScoreBatchRequest(requests=[scoring_pb2.ScoreRequest(entity_id="card-1"),
                                                      scoring_pb2.ScoreRequest(entity_id="")])
    code, details = status_of_call(served.stub.ScoreBatch, request, timeout=5)
    assert code is grpc.StatusCode.INVALID_ARGUMENT and details == "requests[1].entity_id: must not be empty"
    code, details = status_of_call(served.stub.ScoreBatch, scoring_pb2.ScoreBatchRequest(), timeout=5)
    assert code is grpc.StatusCode.INVALID_ARGUMENT


def test_health_and_graceful_stop_finish_in_flight_calls(spec, artifacts, metrics) -> None:
    s = Served(spec, artifacts, metrics, delay_s=0.5)
    health = health_pb2_grpc.HealthStub(s.channel)

    def status() -> int:
        return health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5).status

    assert status() == health_pb2.HealthCheckResponse.NOT_SERVING
    s.server.set_serving(True)
    assert status() == health_pb2.HealthCheckResponse.SERVING
    in_flight = s.stub.Score.future(scoring_pb2.ScoreRequest(entity_id="card-1"), timeout=10)
    deadline = time.monotonic() + 10
    while not s.store.reads and time.monotonic() < deadline:  # the call is in the handler, in its slow read
        time.sleep(0.01)
    assert s.store.reads == 1
    s.server.begin_shutdown()
    assert status() == health_pb2.HealthCheckResponse.NOT_SERVING
    stopper = threading.Thread(target=s.server.stop, args=(5.0,))
    stopper.start()
    assert in_flight.result().model_version == "v1", "the call in flight completes"
    stopper.join(10)
    assert not stopper.is_alive(), "the graceful stop finished"
    s.channel.close()


def test_a_health_port_it_cannot_bind_frees_the_grpc_port_and_names_the_setting(spec, artifacts) -> None:
    servicer = ScoringServicer(spec, ModelHolder(spec, artifacts), MemoryFeatureStore())
    grpc_port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        health_port = taken.getsockname()[1]
        with pytest.raises(ScorerError) as info:
            ScoringServer(servicer, port=grpc_port, health_port=health_port)
    message = str(info.value)
    assert message.startswith(f"cannot listen for gRPC health on 127.0.0.1:{health_port} (SCORER_HEALTH_PORT): ")
    assert "\n" not in message
    with socket.socket() as probe:  # refused while the bound, never started scoring server holds it
        probe.bind(("127.0.0.1", grpc_port))


def test_reflection_lists_the_services(served: Served) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(served.channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in next(responses).list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


def test_client_scores_and_reports_errors(served: Served) -> None:
    result = score(served.server.address, "card-1", numeric={"amount": 5.0}, explain=True)
    assert result.model_version == "v1" and result.action in ("block", "review", "allow")
    assert result.explanation_method == "linear_contribution" and len(result.explanation) == 3
    with pytest.raises(ScoreFailed) as info:
        score(served.server.address, "card-404")
    assert info.value.code is grpc.StatusCode.NOT_FOUND


def test_client_names_an_unreachable_server() -> None:
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(ScorerUnreachable, match=f"cannot reach the online scorer at {address}"):
        score(address, "card-1", connect_timeout_s=0.3)


def test_the_score_command_sends_numbers_as_numeric_and_says_what_the_scorer_refused(served: Served) -> None:
    from typer.testing import CliRunner

    from streamloop.cli.main import app

    runner = CliRunner()
    address = ["--address", served.server.address]
    ok = runner.invoke(app, ["score", "card-1", "-f", "amount=5", "-c", "merchant_category=jewelry", *address])
    assert ok.exit_code == 0, ok.stderr
    numeric = {k: v for k, v in STORED.items() if k != "merchant_category=fuel"} | {"amount": 5.0,
                                                                                     "merchant_category=jewelry": 1.0}
    expected = Scorer(served.spec).score(served.holder.current.champion.model, numeric, STORED_CATEGORICAL)
    assert '"model_version": "v1"' in ok.stdout and str(expected.output.probabilities["true"]) in ok.stdout
    typo = runner.invoke(app, ["score", "card-1", "-f", "amout=5", *address])
    assert typo.exit_code == 1 and "Traceback" not in typo.stderr
    assert typo.stderr.startswith("streamloop: INVALID_ARGUMENT: numeric_features['amout']: not a numeric feature")
    as_number = runner.invoke(app, ["score", "card-1", "-f", "country=1", *address])
    assert "country is a categorical feature" in as_number.stderr
    assert runner.invoke(app, ["score", "card-1", "-c", "country=1", *address]).exit_code == 0


def test_request_time_categories_are_all_taken_and_never_grow_the_serving_model(spec, artifacts, metrics) -> None:
    """Any number of request-time values is taken; a value the model never learned is a column the
    Scorer drops before predicting, which river's StandardScaler would otherwise keep."""
    s = Served(spec, artifacts, metrics)
    try:
        def score(**categorical: str) -> tuple[grpc.StatusCode | None, str]:
            request = scoring_pb2.ScoreRequest(entity_id="card-1", categorical_features=categorical)
            try:
                s.stub.Score(request, timeout=5)
            except grpc.RpcError as exc:
                return exc.code(), exc.details()
            return None, ""

        scaler = s.holder.current.champion.model["StandardScaler"]
        columns = len(scaler.vars)
        for i in range(300):
            assert score(merchant_category=f"m{i}") == (None, ""), i
        assert score(merchant_category="fuel")[0] is None and score(country="DE")[0] is None
        assert len(scaler.vars) == columns, "taken values grow nothing"
        assert not [c for c in scaler.vars if c.startswith("merchant_category=m")]
        batch = scoring_pb2.ScoreBatchRequest(requests=[
            scoring_pb2.ScoreRequest(entity_id="card-1"),
            scoring_pb2.ScoreRequest(entity_id="card-1", categorical_features={"merchant_category": "m4"})])
        results = s.stub.ScoreBatch(batch, timeout=5).results
        assert [r.WhichOneof("result") for r in results] == ["response", "response"]
    finally:
        s.close()


def test_any_value_of_a_category_the_spec_lists_with_an_other_sets_one_column(spec, artifacts, metrics) -> None:
    from services.online_scorer.request_features import RequestFeatures

    categorical = [c.model_copy(update={"categories": ["fuel", "grocery"], "unknown": "other"})
                   if c.field == "merchant_category" else c for c in spec.features.categorical]
    listed = spec.model_copy(update={"features": spec.features.model_copy(update={"categorical": categorical})})
    features = RequestFeatures(listed)
    for value in ("grocery", "anything", "else"):
        numeric, _ = features.merge(STORED, STORED_CATEGORICAL, {}, {"merchant_category": value})
        assert sum(v for k, v in numeric.items() if k.startswith("merchant_category=")) == 1.0


def test_an_over_long_value_the_spec_turns_into_other_is_taken(spec, artifacts, metrics) -> None:
    # As the featurizer takes it: off the list under unknown: other, any value is encoded as __other__, which fits.
    categorical = [c.model_copy(update={"categories": ["fuel", "grocery", "DE"], "unknown": "other"})
                   for c in spec.features.categorical]
    listed = spec.model_copy(update={"features": spec.features.model_copy(update={"categorical": categorical})})
    s = Served(listed, artifacts, metrics)
    try:
        def probabilities(merchant_category: str, country: str) -> dict[str, float]:
            categorical = {"merchant_category": merchant_category, "country": country}
            response = s.stub.Score(scoring_pb2.ScoreRequest(entity_id="card-1", categorical_features=categorical),
                                    timeout=5)
            return dict(response.prediction.probabilities)

        long = "x" * (MAX_TEXT_LENGTH + 1)  # one-hot or as text, longer than the scorer takes
        assert probabilities(long, long) == probabilities("short", "other")
        assert probabilities("fuel", "DE") != probabilities(long, long), "the test tells __other__ from a listed value"
    finally:
        s.close()


def test_a_request_time_feature_name_may_be_as_long_as_the_spec_allows() -> None:
    # The spec takes names up to MAX_TEXT_LENGTH; a request limit of 256 refused the longer ones it allows.
    from services.online_scorer.errors import InvalidScoreRequest
    from services.online_scorer.grpc_service import validate
    from streamloop.contracts.feature_specs import MAX_TEXT_LENGTH

    longest = "n" * MAX_TEXT_LENGTH
    validate(scoring_pb2.ScoreRequest(entity_id="card-1", numeric_features={longest: 1.0},
                                      categorical_features={longest: "a"}), RequestLimits())
    with pytest.raises(InvalidScoreRequest, match="a name is longer than"):
        validate(scoring_pb2.ScoreRequest(entity_id="card-1", numeric_features={longest + "n": 1.0}), RequestLimits())
