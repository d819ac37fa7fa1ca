"""The jobs console: definitions, executions, schedules, dependencies and chains."""

from jobs.admin import chains, definitions, executions, schedules  # noqa: F401 - registers the admins
