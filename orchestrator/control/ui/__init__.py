"""`orch ui`: a local, read-only web page with jobs, campaigns and their live curves."""
