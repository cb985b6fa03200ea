"""The `artifacts` section: a local folder or an S3 bucket, in one of MLflow's three modes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from tasks.libs.core.settings.base import Port, StrictModel


class S3Settings(StrictModel):
    provider: Literal["embedded", "external"]
    bucket: str = Field(min_length=3, max_length=63)
    prefix: str
    endpoint_url: str | None
    region: str
    host: str
    port: int = Port
    access_key_id: SecretStr | None
    secret_access_key: SecretStr | None
    start_timeout: float = Field(gt=0)

    @field_validator("prefix")
    @classmethod
    def _relative_prefix(cls, value: str) -> str:
        return value.strip("/")


class ArtifactsServerSettings(StrictModel):
    port: int = Port
    workers: int = Field(ge=1, le=64)


class ArtifactsSettings(StrictModel):
    store: Literal["local", "s3"]
    mode: Literal["proxied", "direct", "split"]
    s3: S3Settings
    artifacts_server: ArtifactsServerSettings

    @model_validator(mode="after")
    def _local_is_proxied(self) -> ArtifactsSettings:
        if self.store == "local" and self.mode != "proxied":
            raise ValueError(f"artifacts.mode {self.mode!r} needs artifacts.store s3; local artifacts are proxied")
        return self
