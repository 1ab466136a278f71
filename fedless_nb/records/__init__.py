"""What a run leaves behind: history (SQLite through sqlite-utils), cost (prices rows; knows nothing of the
History class) and memory (process-tree sampling for benchmarks).

It may import rounds.events (what it records); the controller never imports it.
"""
