"""File steps."""
