"""From a folder of ``<class>/`` photos to batches: decoding, the scan, duplicate groups, the split and its
manifest and report, the label audit, the cached image arrays, the dataset, the Lightning data module and the
rendered demo set.

Imports ``files``, ``machine``, ``choices`` and ``progress_bars``: nothing of the stages after it.
"""
