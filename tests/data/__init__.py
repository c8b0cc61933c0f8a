"""Scan, duplicates, splits, the data report and the fast data path."""
