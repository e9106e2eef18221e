"""Datasets (embedded and local) and the LightningDataModule."""
