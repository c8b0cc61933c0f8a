"""The identification page in a real browser."""
