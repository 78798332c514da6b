"""The in-cluster runtime: what runs inside Ray (job drivers, training workers, campaign drivers and trials).

It reads and writes storage through the run contract in `orchestrator.core` and never touches the
control plane's index.
"""
