"""File monitors that watch local or remote directories and trigger jobs."""
