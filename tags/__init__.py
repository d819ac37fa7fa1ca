"""Tags attached to jobs, chains, connections, keys and monitors."""
