"""localgce: a local Compute Engine for rehearsing preemption survival on one machine.

Emulates the parts of GCE the kit uses (Compute API subset, per-instance metadata servers,
guest startup/shutdown scripts, Spot preemption, host maintenance) and runs Cloud Storage
through fake-gcs-server. Everything listens on 127.0.0.1 only.
"""
