"""Jobs, steps, versions, executions, chains, dependencies and schedules.

Layers, lowest first; a module imports only from its own layer or the ones below it:

1. models: ``jobs.models``, ``jobs.querysets`` (tables, named filters);
2. definitions and parts: ``jobs.definitions``, ``jobs.policy``, ``jobs.steps``, ``jobs.cron``,
   ``jobs.secrets``, ``jobs.paths``, ``jobs.errors`` and the pure engine helpers
   (``jobs.engine.context``, ``flow``, ``states``, ``workdirs``);
3. engine: ``jobs.engine.control`` (enqueue, claim, transitions), ``dispatch``, ``runner``,
   ``recovery`` and ``hooks``, the engine's registry of start checks and finish handlers;
4. orchestration: ``jobs.dependencies``, ``jobs.chains``, ``jobs.scheduling`` queue runs through
   the engine and react to runs that ended through ``jobs.engine.hooks`` (registered in
   ``JobsConfig.ready``), never by the engine importing them;
5. Celery tasks: ``jobs.tasks``; the engine sends its one task by name;
6. console and commands: ``jobs.admin``, ``jobs.management``, ``jobs.portability``, and the
   ``console`` app above every domain app.
"""
