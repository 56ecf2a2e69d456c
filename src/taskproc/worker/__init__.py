"""The worker role: `taskproc worker`."""
