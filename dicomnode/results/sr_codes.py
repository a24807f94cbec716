"""The codes of the node's TID 1500 SR, where each comes from, and the two declared private schemes.

Never the retired SRT scheme: SCT, DCM, UCUM, UMLS, LN, 99IHE, and two declared private schemes (99DCMNODE_LRADS for
the Lung-RADS categories, 99DCMNODE for the few concepts with no standard code) only.
"""
from __future__ import annotations

from collections.abc import Mapping

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom.sr.coding import Code
from pydicom.sr.codedict import codes

# No DICOM/SNOMED code list exists for Lung-RADS categories (the RadElement set RDES267 is not a
# DICOM-registered scheme): declare ours (docs/architecture.md, "Results encoding").
LUNG_RADS_SCHEME = "99DCMNODE_LRADS"
LUNG_RADS_CONCEPT = CodedConcept("LRADS", LUNG_RADS_SCHEME, "Lung-RADS assessment category")
LUNG_RADS_MEANINGS = {
    "0": "Lung-RADS 0 incomplete",
    "1": "Lung-RADS 1 negative",
    "2": "Lung-RADS 2 benign appearance or behavior",
    "3": "Lung-RADS 3 probably benign",
    "4A": "Lung-RADS 4A suspicious",
    "4B": "Lung-RADS 4B very suspicious",
    "4X": "Lung-RADS 4X very suspicious with additional features",
}
# Concepts with no standard code (searched in PS3.16, SNOMED CT and RadLex/RadElement): declared here.
PRIVATE_SCHEME = "99DCMNODE"

NODULE = codes.SCT.Nodule  # 27925004
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = CodedConcept("49755003", "SCT", "Morphologically abnormal structure")
LUNG = codes.SCT.Lung  # 39607008
# Finding site laterality (TID 1419 "Finding Site" + HAS CONCEPT MOD Laterality, CID 244)
LATERALITY = {"right": codes.SCT.Right, "left": codes.SCT.Left}  # 24028007, 7771000

# ---- NUM items (PS3.16 CID 7469/7470 and CID 6048)
DIAMETER = codes.SCT.Diameter  # 81827009, with Derivation (DCM 121401) = Mean (SCT 373098007)
MEAN = codes.SCT.Mean  # 373098007
LONG_AXIS = codes.SCT.LongAxis  # 103339001
SHORT_AXIS = codes.SCT.ShortAxis  # 103340004
VOLUME = codes.SCT.Volume  # 118565006
PROBABILITY_OF_CANCER = codes.DCM.ProbabilityOfCancer  # 111047 (CID 6048)
CERTAINTY_OF_FINDING = codes.DCM.CertaintyOfFinding  # 111012, used for detection probability
SOLID_COMPONENT_DIAMETER = CodedConcept("SOLIDDIAM", PRIVATE_SCHEME, "Solid component mean diameter")
MODEL_SCORE = CodedConcept("MODELSCORE", PRIVATE_SCHEME, "Model score, phantom-trained weights, not p(cancer)")
# Measurement Method (SCT 370129005) values naming how a probability of cancer was derived
BROCK_METHOD = CodedConcept("BROCK", PRIVATE_SCHEME, "Brock University (PanCan) full model with spiculation")
MODEL_METHOD = CodedConcept("DLMODEL", PRIVATE_SCHEME, "Detection model malignancy head, validated weights")
BROCK_ALGORITHM = ("Brock University (PanCan) model", "McWilliams et al. N Engl J Med 2013;369:910-919, full model")
LAA950 = CodedConcept("LAA950", PRIVATE_SCHEME, "Lung volume below -950 HU (LAA-950)")
# the exam's coronary calcium, a TEXT item at report level (grade and Agatston-equivalent score): SCT 450360000
CORONARY_CALCIUM = codes.SCT.CoronaryArteryCalciumScore
# Lung-RADS v2022 modifier S (inference.clinical.significant): no code exists for the modifier, as for the categories
LUNG_RADS_MODIFIER = CodedConcept("LRADSMOD", PRIVATE_SCHEME, "Lung-RADS modifier")
S_MODIFIER_SUGGESTED = CodedConcept("LRADSS", PRIVATE_SCHEME,
                                    "S: significant finding other than lung cancer, suggested")
SCORE_UNIT = CodedConcept("{score}", "UCUM", "score")  # a UCUM annotation: a 0..1 score, not a percentage

# ---- qualitative evaluations: the Chest CAD SR concepts of PS3.16 (TID 4100 family) where they fit
OPACITY_DESCRIPTOR = codes.DCM.OpacityDescriptor  # 112027
ATTENUATION = {
    # SCT 35702001 "Solid": HL7 LT lung IG value set "pulmonary-nodule-type", expanded by tx.fhir.org
    "solid": CodedConcept("35702001", "SCT", "Solid"),
    # no SNOMED CT / PS3.16 code for a part-solid (mixed) nodule; RadElement RDE1301 is not a DICOM scheme
    "part_solid": CodedConcept("PARTSOLID", PRIVATE_SCHEME, "Part-solid"),
    "ground_glass": codes.DCM.GroundGlassOpacity,  # 112120, CID 6102/6104
}
BORDER_SHAPE = codes.DCM.BorderShape  # 112015 (values CID 6119 Chest Border Shape)
MARGIN = {
    "smooth": codes.SCT.Smooth,  # 82280004
    "lobulated": codes.DCM.Lobulated,  # 112135, CID 6119
    "spiculated": codes.DCM.Spiculated,  # 112136, CID 6119
}
LOCATION_IN_CHEST = codes.DCM.LocationInChest  # 112013 (values CID 6124 Location in Chest)
ZONE = {
    # zones are thirds of the lung height: they approximate, and are not, the lobes
    "upper": codes.SCT.UpperZoneOfLung,  # 281392002
    "middle": codes.SCT.MiddleZoneOfLung,  # 281393007
    "lower": codes.SCT.LowerZoneOfLung,  # 281394001
}
# CID 6124 has no "juxtapleural"; Subpleural (SCT 68599007) is its nearest member: the nodule abuts the pleura
SUBPLEURAL = CodedConcept("68599007", "SCT", "Subpleural")
# Neither CID 6124 nor SNOMED CT nor the RadElement nodule set has "perifissural": a declared private code
PERIFISSURAL = CodedConcept("PERIFISSURAL", PRIVATE_SCHEME, "Perifissural")
CALCIFICATION = CodedConcept("CALC", PRIVATE_SCHEME, "Nodule calcification")
PRESENT = codes.SCT.Present  # 52101004 (CID 240)
ABSENT = codes.SCT.Absent  # 272519000 (CID 240)
CALCIFICATION_DESCRIPTOR = codes.DCM.CalcificationDescriptor  # 112030
CALCIFICATION_PATTERN = {
    # CID 6132 Chest Calcification Descriptor has popcorn and laminated, not these three
    "central": CodedConcept("CENTRALCALC", PRIVATE_SCHEME, "Central calcification"),
    "diffuse": CodedConcept("DIFFUSECALC", PRIVATE_SCHEME, "Diffuse calcification"),
    "eccentric": CodedConcept("ECCENTRICCALC", PRIVATE_SCHEME, "Eccentric calcification"),
}
# An air-filled lumen in the lesion (inference.characterize.cyst), as Lung-RADS v2022 grades it. SNOMED CT has Cyst
# (441457006) but not these distinctions (thin- or thick-walled, multilocular, a nodule's cavity): declared private codes
AIR_FILLED_LUMEN = CodedConcept("AIRLUMEN", PRIVATE_SCHEME, "Air-filled lumen")
CYST_KIND = {
    "thin_walled": CodedConcept("THINCYST", PRIVATE_SCHEME, "Thin-walled cyst"),
    "thick_walled": CodedConcept("THICKCYST", PRIVATE_SCHEME, "Thick-walled cyst"),
    "multilocular": CodedConcept("MULTICYST", PRIVATE_SCHEME, "Multilocular cyst"),
    "cavity": CodedConcept("CAVITY", PRIVATE_SCHEME, "Cavity in a nodule"),
    "thin_walled_in_part": CodedConcept("THINCYSTPART", PRIVATE_SCHEME, "Cyst, thin-walled where its wall is seen"),
    "with_opacity": CodedConcept("CYSTOPACITY", PRIVATE_SCHEME, "Cyst with opacity beside its wall"),
}
# A lesion inside an airway's lumen (inference.characterize.airway), as Lung-RADS v2022 grades it: its location in
# the chest is the airway (SNOMED CT Airway structure); the level, judged by the lumen's calibre, has no standard code
AIRWAY = codes.SCT.AirwayStructure  # 89187006
AIRWAY_LEVEL = CodedConcept("AIRWAYLEVEL", PRIVATE_SCHEME, "Airway level, by its calibre")
AIRWAY_LEVELS = {
    "segmental_or_proximal": CodedConcept("SEGAIRWAY", PRIVATE_SCHEME, "Segmental or more proximal airway"),
    "subsegmental": CodedConcept("SUBSEGAIRWAY", PRIVATE_SCHEME, "Subsegmental airway"),
}

SUMMARY_OF_DETECTIONS = codes.DCM.SummaryOfDetections  # 111064
WITHOUT_FINDINGS = codes.DCM.AllAlgorithmsSucceededWithoutFindings  # 111241
NOT_ANALYSED = codes.DCM.NoAlgorithmsSucceededWithoutFindings  # 111245
COMMENT = CodedConcept("121106", "DCM", "Comment")
RECOMMENDATION = codes.DCM.Recommendation  # 121075
# TID 1500 row "Qualitative Evaluations" container (CODE and TEXT items about the whole report)
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
# TID 1500 "Procedure Reported" is the imaging procedure the report is about (IHE AIR), not the algorithm:
# LOINC 24627-2 "CT Chest" (the LOINC/RSNA Radiology Playbook term for a chest CT of any contrast phase;
# low-dose screening CT is a chest CT).
PROCEDURE_REPORTED = CodedConcept("24627-2", "LN", "CT Chest")
# IHE AIR: the algorithm is Contributing Equipment with this Purpose of Reference (IHE RAD TF-3, AI Results)
PROCESSING_ALGORITHM = CodedConcept("1630", "99IHE", "Processing Algorithm")

# ---- follow-up: the comparison with the prior exam (issue 12). No PS3.16 or SNOMED CT code for the
# volume doubling time, the change values or the Lung-RADS growth flag: declared private codes. The status
# is coded with SNOMED CT where it has one (new, increased, decreased size, no change).
CHANGE_SINCE_PRIOR = CodedConcept("PRIORCHANGE", PRIVATE_SCHEME, "Change since prior exam")
CHANGE_STATUS = {
    "new": CodedConcept("7147002", "SCT", "New"),
    "growing": CodedConcept("15454001", "SCT", "Increase in size"),
    "shrinking": CodedConcept("19776001", "SCT", "Decreased size"),
    "stable": CodedConcept("260388006", "SCT", "No change"),
}
PRIOR_DIAMETER = CodedConcept("PRIORDIAM", PRIVATE_SCHEME, "Prior exam mean diameter")
PRIOR_VOLUME = CodedConcept("PRIORVOL", PRIVATE_SCHEME, "Prior exam volume")
VOLUME_CHANGE = CodedConcept("VOLCHANGE", PRIVATE_SCHEME, "Volume change since prior exam")
DIAMETER_CHANGE = CodedConcept("DIAMCHANGE", PRIVATE_SCHEME, "Mean diameter change since prior exam")
DOUBLING_TIME = CodedConcept("VDT", PRIVATE_SCHEME, "Volume doubling time")
INTERVAL = CodedConcept("PRIORINTERVAL", PRIVATE_SCHEME, "Interval since prior exam")
GROWTH_FLAG = CodedConcept("LRGROWTH", PRIVATE_SCHEME, "Lung-RADS growth (mean diameter > 1.5 mm in 12 months)")
PRIOR_COMPARISON = CodedConcept("PRIORCOMP", PRIVATE_SCHEME, "Comparison with prior exam")
PRIOR_STUDY = CodedConcept("PRIORSTUDY", PRIVATE_SCHEME, "Prior study instance UID")
PRIOR_REPORT = CodedConcept("111549", "DCM", "Previous Reports")  # the prior's SR, by its SOP Instance UID
RESOLVED = CodedConcept("PRIORRESOLVED", PRIVATE_SCHEME, "Prior exam nodule not seen (resolved)")
DAY_UNIT = CodedConcept("d", "UCUM", "day")


def lung_rads_code(category: str) -> CodedConcept:
    meaning = LUNG_RADS_MEANINGS.get(category.upper(), f"Lung-RADS {category.upper()}")
    return CodedConcept(category.upper(), LUNG_RADS_SCHEME, meaning)


def lung_rads_scheme_item() -> hd.coding_schemes.CodingSchemeIdentificationItem:
    return hd.coding_schemes.CodingSchemeIdentificationItem(
        designator=LUNG_RADS_SCHEME,
        name="dicomnode codes for the ACR Lung-RADS v2022 categories",
        responsible_organization="dicomnode project",
    )


def private_scheme_item() -> hd.coding_schemes.CodingSchemeIdentificationItem:
    return hd.coding_schemes.CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME,
        name="dicomnode lung screening concepts without a standard code",
        responsible_organization="dicomnode project",
    )


def coded(table: Mapping[str, CodedConcept | Code], key: str | None, what: str) -> CodedConcept | Code:
    """The code for `key` in `table`, or a ValueError naming what is unknown (`what`)."""
    try:
        return table[key or ""]
    except KeyError:
        raise ValueError(f"finding has an unknown {what} {key!r}; expected one of {sorted(table)}") from None


def mm_measurement(name: CodedConcept | Code, value: float,
                   derivation: CodedConcept | Code | None = None) -> hd.sr.Measurement:
    """A NUM item in millimetres, to one decimal."""
    return hd.sr.Measurement(name=name, value=round(float(value), 1), unit=codes.UCUM.Millimeter,
                             derivation=derivation)
