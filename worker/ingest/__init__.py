"""The path every event takes, one module a step, in this order:

1. ``consumer``: takes deliveries from ``chatstore.events`` on one channel;
   its ``watchdog`` consumes again when deliveries stop while messages wait.
2. ``batch``: closes a batch by size, by age, or when nothing more waits.
3. ``flush``: decodes the batch, writes it, retries what is transient,
   isolates poison by halving, then settles every delivery.
4. ``store``: the batch in one transaction, every rule in SQL.
5. ``deadletter``: publishes refused events to the DLQ with their reason.
6. ``delivery``: what a delivery is and the tag that settles it, which ``flush``
   acknowledges only after the commit, or after the DLQ has confirmed.

``backoff`` paces retries and reconnects. Composed by ``worker.lifecycle``.
"""
