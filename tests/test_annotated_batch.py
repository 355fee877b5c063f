"""Batches the library builds with ``annotated_batch`` are ordinary, frozen ``AnnotatedBatch`` values."""

from __future__ import annotations

import dataclasses

import pyarrow as pa
import pytest

from vgi_flight import AnnotatedBatch
from vgi_flight._streams import annotated_batch

BATCH = pa.record_batch({"x": [1, 2]})
META = pa.KeyValueMetadata({"k": "v"})


@pytest.mark.parametrize("meta", [None, META])
def test_same_value_as_the_dataclass_constructor(meta: pa.KeyValueMetadata | None) -> None:
    built = annotated_batch(BATCH, meta)
    assert type(built) is AnnotatedBatch
    assert built == AnnotatedBatch(BATCH, meta)
    assert repr(built) == repr(AnnotatedBatch(BATCH, meta))
    assert dataclasses.astuple(built) == (BATCH, meta)
    assert dataclasses.replace(built, custom_metadata=META).custom_metadata == META


def test_frozen() -> None:
    built = annotated_batch(BATCH)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.batch = BATCH  # type: ignore[misc]
    assert built.custom_metadata is None
