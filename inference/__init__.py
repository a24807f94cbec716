"""The model side: one CT series (pydicom datasets) in, nodule findings out. No networking here.

The runtime path, in the order a series flows through it:
- `volume`: DICOM instances -> HU volume with its patient geometry
- `preprocess`: lung mask, 1 mm resampling, intensity mapping (DeepLung)
- `detect`: the DPN26 detector over the preprocessed image -> nodule candidates
- `classify`: nodule crops -> DPN features -> gradient boosting -> malignancy
- `findings`: the plain results that cross to `dicomnode`
- `pipeline`: `LungNodulePipeline`, the above in one object, loaded once per model
- `weights_bundle`: a weights folder, its manifest and SHA-256 checks (packaged: `weights/`)
- `engines`, `nets`: the inference engines (torch, ONNX Runtime, TensorRT) and the networks
- `export`: ONNX export and the TensorRT parser pre-flight

Model-development tooling, never imported by the runtime path:
- `phantom`: synthetic chest CTs with known nodules (tests, training, demos)
- `training`: training, evaluation (FROC/ROC) and packaging of the weights
"""
