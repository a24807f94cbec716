"""The states a row moves through, as stored in the database.

The values are the strings already in the schema, the API and the CLI output; a StrEnum compares
and serialises as its value, so rows written before this module existed read back unchanged.
The column is `status` on series (with `status_reason`) and `state` on jobs, deliveries and
associations: a naming difference kept in the schema, not a difference in meaning.
"""
from __future__ import annotations

from enum import StrEnum


class SeriesState(StrEnum):
    """Series.status; only dicomnode.receive.lifecycle writes it (docs/architecture.md, "Series lifecycle")."""

    RECEIVING = "receiving"  # instances arriving, or the completion clock running
    COMPLETE = "complete"  # stable: waiting for routing
    ROUTED = "routed"  # a route matched and a job was queued
    IGNORED = "ignored"  # no route matched (status_reason says why)
    NOT_SELECTED = "not_selected"  # a one-series-per-study route chose a sibling


class JobState(StrEnum):
    """Job.state."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class DeliveryState(StrEnum):
    """Delivery.state."""

    PENDING = "pending"  # waiting for its next attempt
    SENDING = "sending"  # claimed by the delivery loop
    DELIVERED = "delivered"
    # storage commitment (destinations with storage_commitment = true; dicomnode.deliver.commitment):
    # stored by the PACS, its N-EVENT-REPORT not in yet; the outbox file stays (a failure re-sends it)
    AWAITING_COMMITMENT = "awaiting_commitment"
    COMMITTED = "committed"  # the PACS confirmed it took responsibility for the instance
    DEAD = "dead"  # out of attempts: a dead letter until someone retries it
    SUPERSEDED = "superseded"  # a newer job for the same series replaced this result


class AssociationState(StrEnum):
    """Association.state."""

    ACCEPTED = "accepted"
    RELEASED = "released"
    ABORTED = "aborted"
    REJECTED = "rejected"


class DeliveryKind(StrEnum):
    """Delivery.kind: what a delivery sends."""

    RESULT = "result"  # an object a job produced, written to the outbox
    FORWARD = "forward"  # a source instance as received, sent from the spool (route.forward_to)


class SeriesRole(StrEnum):
    """Series.role (migration 0012); NULL: an exam as received."""

    PRIOR = "prior"  # retrieved to compare a follow-up with: no job of its own, never delivered


class PriorRetrievalState(StrEnum):
    """PriorRetrieval.state (dicomnode.priors.retrieve)."""

    PENDING = "pending"  # the C-MOVE/C-GET is out; instances of the series arriving are the prior
    RETRIEVED = "retrieved"  # the instances are in the spool and are the patient's
    FAILED = "failed"  # refused, timed out, peer down, nothing arrived (reason says)
    REFUSED = "refused"  # arrived, but not provably the same patient: never compared
