"""Priors for follow-up comparison (issue 12): find the patient's most recent earlier chest CT (the
node's own audit database first, then C-FIND on the configured peers), retrieve it (C-MOVE to the
node's own AE title, or C-GET) through the durable intake, check it is the same patient, and mark it
as a prior (series.role = "prior": routing holds it, it starts no job of its own, is never delivered).

safety: the patient-identity rules (pure). finder: the search. retrieve: C-MOVE / C-GET.
service: the whole of it for one current series, audited, bounded by priors.max_wait_s.
"""
