"""The trainer: a Flower ClientApp that learns locally and asks the Explainer for heatmaps."""
