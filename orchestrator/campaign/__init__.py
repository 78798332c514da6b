"""Tuning campaigns: Ray Tune over orch training jobs (spec, driver, trials, reports, records)."""
