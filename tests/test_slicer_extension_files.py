"""Static checks of the Slicer extension's files that run without Slicer: what the module imports at top level,
the CMake lists, the icon and the README (the module's code and UI: `test_slicer_module_static.py`)."""

from __future__ import annotations

import ast
import inspect
import re
import struct
import sys
import zlib

from .test_slicer_module_static import (  # noqa: F401  (fixtures are used by name)
    EXT,
    HEAVY,
    ICON,
    LIB,
    LIGHT_THIRD_PARTY,
    MOD_DIR,
    README,
    SLICER_MODULES,
    SLICER_PKG,
    _cmake_list,
    lib,
    tree,
    trees,
)


# ---------------------------------------------------------------------------------------------------- imports
def _top_level_imports(tree: ast.Module) -> list[tuple[str, int]]:
    out = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            out += [(a.name.split(".")[0], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            out.append(((node.module or "").split(".")[0], node.lineno))
    return out


def test_module_imports_nothing_heavy_at_top_level(tree):
    allowed = set(sys.stdlib_module_names) | SLICER_MODULES | LIGHT_THIRD_PARTY | {"MedPLIBLabelLib", "__future__",
                                                                                "MedPLIBLabelSlicer"}
    for name, line in _top_level_imports(tree):
        assert name not in HEAVY, f"line {line}: heavy import {name} at module level"
        assert name in allowed, f"line {line}: unexpected module-level import {name}"


def test_lib_imports_no_slicer_or_heavy_modules():
    allowed = set(sys.stdlib_module_names) | LIGHT_THIRD_PARTY | {"__future__"}
    for path in sorted(LIB.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [(node.module or "").split(".")[0]]
            for name in names:
                assert name in allowed, f"{path.name}:{node.lineno} imports {name}"


# ---------------------------------------------------------------------------------------------------- CMake
def test_module_cmake_lists_every_lib_file_and_resource():
    text = (MOD_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = _cmake_list(text, "MODULE_PYTHON_SCRIPTS")
    resources = _cmake_list(text, "MODULE_PYTHON_RESOURCES")
    on_disk_py = {p.relative_to(MOD_DIR).as_posix() for p in MOD_DIR.rglob("*.py")}
    assert {"MedPLIBLabel.py", "MedPLIBLabelLib/__init__.py", "MedPLIBLabelSlicer/logic.py"} <= on_disk_py
    assert set(scripts) == on_disk_py, (f"missing from CMake: {sorted(on_disk_py - set(scripts))}; "
                                        f"listed but absent: {sorted(set(scripts) - on_disk_py)}")
    on_disk_res = {p.relative_to(MOD_DIR).as_posix() for p in (MOD_DIR / "Resources").rglob("*") if p.is_file()}
    assert set(resources) == on_disk_res, (f"missing from CMake: {sorted(on_disk_res - set(resources))}; "
                                           f"listed but absent: {sorted(set(resources) - on_disk_res)}")
    assert "slicerMacroBuildScriptedModule" in text and "NAME ${MODULE_NAME}" in text
    assert "WITH_GENERIC_TESTS" in text and "slicer_add_python_unittest" in text


def test_developer_reload_knows_every_package_module(lib):
    """The widget's "Reload" reloads the packages' modules in a fixed dependency order: every file is in it."""
    import MedPLIBLabelLib.ui_state as ui_state

    assert sorted(ui_state.LIB_MODULE_ORDER) == sorted(p.stem for p in LIB.glob("*.py") if p.stem != "__init__")
    slicer_order = inspect.signature(ui_state.reload_order).parameters["slicer_order"].default
    assert sorted(slicer_order) == sorted(p.stem for p in SLICER_PKG.glob("*.py") if p.stem != "__init__")


def test_extension_cmake():
    text = (EXT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"project\(MedPLIBLabel\)", text)
    assert re.search(r"set\(EXTENSION_NAME MedPLIBLabel\)", text)
    for var in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL"):
        assert re.search(r"set\(" + var + r' "[^"]+"\)', text), f"{var} missing"
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in text
    assert 'set(EXTENSION_DEPENDS "NA")' in text
    assert re.search(r'EXTENSION_ICONURL "https://\S+\.png"', text)
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(MedPLIBLabel)",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert line in text, f"{line} missing"


# ---------------------------------------------------------------------------------------------------- icon
def test_icon_is_a_valid_128px_png():
    data = ICON.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, idat = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        ctype = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(ctype + body) & 0xFFFFFFFF == crc, f"bad CRC in {ctype!r}"
        chunks.append(ctype)
        if ctype == b"IDAT":
            idat += body
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks
    width, height, depth, color_type = struct.unpack(">IIBB", data[16:26])
    assert (width, height) == (128, 128) and depth == 8
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    raw = zlib.decompress(idat)
    assert len(raw) == height * (1 + width * channels)  # one filter byte per row


# ---------------------------------------------------------------------------------------------------- README
def test_readme_install_server_walkthrough_and_headless_self_test():
    text = README.read_text(encoding="utf-8")
    for needle in ("Additional module paths", "slicer_extension/MedPLIBLabel", "Slicer_DIR", "make serve",
                   "0.0.0.0", "127.0.0.1", "Next sample", "Segment whole volume", "Ctrl+Z", "Submit label",
                   "Train", "MEDPLIB_LABEL_URL", "--no-main-window", "--testing", "--python-code",
                   "--additional-module-paths", "--exit-after-startup", "--python-script",
                   "slicer.testing.runUnitTest", "MedPLIBLabelTest().runTest()", "Troubleshooting",
                   "not for clinical use"):
        assert needle.lower() in text.lower(), f"README should mention {needle!r}"


# ---------------------------------------------------------------------------------------------------- issue 17
def test_promptable_modes_slicer_side_calls(lib):
    """The promptable modes' Slicer-side code, checked for presence (it only runs inside Slicer; the Lib parts are
    tested against the real server in tests/test_slicer_promptable.py), and the mode names agree with the server."""
    def src(*names: str) -> str:
        return "\n".join((MOD_DIR / n).read_text(encoding="utf-8") for n in names)

    widget = src("MedPLIBLabel.py")
    assert "This mode is not available yet" not in widget
    for needle in ("PromptableMixin):", 'segment3DButton.connect("clicked()", self.onSegment3D)',
                   "self.promptSession.reset()", "self.segmentPromptable(", "can_3d=mode_model(self.serverInfo"):
        assert needle in widget, needle
    mixin = src("MedPLIBLabelSlicer/promptable.py")
    for needle in ("mode_model(self.serverInfo", "infer_with_region, self.client, model", "buildPromptableRequest(",
                   "interaction=None if volume3d else self.promptSession", "promptable_status(", "lassoRegion("):
        assert needle in mixin, needle
    logic = src("MedPLIBLabelSlicer/logic.py")
    for needle in ("build_promptable_params(", "covered_planes(mask, axis)", "read_plane_inplace(",
                   "interaction.plane(key", '"coveredOnly": volume3d'):
        assert needle in logic, needle
    assert "mode=self.currentMode()" in src("MedPLIBLabelSlicer/interaction.py")
    selftest = src("MedPLIBLabelSlicer/selftest.py")
    assert "self.test_MedPLIBLabel_PromptableBox()" in selftest and "segment3DButton.click()" in selftest
    assert 'name="segment3DButton"' in (MOD_DIR / "Resources" / "UI" / "MedPLIBLabel.ui").read_text()
    # The server announces exactly the modes the Lib knows (infers/promptable.py MODES -> /info config.modes).
    server = (EXT.parent / "infers" / "promptable.py").read_text(encoding="utf-8")
    announced = set(re.findall(r'"(\w+)"', re.search(r"^MODES = (.*)$", server, re.M).group(1)))
    from MedPLIBLabelLib.interaction import MODE_TITLES
    from MedPLIBLabelLib.promptable import DEFAULT_MODELS, PROMPTABLE_MODES

    assert announced == set(PROMPTABLE_MODES) == set(DEFAULT_MODELS) and announced < set(MODE_TITLES)
    assert "Segment in 3D from these prompts" in README.read_text(encoding="utf-8")
