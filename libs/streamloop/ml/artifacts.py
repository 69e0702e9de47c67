"""The artifact store: content-addressed, signed model files; nothing unverified is unpickled.

Artifacts (3-80 MB for tree ensembles) never travel inside Kafka records: the registry topic
carries an ``ArtifactRef`` (URI, SHA-256, HMAC signature) and the bytes live in a store that every
service can read. The store here is a directory (``file://``), a shared volume in production;
the interface is small enough for an object-store backend.

The signature covers the digest *and* the identity the artifact is published as (pipeline, model,
version), so a writer of the registry topics cannot relabel a signed model: not as another
version, nor as another pipeline's model.

Verification order matters: the digest is checked against the reference and the signature over
digest and identity is checked with the configured key *before* ``pickle.loads`` sees the bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pickle
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from streamloop.ml.exceptions import (
    ArtifactIntegrityError,
    ArtifactLoadError,
    ArtifactNotFoundError,
    ArtifactStoreLocationError,
    SigningKeyError,
)

_MIN_KEY_BYTES = 16
# Far above any model we build (tree ensembles are 3-80 MB); a reference claiming more is refused unread.
MAX_ARTIFACT_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class ArtifactIdentity:
    """What an artifact is published as; its signature binds this, not only the bytes."""

    pipeline: str
    model_name: str
    version: str

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> ArtifactIdentity:
        """The identity a candidate or deployment record claims for its artifact."""
        return cls(str(record["pipeline"]), str(record["model_name"]), str(record["version"]))

    def __str__(self) -> str:
        return f"{self.pipeline}/{self.model_name} {self.version}"


@dataclass(frozen=True)
class StoredArtifact:
    """Bytes in the store, not yet signed as any version (a version's name may need the digest)."""

    uri: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class ArtifactRef:
    uri: str
    sha256: str
    signature: str
    key_id: str
    size_bytes: int

    def to_record(self) -> dict[str, Any]:
        return {"uri": self.uri, "sha256": self.sha256, "signature": self.signature,
                "key_id": self.key_id, "size_bytes": self.size_bytes}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ArtifactRef:
        return cls(record["uri"], record["sha256"], record["signature"], record.get("key_id", "default"),
                   int(record["size_bytes"]))


class ArtifactSigner:
    """HMAC-SHA256 over the artifact's SHA-256 digest and identity, with named keys so keys rotate."""

    def __init__(self, keys: dict[str, bytes], active_key_id: str) -> None:
        for key_id, key in keys.items():
            if len(key) < _MIN_KEY_BYTES:
                raise SigningKeyError(f"signing key {key_id!r} is shorter than {_MIN_KEY_BYTES} bytes")
        if active_key_id not in keys:
            raise SigningKeyError(f"no signing key with id {active_key_id!r}")
        self._keys = keys
        self.active_key_id = active_key_id

    def sign(self, digest: str, identity: ArtifactIdentity, key_id: str | None = None) -> str:
        return self.sign_message(_signed_message(digest, identity), key_id)

    def verify(self, digest: str, identity: ArtifactIdentity, signature: str, key_id: str) -> None:
        if not self.knows(key_id):
            raise ArtifactIntegrityError(f"artifact signed with unknown key {key_id!r}")
        if self.message_verifies(_signed_message(digest, identity), signature, key_id):
            return
        if self.signed_content_only(digest, signature, key_id):
            raise ArtifactIntegrityError(f"artifact signature covers its content but not an identity (signed by "
                                         f"streamloop 0.1); it is not loaded as {identity}: run `streamloop models "
                                         f"re-sign` to sign the deployed slots again (a version that is not "
                                         f"deployed must be published again)")
        raise ArtifactIntegrityError(f"artifact signature does not verify for {identity}")

    def sign_message(self, message: bytes, key_id: str | None = None) -> str:
        """HMAC of another signed message with the same keys (a deployment record's: ml/deployment_signing.py).

        Its first element names what it is (``streamloop-deployment/1``), as an artifact's names
        ``streamloop-artifact/2``, so no signature of one kind verifies as the other.
        """
        return _hmac(self._keys[key_id or self.active_key_id], message)

    def knows(self, key_id: str) -> bool:
        return key_id in self._keys

    def message_verifies(self, message: bytes, signature: str, key_id: str) -> bool:
        key = self._keys.get(key_id)
        return key is not None and _hex_matches(_hmac(key, message), signature)

    def signed_content_only(self, digest: str, signature: str, key_id: str) -> bool:
        """Whether ``signature`` is streamloop 0.1's, over the digest alone, made with one of our keys."""
        return self.message_verifies(digest.encode(), signature, key_id)


def _signed_message(digest: str, identity: ArtifactIdentity) -> bytes:
    # A JSON array cannot be read two ways, whatever characters the names hold.
    return json.dumps(["streamloop-artifact/2", identity.pipeline, identity.model_name, identity.version,
                       digest]).encode()


def _hmac(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _hex_matches(expected: str, claimed: str) -> bool:
    """``expected == claimed`` in constant time, for a hex digest we computed and one a record claims.

    The claim comes from a topic and may hold any text: one that is not ASCII (on which
    ``hmac.compare_digest`` raises TypeError) simply does not match, so the caller raises its
    ArtifactIntegrityError as for any other wrong value.
    """
    return isinstance(claimed, str) and claimed.isascii() and hmac.compare_digest(expected, claimed)


def _holds(path: Path, size: int, digest: str) -> bool:
    """Whether ``path`` is a regular file of ``size`` bytes whose SHA-256 is ``digest``."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode) or info.st_size != size:
            return False
        sha256 = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                sha256.update(chunk)
    except OSError:
        return False
    return sha256.hexdigest() == digest


def store_directory(location: str | Path) -> Path:
    """The directory a store location names: a path, or a ``file:`` URL.

    ``file:///abs`` (and ``file:/abs``, ``file://localhost/abs``) is absolute; ``file://./rel`` and
    ``file:rel`` are relative to the working directory, like the path ``rel``. (Read as a URL,
    ``file://./rel`` names the host ``.``, and its path alone made the default store
    ``/.streamloop/artifacts`` at the filesystem root.) A file URL naming another host is refused:
    the store is a local directory, a shared volume in production.
    """
    if isinstance(location, Path) or not location.startswith("file:"):
        return Path(location)
    parsed = urlparse(location)
    if parsed.netloc in ("", "localhost"):
        return Path(parsed.path or ".")
    if parsed.netloc == ".":
        return Path("." + parsed.path)
    raise ArtifactStoreLocationError(
        f"artifact store {location!r} names the host {parsed.netloc!r}; the store is a local directory: "
        "file:///absolute/path, or file://./relative/path (relative to the working directory)")


class ArtifactStore:
    """A directory of artifacts named by their SHA-256."""

    def __init__(self, root: str | Path, signer: ArtifactSigner) -> None:
        self.root = store_directory(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.signer = signer

    def store_bytes(self, data: bytes) -> StoredArtifact:
        """Store ``data`` under its SHA-256; a copy already there is kept only if it still holds them.

        A damaged copy (truncated, overwritten) was trusted by its name: never repaired, and every
        reference signed to the same bytes again (the deterministic bootstrap model's) failed to
        verify. It is written again, as a missing one is.
        """
        digest = hashlib.sha256(data).hexdigest()
        path = self.root / f"{digest}.pkl"
        if not _holds(path, len(data), digest):
            # Write then rename, so a reader never sees a half-written artifact.
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.replace(tmp, path)
            except BaseException:
                # A failed write (a full disk) would otherwise leave its partial copy behind at every retry.
                Path(tmp).unlink(missing_ok=True)
                raise
        return StoredArtifact(path.resolve().as_uri(), digest, len(data))

    def store_model(self, model: Any) -> StoredArtifact:
        return self.store_bytes(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))

    def sign(self, stored: StoredArtifact, identity: ArtifactIdentity, key_id: str | None = None) -> ArtifactRef:
        """A reference to ``stored`` signed for ``identity`` with ``key_id`` (default: the active key)."""
        key_id = key_id or self.signer.active_key_id
        return ArtifactRef(stored.uri, stored.sha256, self.signer.sign(stored.sha256, identity, key_id), key_id,
                           stored.size_bytes)

    def put_model(self, model: Any, identity: ArtifactIdentity) -> ArtifactRef:
        return self.sign(self.store_model(model), identity)

    def get_verified_bytes(self, ref: ArtifactRef, identity: ArtifactIdentity) -> bytes:
        """The artifact's bytes once their SHA-256 matches the reference and its HMAC verifies for ``identity``."""
        data = self._bytes_matching(ref)
        self.signer.verify(ref.sha256, identity, ref.signature, ref.key_id)
        return data

    def _bytes_matching(self, ref: ArtifactRef) -> bytes:
        """The referenced bytes, once their SHA-256 matches the reference; the signature is not checked here.

        The reference comes from a topic, so it is not trusted either: only a regular file of exactly
        ``size_bytes`` (at most MAX_ARTIFACT_BYTES) is read, so a URI naming ``/dev/zero``, a FIFO
        or a huge file costs nothing.
        """
        if urlparse(ref.uri).scheme not in ("", "file"):
            raise ArtifactNotFoundError(f"artifact {ref.uri}: only file:// artifacts are supported")
        # store_bytes writes the URI with Path.as_uri(), which percent-encodes a space or a non-ASCII name.
        path = Path(unquote(urlparse(ref.uri).path))
        if not 0 <= ref.size_bytes <= MAX_ARTIFACT_BYTES:
            raise ArtifactIntegrityError(f"artifact {ref.uri} claims {ref.size_bytes} bytes")
        try:
            info = path.stat()
            if not stat.S_ISREG(info.st_mode):
                raise ArtifactIntegrityError(f"artifact {ref.uri} is not a regular file")
            if info.st_size != ref.size_bytes:
                raise ArtifactIntegrityError(f"artifact {ref.uri} content hash does not match its reference "
                                             f"({info.st_size} bytes, the reference says {ref.size_bytes})")
            with path.open("rb") as handle:
                data = handle.read(ref.size_bytes + 1)
        except OSError as exc:
            raise ArtifactNotFoundError(f"artifact {ref.uri} cannot be read: {exc.strerror}") from exc
        except ValueError as exc:
            # A path no file can have (an encoded NUL, %00): raised as is, it got past every reader's
            # ModelError handling, and a retrainer whose champion named one crash-looped.
            raise ArtifactNotFoundError(f"artifact {ref.uri} names no file: {exc}") from exc
        digest = hashlib.sha256(data).hexdigest()
        if not _hex_matches(digest, ref.sha256):
            raise ArtifactIntegrityError(f"artifact {ref.uri} content hash does not match its reference")
        return data

    def sign_again(self, ref: ArtifactRef, identity: ArtifactIdentity) -> ArtifactRef | None:
        """A streamloop 0.1 reference (signed over the digest alone) signed again for ``identity``.

        None when ``ref`` already verifies for ``identity``. The bytes are read and hashed, and the
        old signature must verify with one of the configured keys, so this never signs what we did
        not sign before; it does bind whatever identity the caller names (the caller checks it).
        The new signature is made with the old one's key, so retiring that key still retires it.
        """
        self._bytes_matching(ref)
        if self.signer.signed_content_only(ref.sha256, ref.signature, ref.key_id):
            return self.sign(StoredArtifact(ref.uri, ref.sha256, ref.size_bytes), identity, ref.key_id)
        self.signer.verify(ref.sha256, identity, ref.signature, ref.key_id)  # current, or refused as any reader would
        return None

    def load_model(self, ref: ArtifactRef, identity: ArtifactIdentity) -> Any:
        """The model, once its bytes verify; ArtifactLoadError when they do not unpickle with the installed code.

        A verified artifact that does not load is a model written by other code: river moved or
        renamed a class since (ModuleNotFoundError, AttributeError). Wrapped, it is a ModelError
        like a failed check, which every reader handles by keeping what it has.
        """
        data = self.get_verified_bytes(ref, identity)
        try:
            return pickle.loads(data)  # noqa: S301 - hash and HMAC signature verified just above
        except Exception as exc:  # noqa: BLE001 - unpickling runs the pickled classes' code, which can raise anything
            raise ArtifactLoadError(f"artifact {ref.uri} verifies as {identity} but does not load with the installed "
                                    f"code: {type(exc).__name__}: {exc}") from exc

    def load_published(self, record: Mapping[str, Any]) -> Any:
        """The model of a candidate or deployment record, verified as the version the record names."""
        return self.load_model(ArtifactRef.from_record(record["artifact"]), ArtifactIdentity.of(record))
