"""What every settings section is: a strict pydantic model (unknown keys refused), and a port field."""

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


Port = Field(ge=1, le=65535)
