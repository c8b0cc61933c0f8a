"""Backbones and their weights, the LightningModule, the recipe's ingredients, the checkpoint format."""
