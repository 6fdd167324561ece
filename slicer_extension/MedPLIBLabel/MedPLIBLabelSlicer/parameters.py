"""The module's parameter node: the volume, segmentation, model and answer target are saved with the scene.

No ``from __future__ import annotations`` here: slicer.parameterNodeWrapper reads the class annotations as types.
Slicer before 5.2 has no wrapper; the plain vtkMRMLScriptedModuleNode is used there (nothing is bound then).
"""

import slicer

try:
    from slicer.parameterNodeWrapper import parameterNodeWrapper
except ImportError:  # Slicer < 5.2
    parameterNodeWrapper = None

__all__ = ["MedPLIBLabelParameterNode", "wrapParameterNode", "HAS_WRAPPER"]

HAS_WRAPPER = parameterNodeWrapper is not None

if HAS_WRAPPER:
    @parameterNodeWrapper
    class MedPLIBLabelParameterNode:
        """inputVolume and segmentation are bound to the .ui selectors (their SlicerParameterName property);
        model and targetMode are copied by the widget (their combo boxes are filled from the server)."""

        inputVolume: slicer.vtkMRMLScalarVolumeNode
        segmentation: slicer.vtkMRMLSegmentationNode
        model: str = "medplib"
        targetMode: str = "named"
else:
    MedPLIBLabelParameterNode = None


def wrapParameterNode(node):
    """The typed wrapper around the module's scripted parameter node, or the node itself on old Slicer."""
    return MedPLIBLabelParameterNode(node) if HAS_WRAPPER else node
