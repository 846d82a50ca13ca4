"""``rwkvkit bench`` and benchmarks/: the machine, the contenders (ours and the peers), timing in interleaved rounds, tables."""
