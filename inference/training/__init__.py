"""Model-development tooling (rename step: the training code still sits in crops.py until the split)."""
