"""The prefix state cache: RNN states at known token prefixes, found by longest prefix match.

An RNN's whole past is one fixed-size state, so a prompt that extends a prefix seen before needs
only its new tokens read: the server keeps the :class:`~rwkvkit.engine.Prefix` (state and
next-token logits) at prompt ends, at the prefill chunk boundaries of long prompts and after each
chat reply, and starts a new request from the longest one its prompt begins with.

The keys live in a radix trie (a trie whose edges carry runs of token ids, so a 10,000-token
prompt costs a handful of nodes, not 10,000); entries are evicted least recently used first
once their bytes pass the budget. Each namespace (a model variant with its own initial state)
has its own trie, and all share the one budget. Not thread-safe: the scheduler's thread owns it.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Sequence

from ..engine import Prefix


def prefix_bytes(prefix: Prefix) -> int:
    """What holding a prefix costs: its state tensors and its logits."""
    n = sum(t.numel() * t.element_size() for t in prefix.state.tensors().values())
    if prefix.logits is not None:
        n += prefix.logits.numel() * prefix.logits.element_size()
    return n


class _Node:
    __slots__ = ("children", "edge", "entry", "parent")

    def __init__(self, edge: tuple[int, ...], parent: _Node | None) -> None:
        self.edge = edge  # the token ids on the way in from the parent
        self.parent = parent
        self.children: dict[int, _Node] = {}  # first id of the child's edge -> child
        self.entry: Prefix | None = None


@dataclasses.dataclass
class CacheStats:
    hits: int = 0  # lookups that found a prefix
    misses: int = 0  # lookups that found none
    hit_tokens: int = 0  # prompt tokens the hits let requests skip
    inserts: int = 0
    evictions: int = 0


class PrefixCache:
    """Token-prefix -> :class:`Prefix`, least recently used out first past ``capacity_bytes``."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = max(0, int(capacity_bytes))
        self._roots: dict[str, _Node] = {}
        self._lru: OrderedDict[_Node, int] = OrderedDict()  # node with an entry -> its bytes
        self.bytes = 0
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._lru)

    def _root(self, namespace: str) -> _Node:
        if namespace not in self._roots:
            self._roots[namespace] = _Node((), None)
        return self._roots[namespace]

    def lookup(self, tokens: Sequence[int], namespace: str = "") -> tuple[int, Prefix | None]:
        """(n, prefix) for the longest cached prefix ``tokens[:n]``; (0, None) when none is cached."""
        tokens = tuple(tokens)
        node, i, best = self._roots.get(namespace), 0, None
        while node is not None:
            if node.entry is not None:
                best = (i, node)
            if i == len(tokens):
                break
            child = node.children.get(tokens[i])
            if child is None or tokens[i : i + len(child.edge)] != child.edge:
                break
            node, i = child, i + len(child.edge)
        if best is None:
            self.stats.misses += 1
            return 0, None
        n, node = best
        self._lru.move_to_end(node)
        self.stats.hits += 1
        self.stats.hit_tokens += n
        assert node.entry is not None
        return n, node.entry

    def insert(self, tokens: Sequence[int], prefix: Prefix, namespace: str = "") -> bool:
        """Keep ``prefix`` as the state after ``tokens`` (a private copy: a view into a batch's
        tensors would keep the whole batch alive). False when it alone is over the budget."""
        tokens = tuple(tokens)
        size = prefix_bytes(prefix)
        if not tokens or size > self.capacity_bytes:
            return False
        node = self._node_for(self._root(namespace), tokens)
        if node.entry is not None:
            self.bytes -= self._lru.pop(node)
        node.entry = prefix.clone()
        self._lru[node] = size
        self.bytes += size
        self.stats.inserts += 1
        while self.bytes > self.capacity_bytes:
            self._evict_oldest()
        return True

    def clear(self) -> None:
        self._roots.clear()
        self._lru.clear()
        self.bytes = 0

    def _node_for(self, root: _Node, tokens: tuple[int, ...]) -> _Node:
        """The node at exactly ``tokens``, splitting an edge or adding a leaf as needed."""
        node, i = root, 0
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                leaf = _Node(tokens[i:], node)
                node.children[tokens[i]] = leaf
                return leaf
            edge = child.edge
            k = _common_length(edge, tokens, i)
            if k < len(edge):  # split the edge: node -> mid (edge[:k]) -> child (edge[k:])
                mid = _Node(edge[:k], node)
                node.children[tokens[i]] = mid
                child.edge, child.parent = edge[k:], mid
                mid.children[edge[k]] = child
                child = mid
            node, i = child, i + k
        return node

    def _evict_oldest(self) -> None:
        node, size = self._lru.popitem(last=False)
        node.entry = None
        self.bytes -= size
        self.stats.evictions += 1
        self._prune(node)

    def _prune(self, node: _Node) -> None:
        """Remove entry-less leaves and merge entry-less single-child nodes into their child."""
        while node.parent is not None and node.entry is None:
            parent = node.parent
            if not node.children:
                del parent.children[node.edge[0]]
            elif len(node.children) == 1:
                (child,) = node.children.values()
                child.edge, child.parent = node.edge + child.edge, parent
                parent.children[node.edge[0]] = child
            else:
                return
            node = parent


def _common_length(edge: tuple[int, ...], tokens: tuple[int, ...], start: int) -> int:
    """How many leading ids ``edge`` shares with ``tokens[start:]``."""
    k, n = 0, min(len(edge), len(tokens) - start)
    while k < n and edge[k] == tokens[start + k]:
        k += 1
    return k
