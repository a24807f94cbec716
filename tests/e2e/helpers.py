"""What the end-to-end tests with Orthanc as the PACS share."""
from __future__ import annotations

from tests.peers.orthanc import OrthancProcess


def orthanc_node_config(orthanc: OrthancProcess) -> str:
    """The node's config: the lung-nodule pipeline on every CT study from Orthanc, results back to it."""
    return f"""
[series]
stable_seconds = 2
poll_seconds = 0.3
[security]
allowed_calling_aes = ["{orthanc.aet}"]
[[routes]]
name = "chest-ct"
pipeline = "lung-nodule"
destinations = ["sender"]
one_series_per_study = true
[routes.match]
modality = ["CT"]
[destinations.PACS]
ae_title = "{orthanc.aet}"
host = "127.0.0.1"
port = {orthanc.dicom_port}
[sender]
poll_seconds = 0.3
backoff_initial_s = 1
[jobs]
poll_seconds = 0.3
[web]
enabled = false
"""
