"""What only the ``chatstore`` command line runs, never the worker itself.

``dlq`` (inspect and replay dead letters), ``demo``, ``bench``, the
``progress`` bar, and ``sandbox``: a throwaway database and vhost, real
worker processes and waiting on state, shared by the bench and the tests.
The CLI imports each tool only when its command runs.
"""
