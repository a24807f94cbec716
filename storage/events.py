"""The registry of audit event codes.

Codes are stable: admins grep logs and build alerts on them, so a code is never reused or
renumbered. Add new ones at the end of their hundred.
"""
from __future__ import annotations

from enum import IntEnum


class EventCode(IntEnum):
    # 1xx: node lifecycle
    NODE_STARTED = 100
    NODE_STOPPED = 101
    NODE_RECOVERED = 102  # interrupted jobs/deliveries picked up again after a restart
    RECEIVER_STARTED = 103  # a DICOM receiver process is listening (node.receive_processes)
    RECEIVER_EXITED = 104  # a receiver process died (and is restarted) or was stopped with the node
    # 2xx: associations
    ASSOCIATION_ACCEPTED = 200
    ASSOCIATION_REJECTED_CALLED_AE = 201
    ASSOCIATION_REJECTED_CALLING_AE = 202
    ASSOCIATION_REJECTED_HOST = 203
    ASSOCIATION_RELEASED = 204
    ASSOCIATION_ABORTED = 205
    TLS_HANDSHAKE_FAILED = 206
    ECHO_RECEIVED = 207
    ASSOCIATION_REFUSED_LIMIT = 208  # refused by the association limit (A-ASSOCIATE-RJ, local limit exceeded)
    CONNECTION_CLOSED_IDLE = 209  # a TCP connection sent no A-ASSOCIATE-RQ in time and was closed
    # 3xx: instances (300 is retired and never reused: a stored instance is an `instances` row, not an event)
    INSTANCE_DUPLICATE = 301
    INSTANCE_REJECTED_UNPARSEABLE = 302
    INSTANCE_REJECTED_DISK_FULL = 303
    INSTANCE_REJECTED_MISSING_UIDS = 304
    INSTANCE_STORE_FAILED = 305
    INSTANCE_REJECTED_INVALID_UID = 306  # a UID outside the PS3.5 9.1 grammar
    INSTANCE_REJECTED_TOO_LARGE = 307  # over node.max_instance_mb
    INSTANCE_REJECTED_NO_DATASET = 308  # a C-STORE request that carried no data set
    # 4xx: series and routing
    SERIES_OPENED = 400
    SERIES_COMPLETE = 401
    SERIES_REOPENED = 402
    SERIES_ROUTED = 403
    SERIES_IGNORED = 404
    SERIES_NOT_SELECTED = 405  # a better series of the same study was chosen
    SERIES_STUDY_CONFLICT = 406  # one SeriesInstanceUID arrived under two StudyInstanceUIDs
    # 5xx: jobs
    JOB_QUEUED = 500
    JOB_STARTED = 501
    JOB_DONE = 502
    JOB_FAILED = 503
    JOB_REQUEUED = 504
    SERIES_NOT_ANALYSED = 505
    FINDING_RECORDED = 506
    SERIES_REPROCESS_REQUESTED = 507  # an admin asked to analyse a series again (CLI, API or console)
    # 510-519: the inference engine (a Triton server)
    ENGINE_UNAVAILABLE = 510  # the inference server was unreachable: the job waits and is retried, not failed
    ENGINE_RESTORED = 511  # a job ran on the inference server again after it was unreachable
    # 52x: priors for follow-up comparison (dicomnode.priors)
    PRIOR_SEARCH = 520  # looking for the patient's most recent earlier chest CT (own database, then C-FIND)
    PRIOR_FOUND = 521  # a prior chosen (where from, which study and series; the others listed)
    PRIOR_NOT_FOUND = 522  # no earlier suitable chest CT of the patient within the lookback
    PRIOR_RETRIEVED = 523  # the prior series is in the spool (C-MOVE or C-GET), marked as a prior
    PRIOR_RETRIEVE_FAILED = 524  # the query or retrieval failed (peer down, refused, timed out): no comparison
    PRIOR_PATIENT_MISMATCH = 525  # the prior is not provably the same patient: refused, no comparison
    PRIOR_SERIES_HELD = 526  # a complete prior series: held for comparison, starts no job, never delivered
    PRIOR_QUERY = 527  # a C-FIND for priors sent to a peer (the query in details; IHE ATNA Query)
    PRIOR_COMPARED = 528  # the current exam compared with its prior (matched, new, resolved; follow-up Lung-RADS)
    PRIOR_NOT_COMPARED = 529  # the result goes without comparison: "prior not available: <reason>" (or why not)
    PRIOR_ANALYSED = 530  # a retrieved prior analysed once, in the current exam's job: its own job, never delivered
    # 54x: several nodes on one database (leases; dicomnode.process.cluster)
    JOB_LEASE_TAKEN_OVER = 540  # a running job whose node's lease expired (node dead) queued again by another node
    DELIVERY_LEASE_TAKEN_OVER = 541  # a delivery mid-send whose node's lease expired, pending again (another node sends it)
    NODE_JOINED = 542  # a node registered in the nodes table (its id, host, version, engine)
    NODE_LEASE_LOST = 543  # this node's claim was taken over (it was presumed dead): its result is discarded
    NODE_ID_IN_USE = 544  # a node refused to start: its node id belongs to a live node (fresh heartbeat)
    NODE_PRESUMED_DEAD = 545  # a node's heartbeat stopped for longer than a lease: marked lost, its sessions ended
    # 6xx: deliveries
    DELIVERY_QUEUED = 600
    DELIVERY_SENT = 601
    DELIVERY_ATTEMPT_FAILED = 602
    DELIVERY_DEAD_LETTER = 603
    DELIVERY_RETRY_REQUESTED = 604
    FORWARD_QUEUED = 605  # a route forwards the source instances themselves to a destination
    DELIVERY_COMMIT_REQUESTED = 606  # storage commitment asked of the destination (N-ACTION, a Transaction UID)
    DELIVERY_COMMITTED = 607  # the destination's N-EVENT-REPORT confirmed the instance
    DELIVERY_COMMIT_FAILED = 608  # not committed (report: failed, no report in time, N-ACTION refused): retried
    DELIVERY_COMMIT_REPORT_REFUSED = 609  # an N-EVENT-REPORT refused: unknown transaction, wrong AE or instances
    # 7xx: administration and web console
    ADMIN_LOGIN = 700
    ADMIN_LOGIN_FAILED = 701
    ADMIN_ACTION = 702
    UPLOAD_RECEIVED = 703
    ADMIN_LOGIN_THROTTLED = 704  # too many failed logins from a client or for a user: delayed or refused
    ADMIN_LOGOUT = 705
    UPLOAD_REJECTED = 706  # over a size, member-count or compression-ratio limit
    WEB_REQUEST_REFUSED = 707  # a foreign Host header, or a body over the size limit
    DESTINATION_ECHO = 708  # an admin C-ECHOed a destination from the console
    STOW_RECEIVED = 710  # a STOW-RS request (POST /dicom-web/studies) ingested: stored, duplicate and failed counts
    STOW_REJECTED = 711  # a whole STOW-RS request refused (bad content type or body, over a size limit): nothing stored
    STOW_INSTANCE_REFUSED = 712  # one part of a STOW-RS request refused before ingest (wrong study, not DICOM)

    # 8xx: retention (what was deleted, and why; audit rows themselves are never deleted)
    RETENTION_DELETED = 800  # files of a series (source instances, results or outbox) removed by policy
    RETENTION_HIGH_WATER = 801  # disk use above the high-water mark: oldest deletable data removed first
    RETENTION_SKIPPED = 802  # disk above the mark but nothing deletable (all undelivered or unanalysed)

    # 9xx: IHE ATNA export to the hospital's audit repository (dicomnode.atna)
    ATNA_REPOSITORY_UNREACHABLE = 900  # the audit repository refused or dropped us; messages wait in the queue
    ATNA_REPOSITORY_RESTORED = 901  # the audit repository takes messages again; the queue was sent
    SETTINGS_CHANGED = 902  # at start: settings differ from the last start (key names only, never values)
    USERS_CHANGED = 903  # at start: console users added, removed or given a new password since the last start

    @property
    def level(self) -> str:
        warn = {202, 201, 203, 205, 206, 208, 209, 302, 303, 304, 305, 306, 307, 308, 404, 406, 503, 505, 510, 524, 525, 540, 541, 543, 544, 545, 602, 608, 609,
                701, 704, 706, 707, 711, 712, 801, 802, 900}
        error = {603}
        if self.value in error:
            return "error"
        return "warning" if self.value in warn else "info"
