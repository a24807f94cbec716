"""The algorithm as the results name it (IHE AIR): its identification, its Device UID that changes with the
weights, the Contributing Equipment item and the SR's observer context. Shared by the SR, the SEG and the overlays."""
from __future__ import annotations

import highdicom as hd
from pydicom.sr.codedict import codes

from dicomnode.results.options import ResultOptions
from dicomnode.results.sr_codes import PROCESSING_ALGORITHM
from dicomnode.results.uids import device_uid
from inference.findings import ModelIdentity


def algorithm_identification(model: ModelIdentity) -> hd.sr.AlgorithmIdentification:
    # The weights hash pins the exact model; the name/version alone may be reused by retraining.
    return hd.sr.AlgorithmIdentification(
        name=model.name,
        version=model.version,
        parameters=[f"weights_sha256={model.weights_sha256}", f"engine={model.engine}",
                    *([f"bundle_sha256={model.bundle_sha256}"] if model.bundle_sha256 else [])],
    )


def algorithm_device_uid(model: ModelIdentity, options: ResultOptions) -> str:
    """The algorithm's Device UID: changes with any of the weights (uids.device_uid) - the whole bundle's
    digest when the pipeline knows it, else the detector's."""
    weights = model.bundle_sha256 or model.weights_sha256
    return str(device_uid(options.device_name, model.name, weights, options.uid_root))


def contributing_equipment(model: ModelIdentity, options: ResultOptions) -> hd.ContributingEquipment:
    """IHE AIR algorithm identification: Purpose of Reference (99IHE 1630), Manufacturer, Model Name,
    Software Versions and the Device UID that changes with the weights. Shared by the SR and the SEG."""
    equipment = hd.ContributingEquipment(
        manufacturer=options.manufacturer,
        # highdicom accepts only CID 7005 codes here: the AIR code replaces this one below
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model.name,
        software_versions=model.version,
        institution_name=options.institution_name,
        contribution_description=f"Lung nodule detection, characterisation, Lung-RADS and Brock risk ({model.engine})",
    )
    equipment.PurposeOfReferenceCodeSequence = [PROCESSING_ALGORITHM]  # CID 7005 is extensible
    equipment.DeviceUID = algorithm_device_uid(model, options)
    return equipment


def observation_context(model: ModelIdentity, options: ResultOptions) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=algorithm_device_uid(model, options),
        name=options.device_name,
        manufacturer_name=options.manufacturer,
        model_name=model.name,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=device,
        )
    )
