"""Integrations with workflow engines: one call turns the engine's own runs, jobs, nodes,
tasks and retries into flowtrail spans and records.

Each engine has its own module, imported on its own (``import
flowtrail.integrations.pocketflow``); importing this package imports no engine.
"""
