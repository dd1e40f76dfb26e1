"""Batched embedding, regions, the index, the scan pipeline, the decision policy and the review report."""
