"""What an admin can ask the audit database for (`dicomnode audit WHAT`, the console's audit pages), and the
states a node can be in.

Its own module, without SQLAlchemy, so that building the CLI's parser does not import the database layer.
"""
from __future__ import annotations

AUDIT_SUBJECTS = ("associations", "instances", "series", "jobs", "findings", "deliveries", "events", "dead-letters",
                  "nodes")
# a node that says it runs but has not beaten for longer than a lease (node.lease_s) is "silent":
# presumed dead, its leases are taken over (dicomnode.process.cluster)
# "lost": presumed dead, and another node took over what it left
NODE_STATES = ("running", "silent", "lost", "stopped")
