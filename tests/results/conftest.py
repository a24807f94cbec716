"""The real LIDC series and a synthetic 3-nodule result on it, shared by the results tests."""
from __future__ import annotations

import pytest

from tests.results.dicom_validators import lidc_series, synthetic_result


@pytest.fixture(scope="session")
def series():
    return lidc_series()


@pytest.fixture(scope="session")
def result(series):
    return synthetic_result(series)
