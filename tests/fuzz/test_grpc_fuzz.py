"""The scorer's gRPC API under hostile requests: every reply is OK or a deliberate status, never
INTERNAL or UNKNOWN, and the server keeps serving afterwards."""

from __future__ import annotations

import math
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.online_scorer.grpc_server import ScoringServer
from services.online_scorer.grpc_service import ScoringServicer
from services.online_scorer.models import ModelHolder
from streamloop.contracts.generated.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from streamloop.store import FeatureWrite
from tests.fuzz.conftest import FUZZ
from tests.unit.online_scorer.fakes import MemoryFeatureStore, publish, slot_key, trained_model

NOW = 1_700_000_100_000
DELIBERATE = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
              grpc.StatusCode.RESOURCE_EXHAUSTED}
SCORE = "/streamloop.scoring.v1.ScoringService/Score"
BATCH = "/streamloop.scoring.v1.ScoringService/ScoreBatch"


class Server:
    def __init__(self, spec, artifacts) -> None:
        self.store = MemoryFeatureStore()
        self.store.write("features", FeatureWrite("card-1", NOW - 1_000, 1, {"amount": 10.0}, {"country": "DE"}))
        # A row that went bad in the store: a NaN no request can fix.
        self.store.write("features", FeatureWrite("card-nan", NOW - 1_000, 1, {"amount": math.nan}, {}))
        holder = ModelHolder(spec, artifacts)
        record = publish(artifacts, spec, trained_model(spec, n=50), "v1")
        holder.on_deployment(slot_key(record), record)
        self.server = ScoringServer(ScoringServicer(spec, holder, self.store, clock=lambda: NOW)).start()
        self.channel = grpc.insecure_channel(self.server.address)
        self.stub = scoring_pb2_grpc.ScoringServiceStub(self.channel)

    def alive(self) -> None:
        assert self.stub.Score(scoring_pb2.ScoreRequest(entity_id="card-1"), timeout=5).model_version == "v1"


@pytest.fixture(scope="module")
def server(demo_pipeline, tmp_path_factory) -> Iterator[Server]:
    from streamloop.ml import ArtifactSigner, ArtifactStore
    from tests.unit.online_scorer.conftest import SIGNING_KEY

    artifacts = ArtifactStore(tmp_path_factory.mktemp("artifacts"), ArtifactSigner({"default": SIGNING_KEY}, "default"))
    s = Server(demo_pipeline, artifacts)
    yield s
    s.channel.close()
    s.server.stop(0)


def outcome(call, request) -> grpc.StatusCode:
    try:
        call(request, timeout=10)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e308, -1e308, 5e-324])
TEXT = st.text(max_size=40) | st.text(min_size=1000, max_size=1500)
REQUESTS = st.builds(
    scoring_pb2.ScoreRequest,
    entity_id=st.one_of(st.sampled_from(["card-1", "card-nan", ""]), TEXT, st.text(min_size=1025, max_size=1100)),
    numeric_features=st.dictionaries(TEXT, FLOATS, max_size=8),
    categorical_features=st.dictionaries(TEXT, TEXT, max_size=8),
    explain=st.booleans(),
)


@FUZZ
@given(request=REQUESTS)
def test_score_answers_every_request_with_a_deliberate_status(server: Server, request) -> None:
    code = outcome(server.stub.Score, request)
    assert code is grpc.StatusCode.OK or code in DELIBERATE, code
    if any(not math.isfinite(v) for v in request.numeric_features.values()):
        assert code is not grpc.StatusCode.OK


@FUZZ
@given(requests=st.lists(REQUESTS, max_size=5))
def test_score_batch_answers_with_a_deliberate_status(server: Server, requests) -> None:
    """The call's status and each entity's: ScoreBatch answers OK and puts an entity's error in its result."""
    try:
        response = server.stub.ScoreBatch(scoring_pb2.ScoreBatchRequest(requests=requests), timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() in DELIBERATE, exc.code()
        return
    assert len(response.results) == len(requests)
    deliberate = {code.value[0] for code in DELIBERATE}
    for request, result in zip(requests, response.results, strict=True):
        if result.WhichOneof("result") == "error":
            assert result.error.code in deliberate, (result.error.code, result.error.message)
        else:
            assert result.response.entity_id == request.entity_id
            assert not any(not math.isfinite(v) for v in request.numeric_features.values())


@FUZZ
@given(raw=st.binary(max_size=2048), method=st.sampled_from([SCORE, BATCH]))
def test_random_bytes_as_a_message_are_invalid_argument_or_parsed(server: Server, raw: bytes, method: str) -> None:
    call = server.channel.unary_unary(method)  # no serializers: the bytes go on the wire as they are
    code = outcome(call, raw)
    assert code is grpc.StatusCode.OK or code in DELIBERATE, code


def test_specific_poison(server: Server) -> None:
    cases = [
        (scoring_pb2.ScoreRequest(entity_id="card-1", numeric_features={"amount": math.nan}),
            grpc.StatusCode.INVALID_ARGUMENT),
        (scoring_pb2.ScoreRequest(entity_id="card-1", numeric_features={"amount": -math.inf}),
            grpc.StatusCode.INVALID_ARGUMENT),
        (scoring_pb2.ScoreRequest(entity_id="card-1", numeric_features={"amount": 1e308}),
            grpc.StatusCode.INVALID_ARGUMENT),
        (scoring_pb2.ScoreRequest(entity_id="card-1", numeric_features={f"f{i}": 1.0 for i in range(300)}),
            grpc.StatusCode.INVALID_ARGUMENT),
        (scoring_pb2.ScoreRequest(entity_id="card-1", categorical_features={"country": "x" * 5000}),
            grpc.StatusCode.INVALID_ARGUMENT),
        (scoring_pb2.ScoreRequest(entity_id="x" * 5000), grpc.StatusCode.INVALID_ARGUMENT),
        (scoring_pb2.ScoreRequest(entity_id="card-nan"), grpc.StatusCode.FAILED_PRECONDITION),
        (scoring_pb2.ScoreRequest(entity_id="nobody"), grpc.StatusCode.NOT_FOUND),
    ]
    for request, expected in cases:
        assert outcome(server.stub.Score, request) is expected
    # Not a protobuf at all (a truncated varint, invalid UTF-8 in entity_id): INVALID_ARGUMENT.
    raw = server.channel.unary_unary(SCORE)
    assert outcome(raw, b"\x0a\xff\xff\xff\xff\x0f") is grpc.StatusCode.INVALID_ARGUMENT
    assert outcome(raw, b"\x0a\x02\xff\xfe") is grpc.StatusCode.INVALID_ARGUMENT
    # Over the 4 MB receive limit: refused by gRPC itself before any parsing.
    assert outcome(raw, b"\x0a" + b"\xff" * (5 * 1024 * 1024)) is grpc.StatusCode.RESOURCE_EXHAUSTED
    server.alive()


def test_the_server_is_still_serving_after_the_fuzzing(server: Server) -> None:
    server.alive()
