"""``chatstore worker --processes N``: a supervisor that runs N worker processes.

- ``child``: what the supervisor and a child agree on (the environment that
  marks a child, and how a child notices that its supervisor is gone);
- ``children``: the view of the children's metrics files, for /metrics and /readyz;
- ``supervisor``: starts the children, restarts those that die, forwards signals.

This package imports nothing heavy: ``worker.lifecycle`` imports ``child``
in every worker process.
"""
