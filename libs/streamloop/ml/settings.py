"""Settings of the model registry's artifact store and signing keys (``STREAMLOOP_ARTIFACT_*``)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamloop.kafka.configuration import _read_secret_file
from streamloop.ml.artifacts import ArtifactSigner, ArtifactStore, store_directory
from streamloop.ml.deployment_signing import DeploymentVerifier
from streamloop.ml.exceptions import ArtifactStoreLocationError, SigningKeyError


class ArtifactSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STREAMLOOP_ARTIFACT_", frozen=True, extra="ignore")

    store: str = Field(default="file://./.streamloop/artifacts",
                       description="Directory of artifacts: a path or file URL; file://./dir is relative to the "
                                   "working directory, file:///dir absolute.")
    signing_key: SecretStr | None = Field(default=None, description="HMAC key; 'file:/path' reads it from a file.")
    signing_key_id: str = "default"
    previous_keys: dict[str, SecretStr] = Field(
        default_factory=dict, description="Retired keys still accepted, by id; 'file:/path' reads one from a file.")

    accept_unsigned_deployments: bool = Field(
        default=False, description="Apply deployment records that carry no signature (written before streamloop "
                                   "signed them): only while upgrading, until `streamloop models re-sign` has "
                                   "signed the deployed slots.")

    @field_validator("store")
    @classmethod
    def _a_local_directory(cls, value: str) -> str:
        # Said at startup, naming the variable, rather than when the store is first opened.
        try:
            store_directory(value)
        except ArtifactStoreLocationError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @field_validator("signing_key", mode="before")
    @classmethod
    def _secret_from_file(cls, value: Any) -> Any:
        return _read_secret_file(value)

    @field_validator("previous_keys", mode="before")
    @classmethod
    def _secrets_from_files(cls, value: Any) -> Any:
        # A retired key is as secret as the current one: it must not have to sit in the environment.
        return {key_id: _read_secret_file(key) for key_id, key in value.items()} if isinstance(value, dict) else value

    def signer(self) -> ArtifactSigner:
        if self.signing_key is None:
            raise SigningKeyError("no artifact signing key: set STREAMLOOP_ARTIFACT_SIGNING_KEY")
        keys = {k: v.get_secret_value().encode() for k, v in self.previous_keys.items()}
        keys[self.signing_key_id] = self.signing_key.get_secret_value().encode()
        return ArtifactSigner(keys, self.signing_key_id)

    def artifact_store(self) -> ArtifactStore:
        return ArtifactStore(self.store, self.signer())

    def deployment_verifier(self) -> DeploymentVerifier:
        """What a reader of the deployments table checks each record with (ml/deployment_signing.py)."""
        return DeploymentVerifier(self.signer(), accept_unsigned=self.accept_unsigned_deployments)
