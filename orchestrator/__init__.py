"""orch: submit DeepSpeed ZeRO training jobs and tuning campaigns to Ray, with results in S3-compatible storage."""

__version__ = "0.1.0"
