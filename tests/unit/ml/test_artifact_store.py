"""Where the artifact store lives, what a failed write leaves behind, and what a failed load raises."""

from __future__ import annotations

import errno
import io
import pickle
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import ValidationError

from streamloop.ml import ArtifactIdentity, ArtifactSigner, ArtifactStore
from streamloop.ml import artifacts as artifacts_module
from streamloop.ml.exceptions import (
    ArtifactLoadError,
    ArtifactNotFoundError,
    ArtifactStoreLocationError,
    ModelError,
)
from streamloop.ml.settings import ArtifactSettings
from streamloop.service.settings_errors import describe_validation_error

KEY = "unit-test-signing-key-0123456789"


def signer() -> ArtifactSigner:
    return ArtifactSigner({"default": KEY.encode()}, "default")


def test_the_default_store_is_relative_to_the_working_directory(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    store = ArtifactSettings(signing_key=KEY).artifact_store()
    stored = store.store_bytes(b"model")
    assert Path(stored.uri.removeprefix("file://")).parent == tmp_path / ".streamloop" / "artifacts"


@pytest.mark.parametrize("location", ["file://./stores/a", "file:stores/a", "file:./stores/a", "stores/a"])
def test_relative_locations_are_under_the_working_directory(monkeypatch, tmp_path: Path, location: str) -> None:
    monkeypatch.chdir(tmp_path)
    assert ArtifactStore(location, signer()).root.resolve() == tmp_path / "stores" / "a"


@pytest.mark.parametrize("form", ["file://{path}", "file:{path}", "file://localhost{path}", "{path}"])
def test_absolute_locations_stay_absolute(tmp_path: Path, form: str) -> None:
    assert ArtifactStore(form.format(path=tmp_path / "abs"), signer()).root == tmp_path / "abs"


def test_a_file_url_naming_another_host_is_refused_naming_the_variable() -> None:
    with pytest.raises(ArtifactStoreLocationError, match="names the host 'fileserver'"):
        ArtifactStore("file://fileserver/artifacts", signer())
    with pytest.raises(ValidationError) as caught:
        ArtifactSettings(store="file://fileserver/artifacts", signing_key=KEY)
    line = describe_validation_error(caught.value, ArtifactSettings)
    assert line.startswith("store (STREAMLOOP_ARTIFACT_STORE): ") and "names the host 'fileserver'" in line


class _FullDisk(io.FileIO):
    def write(self, _data) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_write_leaves_no_temporary_file(monkeypatch, tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts", signer())
    monkeypatch.setattr(artifacts_module.os, "fdopen", lambda fd, mode: _FullDisk(fd, mode))
    with pytest.raises(OSError, match="No space left"):
        store.store_bytes(b"model")
    assert list(store.root.iterdir()) == []


@pytest.mark.parametrize("damage", [lambda data: b"x" * len(data), lambda data: data[:-1], lambda data: b""],
                         ids=["same-size", "truncated", "empty"])
def test_storing_bytes_again_repairs_a_damaged_copy(tmp_path: Path, damage) -> None:
    # The copy was trusted by its name: storing the same bytes again (the deterministic bootstrap
    # model) signed a reference that never verified.
    store = ArtifactStore(tmp_path / "artifacts", signer())
    identity = ArtifactIdentity("card-fraud", "fraud", "v1")
    data = pickle.dumps({"model": 1})
    stored = store.store_bytes(data)
    path = Path(stored.uri.removeprefix("file://"))
    path.write_bytes(damage(data))
    ref = store.sign(store.store_bytes(data), identity)
    assert store.load_model(ref, identity) == {"model": 1}
    assert path.read_bytes() == data and [p.name for p in store.root.iterdir()] == [path.name], "no temporary left"


def test_an_intact_copy_is_not_written_again(tmp_path: Path, monkeypatch) -> None:
    store = ArtifactStore(tmp_path / "artifacts", signer())
    store.store_bytes(b"model")
    monkeypatch.setattr(artifacts_module.os, "replace", lambda *_args: pytest.fail("an intact copy was replaced"))
    assert store.store_bytes(b"model").size_bytes == 5


@pytest.mark.parametrize("directory", ["with space", "modèles"])
def test_a_store_whose_path_needs_percent_encoding_reads_its_artifacts_back(tmp_path: Path, directory: str) -> None:
    from river import linear_model

    from streamloop.ml import ArtifactIdentity

    store = ArtifactStore(tmp_path / directory, signer())
    identity = ArtifactIdentity("card-fraud", "fraud", "v1")
    ref = store.put_model(linear_model.LogisticRegression(), identity)
    assert "%" in ref.uri, "the URI is percent-encoded"
    assert isinstance(store.load_model(ref, identity), linear_model.LogisticRegression)


def test_a_uri_naming_no_possible_file_is_an_artifact_not_found(tmp_path: Path) -> None:
    """An encoded NUL made ``stat()`` raise ValueError, which no reader handles as a ModelError."""
    store = ArtifactStore(tmp_path / "artifacts", signer())
    identity = ArtifactIdentity("card-fraud", "fraud", "v1")
    ref = store.put_model({"a": 1}, identity)
    hostile = replace(ref, uri=ref.uri + "%00")
    with pytest.raises(ArtifactNotFoundError, match=r"names no file: embedded null byte") as caught:
        store.load_model(hostile, identity)
    assert isinstance(caught.value, ModelError)


def pickled_from_a_module_gone_since(name: str) -> bytes:
    """Bytes pickled from a class whose module no longer exists, as after a library upgrade renamed it."""
    module = types.ModuleType(name)
    gone = type("Gone", (), {"__module__": name})
    module.Gone = gone
    sys.modules[name] = module
    try:
        return pickle.dumps(gone())
    finally:
        del sys.modules[name]


@pytest.mark.parametrize(("data", "cause"), [
    (pickled_from_a_module_gone_since("river_before_the_upgrade"), ModuleNotFoundError),
    (pickle.dumps(ArtifactSigner).replace(b"ArtifactSigner", b"ArtifactSignor"), AttributeError),
    (b"\x80\x05not a pickle", pickle.UnpicklingError),
], ids=["module-gone", "class-gone", "not-a-pickle"])
def test_a_verified_artifact_that_does_not_unpickle_is_a_load_error(tmp_path: Path, data: bytes, cause) -> None:
    store = ArtifactStore(tmp_path / "artifacts", signer())
    identity = ArtifactIdentity("card-fraud", "fraud", "fraud-20990101000000000-00000001")
    ref = store.sign(store.store_bytes(data), identity)
    with pytest.raises(ArtifactLoadError, match="does not load with the installed code") as caught:
        store.load_model(ref, identity)
    assert isinstance(caught.value, ModelError) and isinstance(caught.value.__cause__, cause)
