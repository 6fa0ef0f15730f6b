"""Batch generation from registered generators."""
