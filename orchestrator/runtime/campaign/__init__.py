"""The campaign driver and its Tune trials, running inside Ray."""
