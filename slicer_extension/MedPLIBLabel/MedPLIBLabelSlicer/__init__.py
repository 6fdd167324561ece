"""MedPLIBLabelSlicer: the Slicer-side parts of the MedPLIB Label module that do not fit in ``MedPLIBLabel.py``.

* logic:    MedPLIBLabelLogic (MRML reads and writes: prompt markups, geometry matrices, segments, undo) and
            removeNodeWithHelpers
* server_sections: ServerSectionsMixin, the widget's Server, sample/upload and Active learning handlers (mixed
            into MedPLIBLabelWidget)
* interaction: InteractionMixin (shortcuts, run on placement, Segment Editor, target, modes) and the settings panel
* promptable: PromptableMixin, the promptable modes (clicks / box / scribble / lasso -> mask without a question;
            "Segment in 3D from these prompts")
* selftest: MedPLIBLabelTest, the in-Slicer self-test (``MedPLIBLabel.py`` imports it so that Slicer finds
            ``MedPLIBLabelTest`` in the module's namespace)

These import slicer/vtk and only run inside Slicer. They live in a package, not next to ``MedPLIBLabel.py``, because
Slicer loads every ``.py`` file at the top of a module folder as a scripted module of that name. Pure logic goes in
``MedPLIBLabelLib`` instead, where it is unit-tested without Slicer.
"""
