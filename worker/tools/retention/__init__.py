"""Retention: ``chatstore archive`` closes idle conversations, ``chatstore purge`` deletes
archived ones. Both report in JSON and stop cleanly on SIGINT or SIGTERM."""
