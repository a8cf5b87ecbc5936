"""PromptOrder: deterministic order, exact resume, epochs, state checks."""

from __future__ import annotations

import pytest

from megatron_hapo.data import PromptOrder


def take(order, n):
    return [order.next_batch() for _ in range(n)]


def test_same_seed_same_order_and_each_epoch_a_permutation():
    a, b = PromptOrder(10, 5, seed=7), PromptOrder(10, 5, seed=7)
    ba, bb = take(a, 6), take(b, 6)
    assert ba == bb
    for e in range(3):
        assert sorted(ba[2 * e] + ba[2 * e + 1]) == list(range(10))
    assert ba[0:2] != ba[2:4]  # a new permutation every epoch
    assert take(PromptOrder(10, 5, seed=8), 2) != ba[:2]


@pytest.mark.parametrize("stop_after", [0, 1, 2, 3, 5, 7])
@pytest.mark.parametrize("drop_last", [True, False])
def test_resume_reproduces_the_uninterrupted_run(stop_after, drop_last):
    ref = PromptOrder(11, 3, seed=1, drop_last=drop_last)
    expected = take(ref, 12)
    first = PromptOrder(11, 3, seed=1, drop_last=drop_last)
    got = take(first, stop_after)
    state = dict(first.state_dict())  # what goes into a checkpoint
    resumed = PromptOrder(11, 3, seed=1, drop_last=drop_last)
    resumed.load_state_dict(state)
    got += take(resumed, 12 - stop_after)
    assert got == expected


def test_drop_last_skips_the_short_tail_and_epochs_advance():
    s = PromptOrder(7, 3, seed=0)
    assert s.batches_per_epoch == 2
    take(s, 2)
    assert s.epoch == 0 and s.epoch_of_next_batch() == 1
    s.next_batch()
    assert s.epoch == 1 and s.position == 3
    short = PromptOrder(7, 3, seed=0, drop_last=False)
    assert short.batches_per_epoch == 3 and [len(b) for b in take(short, 4)] == [3, 3, 1, 3]


def test_no_shuffle_is_sequential():
    s = PromptOrder(5, 2, shuffle=False, drop_last=False)
    assert take(s, 4) == [[0, 1], [2, 3], [4], [0, 1]]


def test_state_mismatch_is_an_error():
    s = PromptOrder(10, 2, seed=3)
    state = s.state_dict()
    with pytest.raises(ValueError, match="num_items=10 but this run has 11"):
        PromptOrder(11, 2, seed=3).load_state_dict(state)
    with pytest.raises(ValueError, match="data.seed"):
        PromptOrder(10, 2, seed=4).load_state_dict(state)
    PromptOrder(10, 5, seed=3).load_state_dict(state)  # batch size may change


def test_invalid_arguments():
    with pytest.raises(ValueError, match="larger than the dataset"):
        PromptOrder(3, 4)
    with pytest.raises(ValueError, match="empty"):
        PromptOrder(0, 1)
