"""The snapshot store (exporter/snapshot.py): publish, remove, current, and staleness."""

from __future__ import annotations

import dataclasses
import math
import sys
import threading
from collections.abc import Iterator

import pytest

from exporter.snapshot import SnapshotStore, SourceState


def state(collector: str = "vllm", source: str = "a", *, up: bool = True,
          polls: int = 1, last_success_mono: float | None = None) -> SourceState:
    return SourceState(collector=collector, source=source, up=up,
                       data={"f": f"f{{source=\"{source}\"}} {polls}\n"}, health={},
                       last_success_mono=last_success_mono, polls=polls)


def test_publish_adds_and_replaces_by_collector_and_source() -> None:
    store = SnapshotStore()
    assert dict(store.current()) == {}
    a, b, gpu = state(source="a"), state(source="b"), state("gpu", "a")
    for s in (a, b, gpu):
        store.publish(s)
    # The key is (collector, source): the same source name under another collector is apart.
    assert dict(store.current()) == {("vllm", "a"): a, ("vllm", "b"): b, ("gpu", "a"): gpu}
    newer = state(source="a", polls=2)
    store.publish(newer)
    assert store.current()[("vllm", "a")] is newer
    assert store.current()[("vllm", "b")] is b and len(store.current()) == 3


def test_remove_drops_one_source_and_an_unknown_key_is_a_no_op() -> None:
    store = SnapshotStore()
    a, b = state(source="a"), state(source="b")
    store.publish(a)
    store.publish(b)
    store.remove(("vllm", "a"))
    assert dict(store.current()) == {("vllm", "b"): b}
    store.remove(("vllm", "a"))
    store.remove(("gpu", "b"))
    assert dict(store.current()) == {("vllm", "b"): b}


def test_a_returned_mapping_never_changes_afterwards() -> None:
    store = SnapshotStore()
    a, b = state(source="a"), state(source="b")
    store.publish(a)
    first = store.current()
    store.publish(b)
    store.publish(state(source="a", polls=2))
    second = store.current()
    store.remove(("vllm", "b"))
    assert dict(first) == {("vllm", "a"): a}
    assert set(second) == {("vllm", "a"), ("vllm", "b")} and second[("vllm", "a")].polls == 2
    assert set(store.current()) == {("vllm", "a")}


def test_a_state_is_frozen() -> None:
    s = state()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.up = False  # type: ignore[misc]
    assert s.key == ("vllm", "a")


@pytest.fixture
def frequent_switches() -> Iterator[None]:
    """Threads switched as often as the interpreter can: a publish's copy, change and swap
    interleave with another's, and only the store's lock keeps them apart."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


@pytest.mark.usefixtures("frequent_switches")
def test_readers_iterate_while_writers_publish_and_no_publish_is_lost() -> None:
    store = SnapshotStore()
    writers, each = 4, 300
    errors: list[BaseException] = []
    done = threading.Event()

    def write(n: int) -> None:
        for i in range(each):
            store.publish(state(source=f"w{n}-{i}"))
            if i % 3 == 0:
                store.remove(("vllm", f"w{n}-{i}"))

    def read() -> None:
        try:
            while not done.is_set():
                snapshot = store.current()
                # Iterating a mapping that a publish modified in place raises RuntimeError.
                for key, s in snapshot.items():
                    assert s.key == key
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    reader.join()
    assert errors == []
    expected = {("vllm", f"w{n}-{i}") for n in range(writers) for i in range(each) if i % 3}
    assert set(store.current()) == expected


def test_serves_data_while_up_or_down_up_to_the_stale_bound() -> None:
    stale_after = 60.0
    assert state(up=True).serves_data(1e9, stale_after)  # up: no last success needed
    assert not state(up=False).serves_data(0.0, stale_after)  # never succeeded
    down = state(up=False, last_success_mono=100.0)
    assert down.serves_data(100.0, stale_after)
    assert down.serves_data(160.0, stale_after)  # exactly at the bound: still served
    assert not down.serves_data(math.nextafter(160.0, math.inf), stale_after)
    assert not down.serves_data(1000.0, stale_after)
    assert state(up=True, last_success_mono=100.0).serves_data(1000.0, stale_after)
