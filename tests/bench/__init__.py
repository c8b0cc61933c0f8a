"""The benchmark's measuring processes."""
