"""Static checks of the 3D Slicer module `slicer_extension/MedPLIBLabel` that run without Slicer.

3D Slicer cannot be installed in this environment (no Slicer binary, no display), so nothing here runs the widget.
These tests only catch what can be checked from the outside (plus one import of the module against stand-ins for
slicer/qt/vtk, in a subprocess):

"The module" is `MedPLIBLabel.py` plus the Slicer-side package `MedPLIBLabelSlicer/` (logic, widget sections,
self-test), which `MedPLIBLabel.py` imports.

* every .py file parses with Python 3.9 syntax (Slicer <= 5.8 ships 3.9); the module declares the four
  scripted-module classes, `MedPLIBLabel.py` has `MedPLIBLabelWidget` itself and imports `MedPLIBLabelLogic` and
  `MedPLIBLabelTest` into its namespace (where Slicer looks for `<Module>Test`), and the help text carries the
  "not for clinical use" disclaimer;
* `MedPLIBLabel.py` is the only .py file at the top of the module folder (Slicer loads every top-level .py file of a
  module folder as a module); no .py file has 600 lines or more, no Lib file 400 or more;
* the Qt Designer file is well-formed XML, and every `self.ui.<name>` the widget code uses (and every button name
  the Lib's `button_states` returns) is a widget there;
* every signal handler the widget connects, and every `self.<method>()` it calls, is defined (in the widget or its
  mixins); no file uses a name it never defines or imports;
* names the module imports from `MedPLIBLabelLib` exist, keyword arguments passed to Lib functions and clients
  match their signatures, and the result/info attributes it reads exist (the pure-Python Lib *is* imported);
* the module imports nothing heavy at module level (only the stdlib, numpy, slicer/qt/ctk/vtk and the packages);
* both CMakeLists.txt list every .py file and resource that exists, and only those; the developer reload knows
  every package module;
* the icon is a valid 128x128 PNG;
* the README explains the install and how to run the self-test headless.

The GUI itself (Qt widgets, markups placement, segments, Ctrl+Z) is exercised only by the in-Slicer self-test
`MedPLIBLabelTest` (see slicer_extension/README.md), which needs a Slicer installation and a running server.
"""

from __future__ import annotations

import ast
import inspect
import re
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXT = ROOT / "slicer_extension"
MOD_DIR = EXT / "MedPLIBLabel"
MODULE = MOD_DIR / "MedPLIBLabel.py"
LIB = MOD_DIR / "MedPLIBLabelLib"
SLICER_PKG = MOD_DIR / "MedPLIBLabelSlicer"
SLICER_FILES = [MODULE, *sorted(SLICER_PKG.glob("*.py"))]  # the module's code that needs Slicer
MAX_LINES = 600  # project rule: no file over ~600 lines (the module stays thin, logic goes to the Lib)
MAX_LIB_LINES = 400
UI = MOD_DIR / "Resources" / "UI" / "MedPLIBLabel.ui"
ICON = MOD_DIR / "Resources" / "Icons" / "MedPLIBLabel.png"
README = EXT / "README.md"

SLICER_MODULES = {"slicer", "qt", "ctk", "vtk"}
LIGHT_THIRD_PARTY = {"numpy"}  # ships with Slicer; the Lib needs it anyway
HEAVY = {"torch", "SimpleITK", "sitkUtils", "monai", "monailabel", "skimage", "scipy", "PIL", "requests",
         "nibabel", "pandas", "matplotlib", "cv2", "transformers", "medplib", "medplib_label"}
# Extra `/infer` params build_infer_params passes through (infers/request.py); any other keyword is a typo.
SERVER_EXTRA_PARAMS = {"max_new_tokens", "threshold", "largest_cc", "result_extension", "refine"}
# Methods that widget/logic/test classes inherit from Slicer's base classes (not defined in the module).
INHERITED = {"resourcePath", "addObserver", "removeObserver", "removeObservers", "hasObserver", "observer",
             "getParameterNode", "delayDisplay", "takeScreenshot", "fail", "setUp", "tearDown",
             "assertEqual", "assertTrue", "assertFalse", "assertIn", "assertGreater", "assertIsNotNone",
             "assertIsNone", "assertRaises", "assertAlmostEqual", "assertLess", "assertIsNot", "skipTest"}


def _parse(path: Path) -> ast.Module:
    module = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(module):
        node._file = path.name  # for messages: which file a node comes from
    return module


def _at(node: ast.AST) -> str:
    return f"{getattr(node, '_file', '?')}:{getattr(node, 'lineno', '?')}"


@pytest.fixture(scope="module")
def trees() -> dict[Path, ast.Module]:
    return {path: _parse(path) for path in SLICER_FILES}


@pytest.fixture(scope="module")
def tree(trees) -> ast.Module:
    """The module's Slicer-side files as one AST (their top-level statements concatenated)."""
    return ast.Module(body=[stmt for t in trees.values() for stmt in t.body], type_ignores=[])


@pytest.fixture(scope="module")
def class_files(trees) -> dict[str, Path]:
    return {node.name: path for path, t in trees.items() for node in t.body if isinstance(node, ast.ClassDef)}


@pytest.fixture(scope="module")
def classes(tree) -> dict[str, ast.ClassDef]:
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


@pytest.fixture(scope="module")
def lib():
    sys.path.insert(0, str(MOD_DIR))
    try:
        import MedPLIBLabelLib  # noqa: F401  (pure Python: stdlib + numpy)
        import MedPLIBLabelLib.client
        import MedPLIBLabelLib.codec
        yield MedPLIBLabelLib
    finally:
        sys.path.remove(str(MOD_DIR))


def _ui_widgets() -> dict[str, str]:
    root = ET.parse(UI).getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


def _self_ui_names(tree: ast.AST) -> set[str]:
    """`X` of every `self.ui.X` in the module."""
    names = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"):
            names.add(node.attr)
    return names


def _methods(cls: ast.ClassDef) -> set[str]:
    return {n.name for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _lib_imports(tree: ast.Module) -> dict[str, str]:
    """{local name: module} of `from MedPLIBLabelLib[.x] import ...` at module level (of any of the files)."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "MedPLIBLabelLib":
            for alias in node.names:
                out[alias.asname or alias.name] = node.module
    return out


def _cmake_list(text: str, var: str) -> list[str]:
    m = re.search(r"set\(\s*" + var + r"\s+(.*?)\)", text, re.S)
    assert m, f"{var} not set"
    items = [line.split("#")[0].strip() for line in m.group(1).splitlines()]
    return [i.replace("${MODULE_NAME}", "MedPLIBLabel") for i in items if i]


# ---------------------------------------------------------------------------------------------------- module
def test_module_and_lib_parse_as_python39():
    paths = sorted(EXT.rglob("*.py"))
    assert MODULE in paths and len(paths) >= len(SLICER_FILES) + 8
    for path in paths:
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))


def test_every_python_file_is_small():
    """The size rule: every .py file of the extension stays under 600 lines, every Lib file under 400."""
    for path in sorted(EXT.rglob("*.py")):
        limit = MAX_LIB_LINES if path.parent == LIB else MAX_LINES
        n = len(path.read_text(encoding="utf-8").splitlines())
        assert n < limit, f"{path.relative_to(EXT)} has {n} lines (limit {limit}): split it or move logic to the Lib"


def test_only_the_module_file_sits_at_the_top_of_the_module_folder():
    # Slicer's scripted-module factory loads EVERY top-level .py file of a module path as a module named after the
    # file (and fails for one without such a class); helper code must live in a package folder.
    assert sorted(p.name for p in MOD_DIR.glob("*.py")) == ["MedPLIBLabel.py"]
    assert (SLICER_PKG / "__init__.py").is_file() and (LIB / "__init__.py").is_file()


def test_scripted_module_classes(classes):
    expected = {"MedPLIBLabel": "ScriptedLoadableModule", "MedPLIBLabelWidget": "ScriptedLoadableModuleWidget",
                "MedPLIBLabelLogic": "ScriptedLoadableModuleLogic", "MedPLIBLabelTest": "ScriptedLoadableModuleTest"}
    for name, base in expected.items():
        assert name in classes, f"class {name} missing"
        bases = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in classes[name].bases]
        assert base in bases, f"{name} must derive from {base}, has {bases}"
    assert "VTKObservationMixin" in [getattr(b, "id", "") for b in classes["MedPLIBLabelWidget"].bases]
    widget = _methods(classes["MedPLIBLabelWidget"])
    assert {"setup", "cleanup", "enter", "exit"} <= widget
    test = _methods(classes["MedPLIBLabelTest"])
    assert {"setUp", "runTest"} <= test and any(m.startswith("test_") for m in test)


def test_module_file_defines_the_widget_and_exposes_logic_and_test(trees):
    """Slicer instantiates <Module> and <Module>Widget from MedPLIBLabel.py, and ScriptedLoadableModule.runTest /
    slicer.testing.runUnitTest look for <Module>Test in the module's own namespace: MedPLIBLabel.py must define
    or import all of them at module level."""
    module = trees[MODULE]
    defined = {n.name for n in module.body if isinstance(n, ast.ClassDef)}
    assert {"MedPLIBLabel", "MedPLIBLabelWidget"} <= defined
    imported = {}
    for node in module.body:
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                imported[alias.asname or alias.name] = node.module
    assert imported.get("MedPLIBLabelTest") == "MedPLIBLabelSlicer.selftest"
    assert imported.get("MedPLIBLabelLogic") == "MedPLIBLabelSlicer.logic"
    for name, path in (("MedPLIBLabelTest", SLICER_PKG / "selftest.py"),
                       ("MedPLIBLabelLogic", SLICER_PKG / "logic.py")):
        assert name in {n.name for n in trees[path].body if isinstance(n, ast.ClassDef)}
    # No cycle: the package never imports the module file (it is loaded under the module's name by Slicer).
    for path in SLICER_FILES[1:]:
        for node in ast.walk(trees[path]):
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "MedPLIBLabel", f"{_at(node)} imports MedPLIBLabel"
            elif isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] != "MedPLIBLabel" for a in node.names), _at(node)


def test_module_metadata_and_disclaimer(classes, tree):
    init = next(n for n in classes["MedPLIBLabel"].body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    assigned = {t.attr for n in ast.walk(init) if isinstance(n, ast.Assign) for t in n.targets
                if isinstance(t, ast.Attribute)}
    assert {"title", "categories", "contributors", "helpText", "acknowledgementText"} <= assigned
    source = MODULE.read_text(encoding="utf-8")
    assert '["Segmentation"]' in source
    assert re.search(r"not for clinical use", source, re.I), "helpText/UI must say 'not for clinical use'"
    assert re.search(r"not for clinical use", UI.read_text(encoding="utf-8"), re.I)


def test_self_test_uses_env_url_sample_data_and_undo(classes, class_files):
    path = class_files["MedPLIBLabelTest"]
    src = ast.get_source_segment(path.read_text(encoding="utf-8"), classes["MedPLIBLabelTest"])
    # Issue #19: the self-test drives the widget (placement, Ask, polling, answer, Ctrl+Z's handler, Submit, Next
    # sample), skips without a server (ctest registers it) and removes the image it uploaded.
    for needle in ("MEDPLIB_LABEL_URL", "MRHead", "addVolumeFromArray", '"Red"', "onUndo", "read_slice",
                   "skipTest", "remove_image", "slicer.modules.MedPLIBLabelWidget", "AddControlPointWorld",
                   "runOnPlacementCheckBox", "askButton", "onPoll", "submitLabelButton", "nextSampleButton",
                   "testConnectionButton", "history.turns"):
        assert needle in src, f"self-test should use {needle}"
    assert "self.fail(" not in src, "no server must skip the test, not fail it"


def _src(*names: str) -> str:
    return "\n".join((MOD_DIR / n).read_text(encoding="utf-8") for n in names)


def test_issue19_slicer_side_calls():
    """What can only run inside Slicer, checked for presence (the Lib parts are tested against the real server):
    closed surfaces rebuilt, slice answers written in place, label geometry checked, uploads and labels written
    in the worker, result files in the module's temp dir, stale box nodes removed, parameter node, shown volume,
    Ctrl+Z after Reload, i18n, Next-sample errors in a dialog, Segment Editor bound to the shared node."""
    logic = _src("MedPLIBLabelSlicer/logic.py")
    for needle in ("ContainsRepresentation(", "CreateClosedSurfaceRepresentation()", "arrayFromSegmentInternalBinary"
                   "Labelmap(", "write_plane_inplace(", "restore_plane_inplace(", "check_label_geometry(",
                   "pick_segment_color(", "segment_targets(", "stale_box_nodes(", "GetSingletonNode(\"SegmentEditor\"",
                   "GetBackgroundVolumeID()", "wrapParameterNode("):
        assert needle in logic, needle
    assert "segment_color(result" not in logic and "UseCompressionOn" not in logic and "saveVolume" not in logic
    widget = _src("MedPLIBLabel.py", "MedPLIBLabelSlicer/server_sections.py", "MedPLIBLabelSlicer/interaction.py")
    for needle in ("make_temp_dir(slicer.app.temporaryPath)", "on_discard=discard_result", "infer_with_region,",
                   "upload_volume_array,", "submit_label_array,", "if self.parent.isEntered:", "connectGui(self.ui)",
                   "from slicer.i18n import tr as _", "errorDisplay(_(\"The next sample could not be loaded",
                   "setMRMLSegmentEditorNode(self.logic.segmentEditorNode())", "settingsDialog().addPanel(",
                   "autoFetchNextSample", "showIn3D", "shortcut_help()", "available_modes"):
        assert needle in widget, needle
    assert "import tempfile" not in widget and "tempfile." not in widget  # never the system temp folder
    assert "POLL_MS = 100" not in widget


def test_parameter_node_fields_are_bound_in_the_ui():
    params = _src("MedPLIBLabelSlicer/parameters.py")
    fields = set(re.findall(r"^        (\w+): ", params, re.M))
    assert {"inputVolume", "segmentation", "model", "targetMode"} <= fields
    root = ET.parse(UI).getroot()
    bound = {}
    for w in root.iter("widget"):
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = w.get("name")
    assert bound == {"inputVolume": "inputVolumeSelector", "segmentation": "segmentationSelector"}
    assert set(bound) <= fields


def test_every_shortcut_has_a_widget_handler(classes, lib):
    from MedPLIBLabelLib.interaction import SHORTCUTS

    methods = set()
    for name in ("MedPLIBLabelWidget", "ServerSectionsMixin", "InteractionMixin"):
        methods |= _methods(classes[name])
    for key, method, _text in SHORTCUTS:
        assert method in methods, (key, method)
    widgets = _ui_widgets()
    for name in ("runOnPlacementCheckBox", "shortcutsLabel", "targetComboBox", "modeComboBox",
                 "segmentEditorWidget"):
        assert name in widgets, name
    assert widgets["segmentEditorWidget"] == "qMRMLSegmentEditorWidget"


_STUB_IMPORT = r"""
import importlib, sys, types, unittest
# Stand-ins for what Slicer provides; the classes mirror the base classes' constructors.
slicer = types.ModuleType("slicer")
slm = types.ModuleType("slicer.ScriptedLoadableModule")
util = types.ModuleType("slicer.util")
class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent
class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent
class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        pass
class ScriptedLoadableModuleTest(unittest.TestCase):
    pass
class VTKObservationMixin:
    def __init__(self):
        self.Observations = []
for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic,
            ScriptedLoadableModuleTest):
    setattr(slm, cls.__name__, cls)
util.VTKObservationMixin = VTKObservationMixin
slicer.ScriptedLoadableModule, slicer.util = slm, util
slicer.app = types.SimpleNamespace(connect=lambda *args: None)  # the module registers its settings panel
ctk = types.ModuleType("ctk")
ctk.ctkSettingsPanel = type("ctkSettingsPanel", (), {})
sys.modules.update({"slicer": slicer, "slicer.ScriptedLoadableModule": slm, "slicer.util": util,
                    "qt": types.ModuleType("qt"), "vtk": types.ModuleType("vtk"), "ctk": ctk})
sys.path.insert(0, sys.argv[1])

module = importlib.import_module("MedPLIBLabel")
# ScriptedLoadableModule.runTest: getattr(importlib.import_module(<module>), <Module> + "Test")
test_cls = getattr(module, "MedPLIBLabelTest")
assert issubclass(test_cls, ScriptedLoadableModuleTest)
assert issubclass(module.MedPLIBLabelLogic, ScriptedLoadableModuleLogic)
# slicer.testing.runUnitTest(path, "MedPLIBLabel"): unittest loads the tests from the module.
def flat(suite):
    for t in suite:
        yield from (flat(t) if isinstance(t, unittest.TestSuite) else [t])
ids = [t.id() for t in flat(unittest.TestLoader().loadTestsFromName("MedPLIBLabel"))]
assert "MedPLIBLabelSlicer.selftest.MedPLIBLabelTest.test_MedPLIBLabel_AskAndUndo" in ids, ids
assert "MedPLIBLabelSlicer.selftest.MedPLIBLabelTest.test_MedPLIBLabel_Geometry" in ids, ids
mod = module.MedPLIBLabel(types.SimpleNamespace())
assert mod.parent.title == "MedPLIB Label" and "not for clinical use" in mod.parent.helpText
widget = module.MedPLIBLabelWidget(None)
assert widget.runner is not None and widget.undoStack is not None and widget.logic is None
mro = [c.__name__ for c in type(widget).__mro__]
assert "ServerSectionsMixin" in mro and "InteractionMixin" in mro and "VTKObservationMixin" in mro, mro
assert hasattr(module.MedPLIBLabel, "registerSettingsPanel")
import MedPLIBLabelSlicer.parameters as parameters  # no slicer.parameterNodeWrapper here: the plain-node fallback
assert parameters.HAS_WRAPPER is False and parameters.wrapParameterNode("node") == "node"
module.MedPLIBLabelLogic()
print("OK", len(ids))
"""


def test_module_imports_and_exposes_its_classes_with_stand_ins_for_slicer():
    """Import MedPLIBLabel.py (and so MedPLIBLabelSlicer) against minimal slicer/qt/vtk stand-ins: no import error or
    cycle, Slicer's lookups (<Module>Test in the module, unittest discovery) find the self-test, the widget's
    constructor works with its mixins."""
    r = subprocess.run([sys.executable, "-c", _STUB_IMPORT, str(MOD_DIR)], capture_output=True, text=True,
                       timeout=60, cwd=str(ROOT), env={**os.environ, "PYTHONPATH": ""})
    assert r.returncode == 0 and r.stdout.startswith("OK"), r.stdout + r.stderr


# ---------------------------------------------------------------------------------------------------- UI
def test_ui_is_well_formed_and_unique():
    root = ET.parse(UI).getroot()
    assert root.tag == "ui"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "MedPLIBLabel"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "duplicate objectName in the .ui"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    qt_builtin = {c for c in used if c.startswith("Q")}
    assert used - qt_builtin <= declared, f"undeclared custom widgets: {used - qt_builtin - declared}"
    for conn in root.iter("connection"):
        assert conn.findtext("sender") in names and conn.findtext("receiver") in names


def test_widget_code_uses_only_widgets_in_the_ui(tree, lib):
    from MedPLIBLabelLib import button_states

    widgets = _ui_widgets()
    used = _self_ui_names(tree)
    assert used, "the widget looks nothing up in self.ui"
    missing = sorted(used - set(widgets))
    assert not missing, f"self.ui names not in MedPLIBLabel.ui: {missing}"
    # updateButtons sets `getattr(self.ui, name).enabled` for the names the Lib's button_states returns.
    buttons = set(button_states(connected=True, busy=False, has_volume=True, has_model=True, can_undo=True,
                                has_segmentation=True))
    assert buttons and buttons <= set(widgets), f"button_states names not in the .ui: {buttons - set(widgets)}"
    used |= buttons
    # The controls the issue asks for are there.
    for name in ("serverComboBox", "tokenLineEdit", "testConnectionButton", "modelComboBox", "strategyComboBox",
                 "nextSampleButton", "uploadVolumeButton", "positivePointsPlaceWidget", "negativePointsPlaceWidget",
                 "boxPlaceWidget", "scribblePlaceWidget", "lassoPlaceWidget", "questionLineEdit", "askButton",
                 "segmentVolumeButton", "undoButton", "cancelButton", "chatBrowser", "submitLabelButton",
                 "trainButton", "trainingStatusLabel"):
        assert name in used, f"{name} is not used by the widget"
    assert widgets["positivePointsPlaceWidget"] == "qSlicerMarkupsPlaceWidget"
    assert widgets["inputVolumeSelector"] == "qMRMLNodeComboBox"
    assert "UI/MedPLIBLabel.ui" in MODULE.read_text(encoding="utf-8")


def _local_bases(cls: ast.ClassDef, classes: dict[str, ast.ClassDef]) -> list[str]:
    return [b.id for b in cls.bases if isinstance(b, ast.Name) and b.id in classes]


def test_connected_handlers_and_self_calls_exist(tree, classes):
    # The widget's mixins (e.g. ServerSectionsMixin) are checked as part of the widget: together they are one object.
    widget_family = ["MedPLIBLabelWidget", *_local_bases(classes["MedPLIBLabelWidget"], classes)]
    assert len(widget_family) > 1, "MedPLIBLabelWidget is expected to mix in the widget sections of MedPLIBLabelSlicer"
    families = {name: widget_family for name in widget_family}
    for cls_name in ("MedPLIBLabelLogic", "MedPLIBLabelTest"):
        families[cls_name] = [cls_name, *_local_bases(classes[cls_name], classes)]
    for cls_name, family in families.items():
        cls = classes[cls_name]
        methods = set().union(*(_methods(classes[c]) for c in family)) | INHERITED
        for node in ast.walk(cls):
            # self.method(...) calls
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "self"):
                name = node.func.attr
                if name not in ("logic", "ui", "client", "runner", "statusRunner", "history", "undoStack"):
                    assert name in methods, f"{_at(node)} {cls_name}: self.{name}() is not defined"
            # x.connect("signal", self.handler) and addObserver(..., self.handler)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("connect", "addObserver", "removeObserver"):
                handler = node.args[-1] if node.func.attr == "connect" else (
                    node.args[2] if len(node.args) > 2 else None)
                if isinstance(handler, ast.Attribute) and isinstance(handler.value, ast.Name) \
                        and handler.value.id == "self":
                    assert handler.attr in methods, \
                        f"{_at(node)} {cls_name}: handler self.{handler.attr} is not defined"


def _bound_names(module: ast.Module) -> set[str]:
    """Every name a file binds anywhere (imports, defs, arguments, assignment/loop/with/except targets)."""
    bound = set()
    for node in ast.walk(module):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arguments):
            bound |= {a.arg for a in node.posonlyargs + node.args + node.kwonlyargs}
            bound |= {a.arg for a in (node.vararg, node.kwarg) if a is not None}
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.add(node.id)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            bound |= set(node.names)
    return bound


def test_no_undefined_names(trees):
    """A name a file reads but never defines or imports (e.g. a helper that moved to the Lib under a new name) would
    only fail inside Slicer, at the moment that code runs."""
    import builtins

    for path, module in trees.items():
        known = _bound_names(module) | set(dir(builtins)) | {"__file__", "__name__"}
        for node in ast.walk(module):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                assert node.id in known, f"{_at(node)}: {node.id} is not defined or imported"


# ---------------------------------------------------------------------------------------------------- Lib API
def test_lib_names_imported_by_the_module_exist(tree, lib):
    import importlib

    imports = _lib_imports(tree)
    assert imports, "the module should use MedPLIBLabelLib"
    for name, module in imports.items():
        mod = importlib.import_module(module)
        assert hasattr(mod, name), f"{module} has no {name}"


def test_keyword_arguments_match_lib_signatures(tree, lib):
    import importlib

    imports = _lib_imports(tree)
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in imports):
            continue
        obj = getattr(importlib.import_module(imports[node.func.id]), node.func.id)
        if not callable(obj) or isinstance(obj, type) and issubclass(obj, BaseException):
            continue
        sig = inspect.signature(obj)
        kwargs = {k.arg: None for k in node.keywords if k.arg}
        if node.func.id == "build_infer_params":
            # build_infer_params(**extra) forwards unknown keywords to the server: a typo would be sent silently.
            named = {n for n, p in sig.parameters.items() if p.kind is not p.VAR_KEYWORD}
            stray = set(kwargs) - named - SERVER_EXTRA_PARAMS
            assert not stray, f"{_at(node)}: {node.func.id} gets unknown keywords {sorted(stray)}"
        args = [None] * sum(1 for a in node.args if not isinstance(a, ast.Starred))
        try:
            sig.bind(*args, **kwargs)
        except TypeError as exc:
            pytest.fail(f"{_at(node)}: {node.func.id}{sig} cannot take {len(args)} args + {sorted(kwargs)}: "
                        f"{exc}")


def test_client_methods_and_result_fields_used_exist(tree, lib):
    from MedPLIBLabelLib import InferResult, MedPLIBClient, ServerInfo
    from MedPLIBLabelLib.history import ChatHistory, UndoEntry, UndoStack
    from MedPLIBLabelLib.jobs import BackgroundJob, JobRunner

    client = MedPLIBClient("http://127.0.0.1:9")  # never contacted
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and (
                (isinstance(node.value, ast.Name) and node.value.id == "client")
                or (isinstance(node.value, ast.Attribute) and node.value.attr == "client")):
            used.add(node.attr)
    assert used, "no client calls found"
    for name in used:
        assert hasattr(client, name), f"MedPLIBClient has no {name}"
    # Passing timeout= to client.infer through the job runner.
    assert "timeout" in inspect.signature(MedPLIBClient.infer).parameters
    for name in ("upload_image", "download_image", "next_sample", "save_label", "train", "train_status",
                 "stop_training", "test_connection"):
        assert hasattr(client, name)
    fields = set(InferResult.__dataclass_fields__)
    for name in ("answer", "label_path", "label_names", "task", "latency_ms", "seg_count"):
        assert name in fields
    fields |= {n for n in dir(InferResult) if not n.startswith("_")}  # properties (has_masks)
    assert isinstance(InferResult.has_masks, property)
    # Every attribute read from an answer (`result.x`), the server info (`self.serverInfo.x`, `info.x`) and an undo
    # entry (`entry.x`) exists in the Lib's classes.
    info_attrs = set(ServerInfo.__dataclass_fields__) | {n for n in dir(ServerInfo) if not n.startswith("_")}
    entry_attrs = set(UndoEntry.__dataclass_fields__) | {"nbytes"}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        if isinstance(node.value, ast.Name) and node.value.id == "result":
            assert node.attr in fields, f"{_at(node)}: InferResult has no {node.attr}"
        if (isinstance(node.value, ast.Attribute) and node.value.attr == "serverInfo"
                or isinstance(node.value, ast.Name) and node.value.id == "info"):
            assert node.attr in info_attrs, f"{_at(node)}: ServerInfo has no {node.attr}"
        if isinstance(node.value, ast.Name) and node.value.id == "entry":
            assert node.attr in entry_attrs, f"{_at(node)}: UndoEntry has no {node.attr}"
    info_fields = set(ServerInfo.__dataclass_fields__) | {"summary"}
    for name in ("models", "labels", "strategies", "trainers", "medplib"):
        assert name in info_fields
    for obj, names in ((JobRunner(), ("submit", "poll", "cancel", "busy", "show_progress", "status_text")),
                       (UndoStack(), ("push", "pop_group", "clear")),
                       (ChatHistory(), ("record", "to_html", "clear"))):
        for name in names:
            assert hasattr(obj, name), f"{type(obj).__name__} has no {name}"
    for name in ("done", "result", "cancel", "name"):
        assert hasattr(BackgroundJob, name) or name == "name"
    assert {"segment_id", "axis", "index", "previous", "group", "created"} <= set(UndoEntry.__dataclass_fields__)
    assert "on_done" in inspect.signature(JobRunner.submit).parameters
    assert "created" in inspect.signature(UndoStack.push).parameters
