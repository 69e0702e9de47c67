"""``streamloop models`` as a user runs it, on registry topics held in memory (no broker)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from streamloop.cli import model_commands
from streamloop.cli.main import app
from streamloop.ml import registry_client
from streamloop.ml.registry_client import RawRecord, RegistryClient
from streamloop.serde import RegistryUnavailableError
from tests.unit.model_publisher.factories import candidate
from tests.unit.model_publisher.memory_registry import InMemoryRegistry, bootstrapped, new_candidates
from tests.unit.model_publisher.test_publisher import Harness


@pytest.fixture
def harness(demo_pipeline, tmp_path) -> Harness:
    return Harness(demo_pipeline, tmp_path)


def use(registry: InMemoryRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_commands, "_registry", lambda *_args, **_kwargs: registry)


def on_a_broker(registry: InMemoryRegistry, monkeypatch: pytest.MonkeyPatch,
                extra: dict[str, list[bytes]] | None = None) -> RegistryClient:
    """A client that reads what ``registry`` holds as a broker holds it, encoded, each role's ``extra`` bytes
    first, and writes into ``registry``."""

    class OnABroker(RegistryClient):
        signer = registry.signer  # the registry's keys, without its store

        def _produce(self, outputs: list[tuple[str, str, dict | None]]) -> None:
            registry._produce(outputs)

    client = OnABroker(registry.pipeline, registry.catalog, registry.kafka)
    roles = {registry.catalog[role].name: role for role in registry.topics}
    serde_for = client._serde_for  # the writers' serdes, whatever a test makes the client read with

    def read_raw(_kafka, topic: str, _timeout_s: float = 30.0, *, tail: int | None = None) -> list[RawRecord]:
        serde = serde_for(roles[topic])
        values = [("poison", value) for value in (extra or {}).get(roles[topic], [])]
        values += [(key, None if value is None else serde.encode(value))
                   for key, value in registry.topics[roles[topic]]]
        return [RawRecord(key, value, 0, offset) for offset, (key, value) in enumerate(values)]

    monkeypatch.setattr(registry_client, "read_raw", read_raw)
    monkeypatch.setattr(model_commands, "_registry", lambda *_args, **_kwargs: client)
    return client


def test_a_registry_record_that_cannot_be_decoded_is_left_out_and_said_in_one_line(harness, monkeypatch):
    # Written by a newer streamloop (a fingerprint this one does not know), on the decisions topic,
    # which keeps every record forever: before, every `streamloop models` command failed on it.
    registry, first = bootstrapped(harness)
    (a,) = new_candidates(harness, registry, 1)
    decisions = registry.catalog["model_decisions"].name
    on_a_broker(registry, monkeypatch, {"model_decisions": [b"\xc3\x01" + b"\x00" * 8 + b"x"]})
    runner = CliRunner()
    said = (f"streamloop: 1 registry record cannot be decoded or verified and was left out, as the services leave them "
            f"({decisions}: 1); the first: {decisions}[0]@")

    listing = runner.invoke(app, ["models", "list", "--json"])
    assert listing.exit_code == 0, listing.output
    assert first in listing.stdout and a in listing.stdout
    assert listing.stderr.startswith(said) and listing.stderr.count("\n") == 1, listing.stderr
    assert "fingerprint" in listing.stderr

    promoted = runner.invoke(app, ["models", "promote", a])
    assert promoted.exit_code == 0, promoted.output
    assert promoted.stderr.startswith(said) and promoted.stderr.endswith(f"promoted {a} (was {first})\n")
    assert runner.invoke(app, ["models", "rollback"]).stderr.endswith(f"rolled back to {first} (from {a})\n")
    assert runner.invoke(app, ["models", "show", a]).exit_code == 0


def test_a_schema_registry_that_does_not_answer_is_one_line(harness, monkeypatch):
    registry, _first = bootstrapped(harness)
    client = on_a_broker(registry, monkeypatch)

    class Unanswered:
        def decode(self, _value: bytes) -> dict:
            raise RegistryUnavailableError("schema id 3: registry lookup failed: connection refused")

    client._serde_for = lambda _role: Unanswered()
    for command in (["models", "list"], ["models", "show", "v"], ["models", "rollback"]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 1, result.output
        assert result.stderr == (f"streamloop: cannot decode {registry.catalog['model_deployments'].name}: "
                                 f"schema id 3: registry lookup failed: connection refused\n")


def test_rolling_back_again_goes_further_back_then_fails_in_one_line(harness, monkeypatch):
    registry, first = bootstrapped(harness)
    a, b = new_candidates(harness, registry, 2)
    registry.promote(a)
    registry.promote(b)
    use(registry, monkeypatch)
    runner = CliRunner()

    assert runner.invoke(app, ["models", "rollback"]).stderr == f"rolled back to {a} (from {b})\n"
    assert runner.invoke(app, ["models", "rollback"]).stderr == f"rolled back to {first} (from {a})\n"
    last = runner.invoke(app, ["models", "rollback"])
    assert last.exit_code == 1
    assert last.stderr == f"streamloop: nothing to roll back to: champion {first} has no predecessor\n"
    assert registry.champion()["version"] == first


def test_the_listing_keeps_every_version_whole_on_one_line_at_80_columns(harness, monkeypatch):
    champion = harness.bootstrap()
    challengers = [harness.shadow(parent=champion) for _ in range(2)]
    registry = InMemoryRegistry(harness.spec).add(harness.written)
    # A snapshot of a trained version, never deployed: its parent column holds a 32-character version too.
    challengers.append(registry.add_candidate(candidate(harness.spec, harness.store, parent=challengers[0],
                                                        created_ms=harness.now + 1000)))
    assert {len(v) for v in challengers} == {32}, "trained versions: <model>-<17-digit UTC stamp>-<8 hex>"
    use(registry, monkeypatch)

    listing = CliRunner().invoke(app, ["models", "list"], env={"COLUMNS": "80"})
    assert listing.exit_code == 0, listing.output
    lines = listing.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    for version in [champion, *challengers]:
        assert any(f"│ {version} " in line for line in lines), f"{version} is cut or wrapped:\n{listing.stdout}"


def test_re_sign_says_what_it_signed_again(harness, monkeypatch):
    from tests.unit.model_publisher.factories import SIGNING_KEY
    from tests.unit.model_publisher.test_registry_client import _signed_by_streamloop_0_1

    registry, first = bootstrapped(harness)
    _signed_by_streamloop_0_1(registry, SIGNING_KEY)
    registry.store = harness.store
    use(registry, monkeypatch)
    done = CliRunner().invoke(app, ["models", "re-sign"])
    assert done.exit_code == 0, done.output
    assert done.stderr == f"signed again champion {first}\n1 deployment signed again\n"
    again = CliRunner().invoke(app, ["models", "re-sign"])
    assert again.stderr == "0 deployments signed again\n"
    _signed_by_streamloop_0_1(registry, b"another-key-that-is-not-ours-0123", slot="shadow/not-ours")
    left = CliRunner().invoke(app, ["models", "re-sign"])
    assert left.exit_code == 1 and left.stderr.startswith(f"left shadow/not-ours {first}: ")


@pytest.mark.parametrize(("variable", "unreadable", "reason"), [
    ("SCORER_TLS_CA_FILE", "missing.pem", "No such file or directory"),
    ("SCORER_TLS_CLIENT_KEY_FILE", ".", "Is a directory"),
])
def test_score_with_an_unreadable_tls_file_fails_in_one_line_naming_the_variable(tmp_path, variable, unreadable,
                                                                                  reason):
    cert = tmp_path / "client.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    env = {"SCORER_TLS_CLIENT_CERT_FILE": str(cert), variable: str(tmp_path / unreadable)}
    result = CliRunner().invoke(app, ["score", "card-1", "--address", "127.0.0.1:1"], env=env)
    assert result.exit_code == 1
    assert result.stderr == f"streamloop: cannot read {variable} {tmp_path / unreadable}: {reason}\n"
