"""Promotions on a running local stack are verified with its own key and store, not the shell's."""

from __future__ import annotations

import io
import json
import os
import threading
from types import SimpleNamespace

import pytest
from rich.console import Console
from typer.testing import CliRunner

from streamloop.cli import demo_command, model_commands
from streamloop.cli.main import app
from tests.conftest import DEMO_SPEC
from tests.unit.model_publisher.factories import SIGNING_KEY
from tests.unit.model_publisher.memory_registry import InMemoryRegistry, bootstrapped, new_candidates
from tests.unit.model_publisher.test_publisher import Harness


@pytest.fixture
def stack_dir(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A local stack's data directory, its models signed with its key, and a shell exporting another key and store."""
    (tmp_path / "signing.key").write_bytes(SIGNING_KEY)
    monkeypatch.setenv("STREAMLOOP_ARTIFACT_SIGNING_KEY", "a-cluster-key-that-signed-none-of-these")
    monkeypatch.setenv("STREAMLOOP_ARTIFACT_STORE", (tmp_path / "cluster-store").as_uri())
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    return tmp_path


def verified_with_the_given_store(registry: InMemoryRegistry, built: list):
    """RegistryClient as the command builds it: the registry, verifying with the store it is given."""
    def client(*_args, store=None, **_kwargs) -> InMemoryRegistry:
        built.append(store)
        registry.store = store
        return registry
    return client


def test_models_promote_on_a_running_local_stack_verifies_with_its_key(stack_dir, demo_pipeline, monkeypatch):
    harness = Harness(demo_pipeline, stack_dir / "artifacts")  # the stack's publisher, signing with its key
    registry, _first = bootstrapped(harness)
    [candidate] = new_candidates(harness, registry, 1)
    (stack_dir / "stack.json").write_text(json.dumps({
        "pipeline": str(DEMO_SPEC), "bootstrap_servers": "127.0.0.1:19092", "redis_url": "redis://127.0.0.1:1",
        "broker": "noida", "topic_prefix": "", "launcher_pid": os.getpid(), "services": []}))
    built: list = []
    monkeypatch.setattr(model_commands, "RegistryClient", verified_with_the_given_store(registry, built))
    monkeypatch.setattr(model_commands, "reachable_admin", lambda _settings: None)

    result = CliRunner().invoke(app, ["models", "promote", candidate, "-p", str(DEMO_SPEC),
                                      "--data-dir", str(stack_dir)])
    assert result.exit_code == 0, result.output
    assert registry.champion()["version"] == candidate
    assert built[0].root == (stack_dir / "artifacts").resolve()


def test_the_demos_bad_promotion_is_verified_with_the_stacks_key(stack_dir, demo_pipeline, monkeypatch):
    harness = Harness(demo_pipeline, stack_dir / "artifacts")
    registry, bootstrap = bootstrapped(harness)
    [trained] = new_candidates(harness, registry, 1)
    registry.promote(trained)
    built: list = []
    monkeypatch.setattr(demo_command, "RegistryClient", verified_with_the_given_store(registry, built))
    observed = SimpleNamespace(produced_at_ms={"e1": 0}, bad_promotion=None,
                               decisions=[{"kind": "PROMOTE", "from_version": bootstrap, "to_version": trained}])
    driver = SimpleNamespace(observed=observed, catalog=None, serde=None)
    stack = SimpleNamespace(data_dir=stack_dir, client_settings=lambda: None)
    said = io.StringIO()

    demo_command._promote_badly(driver, demo_pipeline, stack, Console(file=said), 1, threading.current_thread())
    assert observed.bad_promotion is not None, said.getvalue()
    assert f"promoted the untrained {bootstrap} by hand" in said.getvalue()
    assert registry.champion()["version"] == bootstrap
    assert built[0].root == (stack_dir / "artifacts").resolve()
