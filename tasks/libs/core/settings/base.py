"""What every settings section is built from: a strict model, a port, an absolute path.

A section is a StrictModel: an unknown key is refused (the loader turns that into a
did-you-mean), and numbers given where text is expected are taken as text (`database: 123`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

PROJECT_ROOT = Path(__file__).resolve().parents[4]  # tasks/libs/core/settings/base.py -> the checkout


class StrictModel(BaseModel):
    """A settings section: unknown keys refused, numbers coerced to text where text is expected."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


Port = Field(ge=1, le=65535)


def _absolute(value: str) -> str:
    expanded = os.path.expanduser(value)
    if not os.path.isabs(expanded):
        raise ValueError(f"{value!r} is relative; give an absolute path or leave it null")
    return expanded


# A file or folder named in config, ~ expanded: relative paths would depend on where `inv` runs.
AbsolutePath = Annotated[str, AfterValidator(_absolute)]
