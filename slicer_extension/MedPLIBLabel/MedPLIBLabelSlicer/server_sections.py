"""ServerSectionsMixin: the parts of MedPLIBLabelWidget that talk to the server besides asking: the Server section
(connect, model list, address history), samples and uploads of the Volume section, and the Active learning
section (submit label, train). Qt plumbing only; MedPLIBLabelWidget (MedPLIBLabel.py) mixes it in and provides
``self.ui``, ``self.logic``, ``self.submit`` and the job runners.
"""

from __future__ import annotations

import qt
import slicer

from MedPLIBLabelLib import (CLIENT_TIMEOUT_S, DEFAULT_URL, ClientError, MedPLIBClient, Unauthorized, fetch_sample,
                             pick_trainer, remove_file, sort_model_names, submit_label_array, training_running,
                             training_status_text, upload_volume_array, url_choices, url_history_after_connect,
                             user_message)
from MedPLIBLabelSlicer.interaction import _, readSetting

__all__ = ["ServerSectionsMixin"]

SETTINGS_URL = "MedPLIBLabel/serverUrl"
SETTINGS_URL_HISTORY = "MedPLIBLabel/serverUrlHistory"
SETTINGS_UPLOAD_OK = "MedPLIBLabel/dontAskBeforeUpload"


class ServerSectionsMixin:
    """Server connection, samples/uploads and active learning for MedPLIBLabelWidget (main thread only)."""

    # ------------------------------------------------------------------ server
    def loadServerHistory(self) -> None:
        settings = qt.QSettings()
        self.ui.serverComboBox.clear()
        for url in url_choices(settings.value(SETTINGS_URL, ""), settings.value(SETTINGS_URL_HISTORY, ""),
                               DEFAULT_URL):
            self.ui.serverComboBox.addItem(url)
        self.ui.serverComboBox.setCurrentIndex(0)

    def saveServerHistory(self, url: str) -> None:
        settings = qt.QSettings()
        history = url_history_after_connect(url, settings.value(SETTINGS_URL_HISTORY, ""))
        settings.setValue(SETTINGS_URL, url)
        settings.setValue(SETTINGS_URL_HISTORY, history)

    def serverUrl(self) -> str:
        return self.ui.serverComboBox.currentText.strip() or DEFAULT_URL

    def onTestConnection(self) -> None:
        try:
            # A new client per connection: the token is kept in memory only, never saved.
            client = MedPLIBClient(self.serverUrl(), token=self.ui.tokenLineEdit.text.strip() or None,
                                   timeout=CLIENT_TIMEOUT_S)
        except ClientError as exc:
            self.setServerStatus(user_message(exc), error=True)
            return
        self.setServerStatus(f"Connecting to {client.url} ...")
        self.submit("Connecting", client.test_connection, onDone=lambda info: self.onConnected(client, info),
                    onError=self.onConnectionFailed)

    def onConnected(self, client, info) -> None:
        self.client, self.serverInfo = client, info
        self.saveServerHistory(client.url)
        previous = self.ui.modelComboBox.currentText or getattr(self._parameterNode, "model", "")
        self.ui.modelComboBox.clear()
        names = sort_model_names(info.models)
        for name in names:
            model = info.models[name]
            self.ui.modelComboBox.addItem(name)
            self.ui.modelComboBox.setItemData(self.ui.modelComboBox.count - 1, model.description, qt.Qt.ToolTipRole)
        if previous in names:
            self.ui.modelComboBox.setCurrentIndex(names.index(previous))
        current = self.ui.segmentNameComboBox.currentText
        self.ui.segmentNameComboBox.clear()
        for label in sorted(info.labels, key=lambda n: info.labels[n]):  # the named structures of /info
            self.ui.segmentNameComboBox.addItem(label)
        self.ui.segmentNameComboBox.setEditText(current)
        self.fillModes(info)
        if info.strategies:
            strategy = self.ui.strategyComboBox.currentText
            self.ui.strategyComboBox.clear()
            for name in info.strategies:
                self.ui.strategyComboBox.addItem(name)
            if strategy in info.strategies:
                self.ui.strategyComboBox.setCurrentIndex(info.strategies.index(strategy))
        self.setServerStatus(info.status_line())
        self.updateButtons()

    def onConnectionFailed(self, exc) -> None:
        self.client, self.serverInfo = None, None
        self.ui.modelComboBox.clear()
        hint = " Enter a valid access token." if isinstance(exc, Unauthorized) else ""
        self.setServerStatus(user_message(exc) + hint, error=True)
        self.updateButtons()

    def setServerStatus(self, text: str, error: bool = False) -> None:
        self.ui.serverStatusLabel.setText(text)
        self.ui.serverStatusLabel.setStyleSheet("color: #c0392b;" if error else "")

    def requireConnection(self) -> bool:
        if self.client is None:
            slicer.util.warningDisplay(_("Connect to a MedPLIB Label server first (Server section, "
                                         "'Test connection')."), windowTitle="MedPLIB Label")
            return False
        return True

    # ------------------------------------------------------------------ volume: samples and uploads
    def onNextSample(self) -> None:
        if not self.requireConnection():
            return
        strategy = self.ui.strategyComboBox.currentText or "random"
        self.submit(_("Fetching the next sample"), fetch_sample, self.client, strategy, self.tmpdir,
                    onDone=self.onSampleFetched)  # a failed request goes to onJobError: an error dialog

    def onSampleFetched(self, fetched) -> None:
        if fetched is None:
            slicer.util.infoDisplay(_("The server has no more images to label with this strategy."),
                                    windowTitle="MedPLIB Label")
            return
        info, path = fetched
        try:
            volume = self.logic.loadSample(path, str(info["id"]), self.client.url)
        except Exception as exc:  # runs from the poll timer: without this it would only reach the Python console
            slicer.util.errorDisplay(_("The next sample could not be loaded:") + f"\n{exc}",
                                     windowTitle="MedPLIB Label", detailedText=f"{type(exc).__name__}: {exc}")
            return
        finally:
            remove_file(path)
        self.ui.inputVolumeSelector.setCurrentNode(volume)
        self.ui.segmentationSelector.setCurrentNode(self.logic.ensureSegmentation(volume, None))
        self.onClearPrompts()
        slicer.util.showStatusMessage(f"MedPLIB Label: loaded sample {info['id']}", 3000)

    def askUploadPermission(self) -> bool:
        return slicer.util.confirmOkCancelDisplay(
            "The voxels and geometry of the selected volume (no patient name or other DICOM information) will be "
            f"sent to the MedPLIB server at {self.client.url} and stored in its datastore.\n\nContinue?",
            windowTitle="MedPLIB Label: send image data", dontShowAgainSettingsKey=SETTINGS_UPLOAD_OK)

    def onUploadVolume(self) -> None:
        self.uploadVolume()

    def uploadVolume(self, then=None) -> None:
        """Privacy confirmation, copy the voxels (main thread: a memory copy only), write an uncompressed NRRD and
        upload it in the background, then ``then()``."""
        if not self.requireConnection():
            return
        volume = self.ui.inputVolumeSelector.currentNode()
        if volume is None or not self.askUploadPermission():
            return
        imageId = self.logic.newImageId(volume)
        try:
            array, ijkToRas = self.logic.volumeSnapshot(volume)
        except Exception as exc:
            slicer.util.errorDisplay(_("Could not read the volume for upload:") + f"\n{exc}",
                                     windowTitle="MedPLIB Label")
            return
        url = self.client.url

        def uploaded(serverId):
            self.logic.setImageId(volume, serverId or imageId, url)
            self.updateButtons()
            slicer.util.showStatusMessage(f"MedPLIB Label: uploaded as {serverId or imageId}", 3000)
            if callable(then):
                then()

        self.submit(_("Uploading the volume"), upload_volume_array, self.client, array, ijkToRas, imageId, self.tmpdir,
                    onDone=uploaded)

    # ------------------------------------------------------------------ active learning
    def onSubmitLabel(self) -> None:
        if not self.requireConnection():
            return
        volume = self.ui.inputVolumeSelector.currentNode()
        segmentation = self.ui.segmentationSelector.currentNode()
        imageId = self.logic.imageIdOf(volume, self.client.url) if volume else None
        if not imageId:
            slicer.util.warningDisplay("This volume is not on the server: fetch it with 'Next sample' or upload it "
                                       "first.", windowTitle="MedPLIB Label")
            return
        try:
            label, ijkToRas, labelNames = self.logic.labelArray(volume, segmentation, self.serverInfo.labels)
        except ValueError as exc:
            slicer.util.warningDisplay(str(exc), windowTitle="MedPLIB Label")
            return

        def submitted(res) -> None:
            slicer.util.showStatusMessage(f"MedPLIB Label: label of {imageId} saved ({', '.join(labelNames)}).",
                                          5000)
            if readSetting("MedPLIBLabel/autoFetchNextSample"):
                self.onNextSample()

        self.submit(_("Submitting the label"), submit_label_array, self.client, imageId, label, ijkToRas, labelNames,
                    self.tmpdir, onDone=submitted)

    def trainerName(self) -> str:
        return pick_trainer(self.serverInfo.trainers if self.serverInfo else [], self.ui.modelComboBox.currentText)

    def onTrain(self) -> None:
        if not self.requireConnection():
            return
        self.submit("Starting training", self.client.train, self.trainerName(),
                    onDone=lambda res: (self.ui.trainingStatusLabel.setText("Training: started"),
                                        self.trainingTimer.start()))

    def onStopTraining(self) -> None:
        if self.requireConnection():
            self.submit("Stopping training", self.client.stop_training, onDone=lambda res: self.onRefreshTraining())

    def onRefreshTraining(self) -> None:
        if self.client is None or self.statusRunner.busy:
            return
        self.statusRunner.submit(self.client.train_status, on_done=self.onTrainingStatus,
                                 on_error=lambda exc: self.ui.trainingStatusLabel.setText(
                                     "Training status unavailable: " + user_message(exc)), name="training status")
        self.pollTimer.start()

    def onTrainingStatus(self, status) -> None:
        self.ui.trainingStatusLabel.setText(training_status_text(status))
        if not training_running(status):
            self.trainingTimer.stop()
