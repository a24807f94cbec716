"""IHE ATNA Record Audit Event: the audit trail as DICOM audit messages over syslog (docs/architecture.md)."""
