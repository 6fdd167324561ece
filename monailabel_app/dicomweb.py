"""A DICOMweb datastore (Orthanc, dcm4chee, Google Healthcare, ...) that works offline.

`monailabel start_server --studies http://pacs:8042/dicom-web` makes MONAI Label 0.8.5 download the dcmqi binaries
from GitHub at start-up (MONAILabelApp._download_dcmqi_tools) and write DICOM SEG with them; behind a hospital firewall
that fails. This datastore needs no external tool:

* image id = SeriesInstanceUID; `list_images` is a QIDO-RS series search (default filter: Modality CT or MR, one query
  per listed value, so it works with servers that do not take value lists); derived objects (SEG, RTSTRUCT, SR, ...)
  are never images;
* `get_image_uri` retrieves the series (WADO-RS) into `<cache>/.dicom/<uid>/` and converts it with SimpleITK (GDCM
  sorts the slices by position) into `<cache>/<uid>.nii.gz`;
* `save_label(..., "final")` checks the label against the image geometry, writes a DICOM SEG with pydicom-seg (one
  segment per label value; value = SegmentNumber, name = SegmentLabel) that references the source series and shares
  its study and frame of reference, and STOWs it; other tags (e.g. `original`) stay in the local cache;
* a series is labelled when a SEG on the server references it; the newest such SEG is its `final` label, read back
  (WADO-RS) and resampled (nearest neighbour) onto the image grid, so SEGs from other tools (OHIF, Slicer) work too;
* the cache folder is an ordinary MONAI Label local datastore (`<uid>.nii.gz`, `labels/final/<uid>.nii.gz`,
  `datastore_v2.json`): after `datalist()` the training code (and torchrun ranks) can read it like any local store.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import logging
import os
import pathlib
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
import pydicom
import requests
import SimpleITK as sitk
from fastapi import HTTPException
from filelock import FileLock
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMwebClientX, DICOMWebDatastore
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.exception import ImageNotFoundException
from pydicom.dataset import Dataset

from medplib_label.datastore import check_id
from medplib_label.dicom_seg import checked_label, label_to_seg, seg_to_label

logger = logging.getLogger(__name__)

FINAL = DefaultLabelTag.FINAL.value
DEFAULT_SEARCH_FILTER: Dict[str, Any] = {"Modality": ["CT", "MR"]}
NON_IMAGE_MODALITIES = set("SEG RTSTRUCT RTPLAN RTDOSE RTRECORD SR PR KO REG RWV DOC FID PLAN AU ECG HD".split())
SERIES_FIELDS = ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "PatientID", "PatientName", "StudyDate",
                 "StudyDescription", "SeriesDate", "SeriesTime", "SeriesDescription", "SeriesNumber",
                 "BodyPartExamined", "NumberOfSeriesRelatedInstances")


class _TTLCache:
    """A tiny thread-safe cache of loader results that expire after `ttl_s` seconds."""

    def __init__(self, ttl_s: float):
        self.ttl_s = ttl_s
        self._items: Dict[str, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, loader: Callable[[], Any]) -> Any:
        with self._lock:
            hit = self._items.get(key)
            if hit and time.monotonic() - hit[0] < self.ttl_s:
                return hit[1]
        value = loader()
        with self._lock:
            self._items[key] = (time.monotonic(), value)
        return value

    def clear(self, key: str | None = None) -> None:
        with self._lock:
            if key is None:
                self._items.clear()
            else:
                self._items.pop(key, None)


class _TimeoutSession(requests.Session):
    """requests has no default timeout: a hung PACS must not hang the model worker forever."""

    def __init__(self, timeout: float | tuple[float, float]):
        super().__init__()
        self.timeout = timeout

    def request(self, *args, **kwargs):  # type: ignore[override]
        kwargs.setdefault("timeout", self.timeout)
        return super().request(*args, **kwargs)


@contextmanager
def _pacs(what: str) -> Iterator[None]:
    """A DICOMweb server that is down or refuses is a 502 naming the step, not a 500 (or a 503 from /infer)."""
    try:
        yield
    except requests.RequestException as exc:
        raise HTTPException(status_code=502, detail=f"DICOMweb {what} failed: {exc}") from None


def _flat(item: Dict[str, Any]) -> Dict[str, str]:
    """QIDO JSON (tag -> {vr, Value}) to {keyword: str} for the SERIES_FIELDS present."""
    ds = Dataset.from_json(item)
    out: Dict[str, str] = {}
    for field in SERIES_FIELDS:
        value = ds.get(field)
        if value is not None and value != "":
            out[field] = str(value)
    return out


def _expand(search_filter: Optional[Dict[str, Any]]) -> List[Dict[str, str]]:
    """{"Modality": ["CT", "MR"], "X": "y"} -> one query per combination of listed values."""
    if not search_filter:
        return [{}]
    keys = list(search_filter)
    values = [v if isinstance(v, (list, tuple)) else [v] for v in search_filter.values()]
    return [{k: str(v) for k, v in zip(keys, combo)} for combo in itertools.product(*values)]


def _atomic_write_image(image: sitk.Image, dest: str, tmp_dir: str) -> None:
    """Write next to the datastore (same file system, hidden folder never scanned) and rename into place."""
    os.makedirs(tmp_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix="writing-", suffix=".nii.gz")
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp, useCompression=True)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class MedPLIBDICOMwebDatastore(DICOMWebDatastore):
    """DICOMweb datastore with a local NIfTI cache; SEG written with pydicom-seg, no dcmqi (see module doc).

    It stays a `DICOMWebDatastore` for MONAI Label's own isinstance checks, but overrides every method that talks
    to the server or converts data; `DICOMWebDatastore.__init__` (which starts a file watcher) is not called.
    """

    def __init__(self, client: Any, search_filter: Optional[Dict[str, Any]] = None, cache_path: str | None = None,
                 label_names: Optional[Dict[str, int]] = None, read_only: bool = False, cache_ttl_s: float = 30.0):
        self._client = client
        self._search_filter = DEFAULT_SEARCH_FILTER if search_filter is None else dict(search_filter)
        self._fetch_by_frame = False
        self._convert_to_nifti = True
        self._label_names = {str(k): int(v) for k, v in (label_names or {}).items()}
        self._read_only = read_only
        self._ttl = _TTLCache(cache_ttl_s)
        self._series_meta: Dict[str, Dict[str, str]] = {}
        self._seg_refs: Dict[str, Optional[str]] = {}  # SEG series -> referenced image series (immutable)
        self._meta_lock = threading.Lock()
        base = cache_path or os.path.join(pathlib.Path.home(), ".cache", "monailabel", "dicom")
        path = os.path.join(base, hashlib.md5(client.base_url.encode()).hexdigest())
        LocalDatastore.__init__(self, path, extensions=("*.nii.gz",), auto_reload=False, read_only=False)
        self._dicom_root = os.path.join(path, ".dicom")
        self._lock_root = os.path.join(path, ".locks")
        self._tmp_root = os.path.join(path, ".tmp")
        os.makedirs(self._dicom_root, exist_ok=True)
        os.makedirs(self._lock_root, exist_ok=True)
        logger.info("DICOMweb datastore %s; filter %s; cache %s", client.base_url, self._search_filter, path)

    # ------------------------------------------------------------------ QIDO: series and SEGs
    def description(self) -> str:
        return f"DICOMweb {self._client.base_url} (filter {json.dumps(self._search_filter)})"

    def list_images(self) -> List[str]:
        with _pacs("series search (QIDO-RS)"):
            return list(self._ttl.get("images", self._query_images))

    def _query_images(self) -> List[str]:
        found: Dict[str, Dict[str, str]] = {}
        for query in _expand(self._search_filter):
            for item in self._client.search_for_series(search_filters=query, fields=list(SERIES_FIELDS),
                                                       get_remaining=True):
                meta = _flat(item)
                if meta.get("Modality", "").upper() in NON_IMAGE_MODALITIES or "SeriesInstanceUID" not in meta:
                    continue
                found[meta["SeriesInstanceUID"]] = meta
        with self._meta_lock:
            self._series_meta.update(found)
        return sorted(found)

    def _series(self, series_uid: str) -> Dict[str, str]:
        """QIDO attributes of a listed series (listing again once when it is not in the cached listing).

        Only series that pass the search filter are served, so the filter also limits what clients can fetch."""
        if series_uid not in self.list_images():
            self._ttl.clear("images")
            if series_uid not in self.list_images():
                raise ImageNotFoundException(f"Image {series_uid} not found on {self._client.base_url}")
        with self._meta_lock:
            return self._series_meta[series_uid]

    def _segs(self) -> List[Dict[str, str]]:
        """Every SEG series on the server with the image series it references, oldest first."""
        with _pacs("SEG search (QIDO-RS)"):
            return self._ttl.get("segs", self._query_segs)

    def _query_segs(self) -> List[Dict[str, str]]:
        out = []
        for item in self._client.search_for_series(search_filters={"Modality": "SEG"}, fields=list(SERIES_FIELDS),
                                                   get_remaining=True):
            meta = _flat(item)
            seg_uid, study = meta.get("SeriesInstanceUID"), meta.get("StudyInstanceUID")
            if not seg_uid or not study:
                continue
            if seg_uid not in self._seg_refs:
                self._seg_refs[seg_uid] = self._referenced_series(study, seg_uid)
            if self._seg_refs[seg_uid]:
                out.append({"seg": seg_uid, "study": study, "image": self._seg_refs[seg_uid],
                            "when": meta.get("SeriesDate", "") + meta.get("SeriesTime", "")})
        return sorted(out, key=lambda s: (s["when"], s["seg"]))

    def _referenced_series(self, study: str, seg_uid: str) -> Optional[str]:
        try:
            meta = Dataset.from_json(self._client.retrieve_series_metadata(study, seg_uid)[0],
                                     bulk_data_uri_handler=lambda tag, vr, uri: b"")  # headers only
            return str(meta.ReferencedSeriesSequence[0].SeriesInstanceUID)
        except (AttributeError, IndexError, KeyError):
            logger.warning("SEG %s references no series; ignored", seg_uid)
            return None

    def _latest_seg(self, image_id: str) -> Optional[Dict[str, str]]:
        segs = [s for s in self._segs() if s["image"] == image_id]
        return segs[-1] if segs else None

    def get_labeled_images(self, label_tag: Optional[str] = None, labels: Optional[List[str]] = None) -> List[str]:
        if label_tag and label_tag != FINAL:  # model outputs etc. live only in the local cache
            return sorted(k for k, v in self._datastore.objects.items() if v.labels.get(label_tag))
        images = set(self.list_images())
        return sorted({s["image"] for s in self._segs() if s["image"] in images})

    def get_unlabeled_images(self, label_tag: Optional[str] = None, labels: Optional[List[str]] = None) -> List[str]:
        labelled = set(self.get_labeled_images(label_tag, labels))
        return [i for i in self.list_images() if i not in labelled]

    def refresh(self) -> None:
        self._ttl.clear()
        LocalDatastore.refresh(self)

    # ------------------------------------------------------------------ images
    def _lock(self, uid: str) -> FileLock:
        return FileLock(os.path.join(self._lock_root, f"{uid}.lock"))

    def _image_path(self, image_id: str) -> str:
        return os.path.realpath(os.path.join(self._datastore.image_path(), f"{image_id}.nii.gz"))

    def _label_path(self, image_id: str, tag: str = FINAL) -> str:
        return os.path.realpath(os.path.join(self._datastore.label_path(tag), f"{image_id}.nii.gz"))

    def get_image_uri(self, image_id: str) -> str:
        check_id("image", image_id)
        path = self._image_path(image_id)
        if image_id in self._datastore.objects and os.path.isfile(path):
            return path
        meta = self._series(image_id)
        with self._lock(image_id):
            if not os.path.isfile(path):  # another thread or process may have converted it meanwhile
                dicom_dir = self._download_series(meta)
                _atomic_write_image(self._read_series(dicom_dir, image_id), path, self._tmp_root)
            self._register(image_id, image_info=self._image_info(meta))
        return path

    def _download_series(self, meta: Dict[str, str]) -> str:
        uid = meta["SeriesInstanceUID"]
        target = os.path.join(self._dicom_root, uid)
        if os.path.isdir(target) and any(f.endswith(".dcm") for f in os.listdir(target)):
            return target
        start = time.time()
        tmp = tempfile.mkdtemp(dir=self._dicom_root, prefix=".download-")
        try:
            with _pacs(f"retrieve of series {uid} (WADO-RS)"):
                instances = self._client.retrieve_series(meta["StudyInstanceUID"], uid)
            for ds in instances:
                ds.save_as(os.path.join(tmp, f"{ds.SOPInstanceUID}.dcm"), write_like_original=False)
            if not instances:
                raise ImageNotFoundException(f"Image {uid} has no instances on {self._client.base_url}")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("retrieved series %s (%d instances) in %.1f s", uid, len(instances), time.time() - start)
        return target

    @staticmethod
    def _read_series(dicom_dir: str, series_uid: str) -> sitk.Image:
        reader = sitk.ImageSeriesReader()
        names = reader.GetGDCMSeriesFileNames(dicom_dir, series_uid) or reader.GetGDCMSeriesFileNames(dicom_dir)
        if not names:
            raise ValueError(f"series {series_uid}: no readable DICOM image")
        reader.SetFileNames(names)
        image = reader.Execute()
        if image.GetNumberOfComponentsPerPixel() > 1:
            image = sitk.VectorIndexSelectionCast(image, 0)
        return image

    def _image_info(self, meta: Dict[str, str]) -> Dict[str, Any]:
        info: Dict[str, Any] = {**meta, "source": "dicomweb"}
        if meta.get("Modality"):
            info["modality"] = meta["Modality"]  # what the MedPLIB infer/trainer code reads
        if meta.get("BodyPartExamined"):
            info["body_part"] = meta["BodyPartExamined"].lower()
        return info

    def _register(self, image_id: str, image_info: Optional[Dict[str, Any]] = None,
                  label: Optional[tuple[str, Dict[str, Any]]] = None) -> None:
        """Record a cached image (and optionally a label tag) in datastore_v2.json (files are already in place)."""
        with FileLock(self._lock_file):
            obj = self._datastore.objects.get(image_id)
            if obj is None:
                info = dict(image_info or {}, ts=int(time.time()), name=f"{image_id}.nii.gz")
                obj = self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=".nii.gz"))
            if label is not None:
                tag, info = label
                obj.labels[tag] = DataModel(info=dict(info, ts=int(time.time()), name=f"{image_id}.nii.gz"),
                                            ext=".nii.gz")
            self._update_datastore_file(lock=False)

    def get_image_info(self, image_id: str) -> Dict[str, Any]:
        obj = self._datastore.objects.get(image_id)
        if obj is not None:
            return {**copy.deepcopy(obj.image.info), "path": self._image_path(image_id)}
        try:
            return self._image_info(self._series(image_id))
        except ImageNotFoundException:
            return {}

    def update_image_info(self, image_id: str, info: Dict[str, Any]) -> None:
        if image_id not in self._datastore.objects:
            self.get_image_uri(image_id)
        LocalDatastore.update_image_info(self, image_id, info)

    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        raise HTTPException(status_code=405, detail="this datastore is a DICOMweb server: store images in the PACS")

    def remove_image(self, image_id: str) -> None:
        raise HTTPException(status_code=405, detail="this datastore is a DICOMweb server: remove images in the PACS")

    # ------------------------------------------------------------------ labels
    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        """Path of the label NIfTI of image `label_id` (= its SeriesInstanceUID, like the local store); "" if none."""
        image_id = image_id or label_id
        if label_tag != FINAL:
            return LocalDatastore.get_label_uri(self, image_id, label_tag)
        seg = self._latest_seg(image_id)
        if seg is None:
            return ""
        path = self._label_path(image_id)
        obj = self._datastore.objects.get(image_id)
        cached = obj.labels.get(FINAL) if obj is not None else None
        if cached is not None and cached.info.get("SeriesInstanceUID") == seg["seg"] and os.path.isfile(path):
            return path
        reference = sitk.ReadImage(self.get_image_uri(image_id))
        with self._lock(seg["seg"]):
            with _pacs(f"retrieve of SEG {seg['seg']} (WADO-RS)"):
                instances = self._client.retrieve_series(seg["study"], seg["seg"])
            label, names = seg_to_label(instances[0], reference)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _atomic_write_image(label, path, self._tmp_root)
            self._register(image_id, label=(FINAL, {"SeriesInstanceUID": seg["seg"], "label_names": names,
                                                    "source": "dicomweb"}))
        return path

    def get_label_info(self, label_id: str, label_tag: str) -> Dict[str, Any]:
        if label_tag == FINAL:
            self.get_label_uri(label_id, FINAL)
        return LocalDatastore.get_label_info(self, label_id, label_tag)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any],
                   label_id: str = "") -> str:
        """Final labels become a DICOM SEG STOWed to the server (and cached); other tags are cached only."""
        check_id("image", image_id)
        check_id("tag", label_tag)
        image_path = self.get_image_uri(image_id)
        if "".join(pathlib.Path(label_filename).suffixes) == ".bin":  # OHIF scribbles: raw voxels, image order
            from monailabel.datastore.utils.convert import binary_to_image

            label_filename = binary_to_image(image_path, label_filename)
        label = checked_label(image_path, label_filename)
        info = dict(label_info or {})
        if label_tag == FINAL:
            if self._read_only:
                raise HTTPException(status_code=403, detail="the datastore is read-only (MONAI_LABEL_DATASTORE_"
                                                            "READ_ONLY): no DICOM SEG is stored")
            names = self._segment_names(label, info)
            seg = label_to_seg(label, self._source_headers(image_id), names, creator=str(info.get("user") or ""))
            self._stow(seg)
            info.update({"SeriesInstanceUID": str(seg.SeriesInstanceUID), "SOPInstanceUID": str(seg.SOPInstanceUID),
                         "StudyInstanceUID": str(seg.StudyInstanceUID), "label_names": names, "source": "dicomweb"})
            self._seg_refs[str(seg.SeriesInstanceUID)] = image_id
            self._ttl.clear("segs")
        path = self._label_path(image_id, label_tag)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _atomic_write_image(label, path, self._tmp_root)
        self._register(image_id, label=(label_tag, info))
        return image_id

    def remove_label(self, label_id: str, label_tag: str) -> None:
        if label_tag == FINAL:
            raise HTTPException(status_code=405, detail="final labels are DICOM SEG series on the DICOMweb server: "
                                                        "remove them there")
        LocalDatastore.remove_label(self, label_id, label_tag)

    def _source_headers(self, image_id: str) -> List[Dataset]:
        folder = os.path.join(self._dicom_root, image_id)
        if not os.path.isdir(folder):  # cache cleaned: fetch the series again
            self._download_series(self._series(image_id))
        return [pydicom.dcmread(os.path.join(folder, f), stop_before_pixels=True)
                for f in sorted(os.listdir(folder)) if f.endswith(".dcm")]

    def _segment_names(self, label: sitk.Image, info: Dict[str, Any]) -> Dict[str, int]:
        """{name: value} for every value in the label: label_info [{"name", "idx"}] (MONAI Label / Slicer), then
        label_names {name: value}, then the app's labels; unnamed values become "label <v>"."""
        values = [int(v) for v in np.unique(sitk.GetArrayViewFromImage(label)) if v != 0]
        by_value: Dict[int, str] = {}
        positional = []
        for entry in info.get("label_info") or []:
            if not isinstance(entry, dict) or not entry.get("name"):
                continue
            idx = next((entry[k] for k in ("idx", "id", "labelID", "value") if entry.get(k) is not None), None)
            if idx is None:
                positional.append(str(entry["name"]))
            else:
                by_value.setdefault(int(idx), str(entry["name"]))
        for value, name in zip([v for v in values if v not in by_value], positional):
            by_value[value] = name
        for source in (info.get("label_names") or {}, self._label_names):
            for name, value in source.items():
                by_value.setdefault(int(value), str(name))
        out: Dict[str, int] = {}
        for v in values:  # one name per value, even when a client sends duplicates
            name = by_value.get(v, f"label {v}")
            out[name if name not in out else f"{name} ({v})"] = v
        return out

    def _stow(self, seg: Dataset) -> None:
        with _pacs("STOW-RS of the DICOM SEG"):
            result = self._client.store_instances([seg])
        failed = result.get("FailedSOPSequence") if result is not None else None
        if failed:
            raise HTTPException(status_code=502, detail="the DICOMweb server refused the DICOM SEG "
                                                        f"(FailureReason {failed[0].get('FailureReason')})")

    # ------------------------------------------------------------------ training and status
    def datalist(self, full_path: bool = True) -> List[Dict[str, Any]]:
        """Image/label NIfTI pairs of every labelled series (retrieves and converts what is not cached yet)."""
        labelled = self.get_labeled_images()
        with FileLock(self._lock_file):  # a SEG deleted on the server: its cached label must not be trained on
            stale = [i for i, obj in self._datastore.objects.items() if FINAL in obj.labels and i not in labelled]
            for image_id in stale:
                del self._datastore.objects[image_id].labels[FINAL]
                if os.path.exists(self._label_path(image_id)):
                    os.unlink(self._label_path(image_id))
            if stale:
                self._update_datastore_file(lock=False)
        out = []
        for image_id in labelled:
            label = self.get_label_uri(image_id, FINAL)
            if label:
                out.append({"image": self.get_image_uri(image_id), "label": label})
        if not full_path:
            root = os.path.realpath(self._datastore_path) + os.sep
            out = [{k: v.replace(root, "") for k, v in d.items()} for d in out]
        return out

    def status(self) -> Dict[str, Any]:
        tags: Dict[str, int] = {}
        for obj in self._datastore.objects.values():
            for tag in obj.labels:
                if tag != FINAL:
                    tags[tag] = tags.get(tag, 0) + 1
        labelled = self.get_labeled_images()
        tags[FINAL] = len(labelled)
        return {"total": len(self.list_images()), "completed": len(labelled), "label_tags": tags,
                "dicomweb": self._client.base_url, "cached": len(self._datastore.objects)}

    def json(self) -> Dict[str, Any]:
        """Like LocalDatastore.json, for every series on the server (cached or not)."""
        segs = {s["image"]: s["seg"] for s in self._segs()}
        objects = {}
        for image_id in self.list_images():
            obj = self._datastore.objects.get(image_id)
            labels = {t: {"ext": m.ext, "info": m.info} for t, m in (obj.labels.items() if obj else []) if t != FINAL}
            if image_id in segs:
                labels[FINAL] = {"ext": ".nii.gz", "info": {"SeriesInstanceUID": segs[image_id]}}
            objects[image_id] = {"image": {"ext": ".nii.gz", "info": self.get_image_info(image_id)}, "labels": labels}
        return {"name": self.name(), "description": self.description(), "objects": objects}


# ---------------------------------------------------------------------- factory (MedPLIBApp.init_datastore)
def _search_filter(conf: Dict[str, str]) -> Optional[Dict[str, Any]]:
    """--conf dicomweb_filter, else MONAI_LABEL_DICOMWEB_SEARCH_FILTER unless it is MONAI Label's stock {"Modality":
    "CT"} (start_server exports every setting, so "set by the user" cannot be told apart), else CT + MR (None)."""
    raw = conf.get("dicomweb_filter")
    if raw is None:
        stock = dict(settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER or {})
        return None if stock == {"Modality": "CT"} else stock
    parsed = json.loads(raw) if raw.strip() not in ("", "none") else {}
    if not isinstance(parsed, dict):
        raise ValueError(f"--conf dicomweb_filter must be a JSON object, got {raw!r}")
    return parsed


def dicomweb_datastore(url: str, labels: Optional[Dict[str, int]] = None,
                       conf: Optional[Dict[str, str]] = None) -> MedPLIBDICOMwebDatastore:
    """The datastore for `--studies http(s)://.../dicom-web`, configured from MONAI Label's settings and `--conf`:
    dicomweb_filter (JSON QIDO filter; "{}" = every image series), dicomweb_cache_ttl (seconds, default 30).
    Credentials: MONAI_LABEL_DATASTORE_USERNAME/PASSWORD (or the DICOMWEB_ ones); Google Healthcare by URL."""
    conf = dict(conf or {})
    url = url.rstrip("/").strip()
    timeout = (10.0, float(os.environ.get("MEDPLIB_DICOMWEB_TIMEOUT", "300")))
    if "googleapis.com" in url:
        from dicomweb_client.ext.gcp.session_utils import create_session_from_gcp_credentials
        from dicomweb_client.api import DICOMwebClient

        client: Any = DICOMwebClient(url=url, session=create_session_from_gcp_credentials())
    else:
        session = _TimeoutSession(timeout)
        user = settings.MONAI_LABEL_DATASTORE_USERNAME or settings.MONAI_LABEL_DICOMWEB_USERNAME
        password = settings.MONAI_LABEL_DATASTORE_PASSWORD or settings.MONAI_LABEL_DICOMWEB_PASSWORD
        if user and password:
            session.auth = (user, password)
        client = DICOMwebClientX(url=url, session=session, qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
                                 wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
                                 stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX)
    # dicomweb-client retries every failure (even "connection refused") 5 times over ~30 s; 3 tries over ~3 s
    # still ride out a busy PACS (429/503) without stalling each request when it is down.
    client.set_http_retry_params(max_attempts=3, wait_exponential_multiplier=500)
    cache = (settings.MONAI_LABEL_DATASTORE_CACHE_PATH or settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip()
    return MedPLIBDICOMwebDatastore(client, search_filter=_search_filter(conf), cache_path=cache or None,
                                    label_names=labels, read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
                                    cache_ttl_s=float(conf.get("dicomweb_cache_ttl", "30")))
