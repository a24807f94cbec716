"""Model-development tooling: train the DPN26 detector and the malignancy stage (DeepLung recipe,
sized for a CPU), evaluate them on held-out phantoms, and package the weights. The node's runtime
path (volume, preprocess, detect, classify, engines, nets, pipeline) never imports this package.

Modules, in the order training runs:
- `cases`: preprocessed cases cached as .npz, built from phantoms
- `luna16`: cases from a LUNA16 folder (SimpleITK)
- `crops`: crops, anchor targets, nodule hardness and the crop sampler
- `loss`: the detector loss
- `detector`: `TrainConfig` and the detector's training loop
- `classifier`: the malignancy stage (network features + GBM)
- `run`: `run_training`, the whole run behind `dicomnode model train`
- `metrics`: LUNA16 FROC/CPM, ROC/AUC and finding matching
- `evaluation`: a detector and classifier scored on held-out phantom cases
- `packaging`: `package_weights`, a weights folder with its manifest
"""
