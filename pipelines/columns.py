"""Names of the columns the programs add to a table: what the readers add and what the output holds.

The output of ``embed`` and ``reembed`` holds the id, ``EMBEDDING_COLUMN``, ``HASH_COLUMN`` and the
kept input columns. While a table travels through the pipeline it also carries ``SOURCE_COLUMN``
and ``POSITION_COLUMN`` (the file and the row or line a row was read from), which name a dead
letter's origin and are left out of the output. An input column with one of these names is refused.
"""

from __future__ import annotations

#: The vector of each row (``fixed_size_list<float32>[dim]``).
EMBEDDING_COLUMN = "embedding"
#: A hash of each row's text, to tell a changed text when re-embedding (``pipelines.content_hash``).
HASH_COLUMN = "text_hash"
#: The file a row was read from (dictionary-encoded; not written to the output).
SOURCE_COLUMN = "__source"
#: A row's position in its file: Parquet row or JSONL line (not written to the output).
POSITION_COLUMN = "__position"

#: Every column a run adds, in the order messages name them.
ADDED_COLUMNS = (EMBEDDING_COLUMN, HASH_COLUMN, SOURCE_COLUMN, POSITION_COLUMN)
