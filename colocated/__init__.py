"""The colocated role: one worker that prefills and decodes (the baseline disaggregation must beat)."""
