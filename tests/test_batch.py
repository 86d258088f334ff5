"""The batch-closing rules, without a broker."""

from __future__ import annotations

import pytest

from worker.ingest.batch import BatchPolicy, Pending

POLICY = BatchPolicy(max_size=3, max_wait_s=0.05)


def test_a_batch_stays_open_while_deliveries_keep_waiting() -> None:
    assert not POLICY.is_closed(size=1, age_s=0.0, waiting=5)
    assert not POLICY.is_closed(size=2, age_s=0.049, waiting=1)


def test_a_full_batch_closes_even_with_more_waiting() -> None:
    assert POLICY.is_closed(size=3, age_s=0.0, waiting=100)


def test_a_batch_closes_after_the_maximum_wait_even_with_more_waiting() -> None:
    assert POLICY.is_closed(size=1, age_s=0.05, waiting=100)


def test_a_lone_event_is_not_held_back() -> None:
    assert POLICY.is_closed(size=1, age_s=0.0, waiting=0)


@pytest.mark.parametrize(("max_size", "max_wait_s"), [(0, 0.1), (1, -1.0)])
def test_a_nonsensical_policy_is_refused(max_size: int, max_wait_s: float) -> None:
    with pytest.raises(ValueError, match="max_"):
        BatchPolicy(max_size=max_size, max_wait_s=max_wait_s)


def test_pending_hands_out_the_oldest_first_and_no_more_than_asked() -> None:
    pending: Pending[int] = Pending()
    for item in range(5):
        pending.add(item)
    assert pending.take(2) == [0, 1]
    assert pending.take(10) == [2, 3, 4]
    assert pending.take(1) == []
    assert len(pending) == 0


def test_take_all_empties_pending() -> None:
    pending: Pending[str] = Pending()
    pending.add("a")
    pending.add("b")
    assert pending.take_all() == ["a", "b"]
    assert len(pending) == 0
