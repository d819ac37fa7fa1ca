"""Archive steps."""
