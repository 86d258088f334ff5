"""``chatstore bench``: ingest, latency, reads and memory, measured on the local services.

Scenarios, all in a database and vhost of the bench's own (see
``worker.tools.sandbox``), which it removes at the end:

- (a) ``raw``: consume and ack a pre-filled queue doing nothing else;
- (b) ``naive``: one transaction and one ack per event;
- (c) ``worker``: real ``chatstore worker`` processes, 1 and then 2;
- (d) ``latency``: publish-to-commit at a fixed publish rate;
- (e) ``reads``: repository read latency with concurrent readers;
- (f) ``rss``: the worker's peak memory while a large backlog waits.

The CLI builds the subcommand with ``options.add_arguments`` and, only when
``chatstore bench`` runs, imports ``command.run`` to execute it.
"""
