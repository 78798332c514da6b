"""The control plane: everything that runs in the `orch` process on the user's machine.

CLI, job manager, SQLite index, background scheduler, sync, admission, reports and exports. It talks to Ray
only through the Jobs API and the dashboard, and never imports torch, ray or deepspeed at import time.
"""
