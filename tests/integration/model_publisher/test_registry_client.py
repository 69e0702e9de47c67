"""What ``streamloop models`` runs: list, show, manual promote and rollback against a live registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.model_publisher.app import build
from services.model_publisher.settings import PublisherSettings
from streamloop.kafka import KafkaSettings
from streamloop.ml import build_model
from streamloop.ml.exceptions import RegistryError
from streamloop.ml.registry import CHAMPION, bootstrap_version, shadow_slot
from streamloop.ml.registry_client import RegistryClient
from tests.integration.model_publisher.harness import ServiceThread, Topics, apply_env, wait_for
from tests.unit.model_publisher.factories import artifact_store, candidate

pytestmark = pytest.mark.integration


def test_list_show_promote_and_roll_back_by_hand(service_env, monkeypatch, loop_catalog, bootstrap_servers,
                                                demo_pipeline):
    apply_env(monkeypatch, service_env)
    topics = Topics(loop_catalog, bootstrap_servers)
    store = artifact_store(Path(service_env["STREAMLOOP_ARTIFACT_STORE"].removeprefix("file://")),
                           key=service_env["STREAMLOOP_ARTIFACT_SIGNING_KEY"].encode())
    client = RegistryClient(demo_pipeline, loop_catalog, KafkaSettings(bootstrap_servers=bootstrap_servers),
                            store=store)
    boot = bootstrap_version(demo_pipeline.model)
    model = build_model(demo_pipeline.model)
    model.learn_one({"amount": 3.0}, True)
    challenger = candidate(demo_pipeline, store, model=model, parent=boot, trigger="DRIFT")
    new = challenger["version"]
    with ServiceThread(build(PublisherSettings(), install_global_telemetry=False)) as service:
        wait_for(lambda: service.app.processor._bootstrapped, what="bootstrap")
        topics.produce("model_candidates", [challenger])
        wait_for(lambda: service.app.processor.table.find("card-fraud", "fraud", new) is not None, what="shadow")
        wait_for(lambda: any(r["version"] == new for r in client.models()), what="the candidate in the listing")

        listing = client.models()
        assert [r["version"] for r in listing] == [new, boot], "oldest first: the candidate was created in 2023"
        rows = {r["version"]: r for r in listing}
        assert rows[boot]["slots"] == [CHAMPION] and rows[boot]["trigger"] == "BOOTSTRAP"
        assert rows[new]["slots"] == [shadow_slot(new)] and rows[new]["trigger"] == "DRIFT"
        assert rows[new]["parent_version"] == boot and rows[new]["last_decision"] == "SHADOW"
        shown = client.show(new)
        assert shown["candidate"]["sample_count"] == 10
        assert [d["kind"] for d in shown["decisions"]] == ["REGISTER", "SHADOW"]
        with pytest.raises(RegistryError):
            client.show("fraud-nope")

        promoted = client.promote(new, reason="on-call: promote the drift rebuild")
        assert (promoted["kind"], promoted["automatic"], promoted["from_version"]) == ("PROMOTE", False, boot)
        wait_for(lambda: client.state().table.champion("card-fraud", "fraud")["version"] == new,
                 what="the manual promotion")
        state = client.state()
        assert state.table.slot("card-fraud", "fraud", shadow_slot(new)) is None
        # The old champion stays on as a shadow under the same decision: the publisher's rollback watch.
        kept = state.table.slot("card-fraud", "fraud", shadow_slot(boot))
        assert kept is not None and kept["decision_id"] == promoted["decision_id"]
        with pytest.raises(RegistryError, match="already the champion"):
            client.promote(new)

        rolled = client.rollback(reason="on-call: back out")
        assert (rolled["kind"], rolled["to_version"], rolled["automatic"]) == ("ROLLBACK", boot, False)
        wait_for(lambda: client.state().table.champion("card-fraud", "fraud")["version"] == boot,
                 what="the manual rollback")
        wait_for(lambda: service.app.processor.table.champion("card-fraud", "fraud")["version"] == boot,
                 what="the publisher to see the manual change")
        wait_for(lambda: client.state().table.slot("card-fraud", "fraud", shadow_slot(boot)) is None,
                 what="the rolled-back-to version to leave its shadow slot")


def test_a_tail_read_returns_the_last_records_of_the_topic(loop_catalog, bootstrap_servers):
    # The publisher reads back only the end of the decisions topic, which keeps every decision forever.
    from streamloop.ml.registry import decision_record
    from streamloop.ml.registry_client import read_topic

    topics = Topics(loop_catalog, bootstrap_servers)
    model = "tail-model"
    topics.produce("model_decisions", [decision_record("tail", model, "RETIRE", "r", decision_id=f"v{i}:retire",
                                                       decided_at=i, from_version=f"v{i}") for i in range(5)])
    kafka = KafkaSettings(bootstrap_servers=bootstrap_servers)
    name, decode = loop_catalog["model_decisions"].name, topics.serde("model_decisions").decode
    mine = [v["decision_id"] for _k, v in read_topic(kafka, name, decode) if v["model_name"] == model]
    assert mine[-5:] == [f"v{i}:retire" for i in range(5)]
    tail = [v["decision_id"] for _k, v in read_topic(kafka, name, decode, tail=2)]
    assert tail == ["v3:retire", "v4:retire"]
