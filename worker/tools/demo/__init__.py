"""``chatstore demo``: a realistic stream through the real worker, then a summary."""
