"""The API role: `taskproc api`."""
