"""Real processes on loopback for the tests and the benchmarks: the app's servers and workers, a
PostgreSQL cluster and a redis-server of their own, HTTP miners, client load, fault injection and
the invariants a deployment keeps through faults.

Nothing here is imported by the app itself.
"""
