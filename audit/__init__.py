"""Append-only audit log and domain events."""
