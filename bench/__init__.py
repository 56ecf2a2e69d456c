"""`make bench`: taskproc against bare arq and Celery on the same machine, in one run.

Nothing is imported here on purpose: `bench.peer_celery` is imported by Celery from its own virtual
environment, where neither taskproc nor its dependencies are installed.
"""
