"""DatasetBuilder: raw pairs in, validated, leak-free train/dev/test splits out.

Sources: a local CSV/TSV/JSONL/Parquet file (optionally gzipped), a Hugging Face
dataset id, a pandas DataFrame, or a list of dicts or ``(text1, text2, label)``
tuples. Texts linked by any pair form connected components, and a component never
crosses splits, so no text appears in two splits, even transitively::

    >>> from embedft import DatasetBuilder
    >>> rows = [(f"question {i}", f"same question {i}", i % 2) for i in range(40)]
    >>> built = DatasetBuilder(splits={"train": 0.6, "dev": 0.2, "test": 0.2}, cache=False).build(rows)
    >>> sum(built.report.leakage.values())
    0
    >>> len(built.train) + len(built.dev) + len(built.test)
    40

The steps live in submodules: :mod:`~embedft.data.loading` (sources and file formats),
:mod:`~embedft.data.cleaning` (the text key, labels, scores, the column mapping),
:mod:`~embedft.data.splitting` (groups, assignment, checks, warnings),
:mod:`~embedft.data.built` (the result and its report) and :mod:`~embedft.data.builder`.
"""

from embedft.data.builder import DatasetBuilder
from embedft.data.built import BuiltDataset, DataReport, SplitStats
from embedft.data.cleaning import MAX_TEXT_CHARS, normalize_text
from embedft.data.splitting import MAX_CONFLICT_SHARE, MIN_EVAL_PAIRS, SPLITS, connected_components
from embedft.readers import read_guard

__all__ = ["DatasetBuilder", "BuiltDataset", "DataReport", "SplitStats", "normalize_text", "connected_components", "read_guard"]
__all__ += ["SPLITS", "MIN_EVAL_PAIRS", "MAX_CONFLICT_SHARE", "MAX_TEXT_CHARS"]
