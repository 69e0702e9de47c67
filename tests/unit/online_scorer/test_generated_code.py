"""The checked-in gRPC code is what protoc makes from schemas/proto today."""

from __future__ import annotations

import re

import pytest

from services.online_scorer import generate_proto


def _generated_with() -> str | None:
    text = (generate_proto.OUTPUT_ROOT / "scoring" / "v1" / "scoring_pb2_grpc.py").read_text()
    match = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", text)
    return match.group(1) if match else None


def test_checked_in_code_matches_a_fresh_generation() -> None:
    from grpc_tools import grpc_version

    checked_in = _generated_with()
    if checked_in != grpc_version.VERSION:
        pytest.skip(f"files were generated with grpcio-tools {checked_in}, this is {grpc_version.VERSION}")
    changed = generate_proto.differences(generate_proto.generate())
    assert not changed, (f"out of date: {', '.join(map(str, changed))}; "
                         "run python -m services.online_scorer.generate_proto")


def test_generated_modules_import_and_name_the_proto() -> None:
    from streamloop.contracts.generated.scoring.v1 import scoring_pb2, scoring_pb2_grpc

    assert scoring_pb2.DESCRIPTOR.name == "streamloop/scoring/v1/scoring.proto"
    assert set(scoring_pb2.DESCRIPTOR.services_by_name["ScoringService"].methods_by_name) == {"Score", "ScoreBatch"}
    assert hasattr(scoring_pb2_grpc, "ScoringServiceStub")
