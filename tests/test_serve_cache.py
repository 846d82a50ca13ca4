"""The prefix state cache against a plain reference: longest-prefix lookups, least recently used
eviction by bytes, namespaces; over random operations, with many shared prefixes and edge splits."""

from __future__ import annotations

import random
from collections import OrderedDict

import torch

from rwkvkit.engine import Prefix
from rwkvkit.models.rwkv4 import RWKV4State
from rwkvkit.serve.cache import PrefixCache, prefix_bytes


def state_for(key: tuple[int, ...], n_layer: int = 1, width: int = 4) -> Prefix:
    """A prefix whose numbers name its key (so a wrong hit shows), and whose size varies with it."""
    value = float(hash(key) % 1000)
    t = torch.full((n_layer, 1, width), value)
    state = RWKV4State(t.clone(), t.clone(), t.clone(), t.clone(), t.clone())
    return Prefix(state, torch.full((1, 3 + len(key) % 3), value), len(key))


class Reference:
    """Every entry in a dict; lookups scan them all; eviction by an OrderedDict in use order."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.entries: OrderedDict[tuple[str, tuple[int, ...]], int] = OrderedDict()

    def lookup(self, tokens: tuple[int, ...], ns: str) -> int:
        found = [k for (n, k) in self.entries if n == ns and tokens[: len(k)] == k]
        if not found:
            return 0
        best = max(found, key=len)
        self.entries.move_to_end((ns, best))
        return len(best)

    def insert(self, tokens: tuple[int, ...], size: int, ns: str) -> None:
        if not tokens or size > self.capacity:
            return
        self.entries.pop((ns, tokens), None)
        self.entries[ns, tokens] = size
        while sum(self.entries.values()) > self.capacity:
            self.entries.popitem(last=False)


def test_the_cache_agrees_with_a_plain_reference_over_random_operations() -> None:
    rng = random.Random(0)
    bases = [tuple(rng.randrange(4) for _ in range(rng.randrange(1, 12))) for _ in range(6)]

    def key() -> tuple[int, ...]:  # keys that share prefixes often, so edges split and merge
        base = rng.choice(bases)
        return base[: rng.randrange(len(base) + 1)] + tuple(rng.randrange(4) for _ in range(rng.randrange(4)))

    size = prefix_bytes(state_for((1, 2, 3)))
    cache, ref = PrefixCache(capacity_bytes=size * 7), Reference(size * 7)
    for _ in range(4000):
        ns = rng.choice(["", "tuned"])
        k = key()
        if rng.random() < 0.45:
            prefix = state_for(k)
            cache.insert(k, prefix, ns)
            ref.insert(k, prefix_bytes(prefix), ns)
        else:
            n, found = cache.lookup(k, ns)
            assert n == ref.lookup(k, ns)
            if found is not None:
                assert found.tokens == n and torch.equal(found.state.wkv_num, state_for(k[:n]).state.wkv_num)
        assert cache.bytes == sum(ref.entries.values()) <= cache.capacity_bytes
        assert len(cache) == len(ref.entries)
    assert cache.stats.evictions > 100 and cache.stats.hits > 100 and cache.stats.misses > 10


def test_entries_are_private_copies_and_nodes_are_pruned() -> None:
    prefix = state_for((1, 2, 3))
    cache = PrefixCache(capacity_bytes=10 * prefix_bytes(state_for((5, 0, 0, 0))))
    cache.insert((1, 2, 3), prefix)
    prefix.state.wkv_num += 1  # the caller's tensors change: the cache's do not
    assert torch.equal(cache.lookup((1, 2, 3, 4))[1].state.wkv_num, state_for((1, 2, 3)).state.wkv_num)
    too_big = Prefix(prefix.state, torch.zeros(1, 10**6), 3)
    assert not cache.insert((9,), too_big) and cache.lookup((9,)) == (0, None)
    assert cache.lookup((), "other") == (0, None)
    for i in range(50):  # push everything else out: the trie must shrink back to the live keys
        cache.insert((5, i, i, i), state_for((5, i, i, i)))
    live = sum(1 for _ in _nodes(cache._roots[""])) - 1
    assert len(cache) == 10 and live <= 2 * len(cache)


def _nodes(node):  # every node under (and with) node
    yield node
    for child in node.children.values():
        yield from _nodes(child)
