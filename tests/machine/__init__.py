"""The auto settings and the allocator."""
