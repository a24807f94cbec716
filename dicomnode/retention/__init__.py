"""Retention: which files of finished series may go, and removing them durably and audited.

policy.py   pure decisions over facts (no I/O): what may go, why (age, high-water), what must stay
survey.py   the facts: series rows from the audit database, outbox sizes and disk use from the disk
executor.py mark-then-delete through a journal (retention_purges): crash-safe, confined, audited
service.py  one pass (survey, plan, execute, audit) and the node's background loop
"""
