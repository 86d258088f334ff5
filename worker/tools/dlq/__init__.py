"""Operator tools for the dead-letter queue: inspect it, replay from it."""
