"""DICOM SEG <-> label map conversions for the DICOMweb datastore (pydicom-seg; no external tool)."""

from __future__ import annotations

import copy
import re
from typing import Dict, List

import numpy as np
import pydicom_seg
import SimpleITK as sitk
from fastapi import HTTPException
from pydicom.dataset import Dataset

from medplib_label.datastore import check_label_fits

GENERIC_CODE = {"CodeValue": "91723000", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Anatomical structure"}
PALETTE = [(241, 214, 145), (177, 122, 101), (111, 184, 210), (216, 101, 79), (128, 174, 128), (221, 130, 101),
           (144, 238, 144), (220, 245, 20), (78, 63, 0), (255, 250, 220)]


def checked_label(image_path: str, label_path: str) -> sitk.Image:
    """The label as UInt16 on the image's exact grid; HTTP 422 when it is unreadable or does not fit the image."""
    label, image = check_label_fits(image_path, label_path)
    arr = label.array
    out = sitk.GetImageFromArray(np.ascontiguousarray(arr.astype(np.uint16).transpose(2, 1, 0)))
    out.CopyInformation(image.reference)
    return out


def _person_name(text: str) -> str:
    text = re.sub(r"[^A-Za-z0-9 _.-]", "", text).strip()[:60]
    return text.replace(" ", "^") if text else "MedPLIB^Label"


def label_to_seg(label: sitk.Image, sources: List[Dataset], names: Dict[str, int], creator: str = "") -> Dataset:
    """A binary DICOM SEG (one segment per value, SegmentNumber = value) referencing the source instances."""
    if not names:
        raise HTTPException(status_code=422, detail="label: it is empty; a DICOM SEG needs at least one segment")
    attributes = []
    for name, value in sorted(names.items(), key=lambda kv: kv[1]):
        attributes.append({
            "labelID": int(value), "SegmentLabel": name[:64], "SegmentDescription": name[:64],
            "SegmentAlgorithmType": "SEMIAUTOMATIC", "SegmentAlgorithmName": "MedPLIB Label",
            "SegmentedPropertyCategoryCodeSequence": GENERIC_CODE, "SegmentedPropertyTypeCodeSequence": GENERIC_CODE,
            "recommendedDisplayRGBValue": list(PALETTE[(value - 1) % len(PALETTE)]),
        })
    template = pydicom_seg.template.from_dcmqi_metainfo({
        "ContentCreatorName": _person_name(creator), "ClinicalTrialSeriesID": "Session1",
        "ClinicalTrialTimePointID": "1", "SeriesDescription": "MedPLIB Label segmentation", "SeriesNumber": "300",
        "InstanceNumber": "1", "ContentLabel": "SEGMENTATION", "ContentDescription": "MedPLIB Label final label",
        "ClinicalTrialCoordinatingCenterName": "", "BodyPartExamined": "", "segmentAttributes": [attributes],
    })
    writer = pydicom_seg.MultiClassWriter(template=template, inplane_cropping=False, skip_empty_slices=False,
                                          skip_missing_segment=False)
    # pydicom-seg 0.4 shares data elements with the first source and then gives its FrameOfReferenceUID a new
    # value (changing the source too): write from copies, then restore the series' frame of reference.
    frame_of_reference = str(sources[0].get("FrameOfReferenceUID", "")) if sources else ""
    seg = writer.write(label, [copy.deepcopy(s) for s in sources])
    if frame_of_reference:
        seg.FrameOfReferenceUID = frame_of_reference
    seg.Manufacturer = "MedPLIB Label"
    return seg


def seg_to_label(seg: Dataset, reference: sitk.Image) -> tuple[sitk.Image, Dict[str, int]]:
    """A SEG as a label map on the reference image's grid (value = SegmentNumber) and its {name: value}."""
    result = pydicom_seg.MultiClassReader().read(seg)
    image = sitk.Cast(result.image, sitk.sitkUInt16)
    label = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16)
    if int(np.max(sitk.GetArrayViewFromImage(label), initial=0)) < 256:
        label = sitk.Cast(label, sitk.sitkUInt8)
    names = {str(s.get("SegmentLabel", f"label {s.SegmentNumber}")): int(s.SegmentNumber)
             for s in seg.SegmentSequence}
    return label, names
