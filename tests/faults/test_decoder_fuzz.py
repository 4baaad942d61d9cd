"""The decoder under fuzzing: any bytes give an ``Event`` or an ``EventValidationError``, never
anything else, and the contract's verdict on each adversarial sample is the decoder's.

Pure (no services). ``FAULTS_LONG=1`` runs many more examples.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from schemas import Event, EventValidationError, decode_event, decode_event_batch
from tests.faults.adversarial import DEEP_NESTING, Sample, samples, valid_samples
from tests.faults.scale import size

FUZZ = hypothesis_settings(
    max_examples=size(1_500, 30_000),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: Batches cost a few samples each.
FUZZ_BATCHES = hypothesis_settings(FUZZ, max_examples=size(150, 5_000))


def verdict(body: bytes) -> bool:
    """True for an event, False for a validation error; anything else fails the test."""
    try:
        event = decode_event(body)
    except EventValidationError as error:
        assert error.reason, "a rejection must say why"
        return False
    assert isinstance(event, Event)
    return True


@FUZZ
@given(st.binary(max_size=2_000))
def test_random_bytes_decode_or_raise_the_validation_error(body: bytes) -> None:
    verdict(body)


@FUZZ
@given(samples())
def test_adversarial_samples_get_the_contracts_verdict(sample: Sample) -> None:
    assert verdict(sample.body) is sample.valid, f"{sample.category}: {sample.body[:300]!r}"


@FUZZ_BATCHES
@given(st.lists(samples(), max_size=5))
def test_an_ingest_batch_decodes_or_raises_the_validation_error(batch: list[Sample]) -> None:
    body = b"[" + b",".join(s.body for s in batch) + b"]"
    try:
        valid, invalid = decode_event_batch(body)
    except EventValidationError as error:
        assert error.reason
        return  # the array itself is not JSON (a corrupted item broke it)
    for event, raw in valid:
        assert decode_event(raw) == event
    indices = [index for index, _ in invalid]
    assert len(indices) == len(set(indices))


@FUZZ_BATCHES
@given(st.lists(valid_samples(), min_size=1, max_size=5))
def test_an_ingest_batch_of_valid_samples_keeps_every_item_as_sent(
    batch: list[Sample],
) -> None:
    valid, invalid = decode_event_batch(b"[" + b",".join(s.body for s in batch) + b"]")
    assert invalid == []
    assert [raw for _, raw in valid] == [s.body for s in batch]


def test_nesting_deeper_than_the_parser_takes_is_invalid_not_a_crash() -> None:
    deep = b"[" * DEEP_NESTING + b"]" * DEEP_NESTING
    event = (
        b'{"event_id":"3f2b8c1e-9a4d-4e6f-8b7a-0c1d2e3f4a5b","type":"friendship.adjusted",'
        b'"user_id":"alice","occurred_at":"2024-05-01T12:30:00+07:00",'
        b'"data":{"delta":1,"reason":"x"},"x_unknown":' + deep + b"}"
    )
    assert verdict(event) is False
    assert verdict(b'{"a":' * DEEP_NESTING + b"{}" + b"}" * DEEP_NESTING) is False
    with pytest.raises(EventValidationError):
        decode_event_batch(b"[" + event + b"]")
    valid, invalid = decode_event_batch(event)
    assert valid == [] and [index for index, _ in invalid] == [0]
