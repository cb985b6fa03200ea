"""Short-lived SQLAlchemy engines for the lifecycle's own stores (scratch copies, targets)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import sqlalchemy as sa
from sqlalchemy.pool import NullPool


@contextlib.contextmanager
def engine_for(uri: str) -> Iterator[sa.Engine]:
    """An engine without a pool (no connection outlives its use), disposed at the end of the block."""
    engine = sa.create_engine(uri, poolclass=NullPool)
    try:
        yield engine
    finally:
        engine.dispose()
