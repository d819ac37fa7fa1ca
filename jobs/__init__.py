"""Jobs, steps, versions, executions, chains, dependencies and schedules."""
