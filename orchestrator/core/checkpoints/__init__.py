"""Checkpoints in storage: the commit protocol, listing, verification, download and retention.

Layout under a job's store (already rooted at jobs/<job-id>):

    checkpoints/step-000120/<files uploaded by each rank, any sub-paths>
    checkpoints/step-000120/_ranks/rank-00000.json   per rank, written AFTER that rank's files are uploaded
    checkpoints/step-000120/MANIFEST.json            written LAST: the commit marker

A checkpoint exists for readers only once MANIFEST.json does, and the manifest lists every file with
its size and sha256, so a crash at any point leaves either a complete checkpoint or an uncommitted
directory that is never restored from and is eventually garbage-collected by retention. Deletion runs
in the opposite order (manifest first), so an interrupted deletion is uncommitted garbage too.
Nothing here knows about torch or DeepSpeed: files are opaque bytes.
"""


from orchestrator.core.checkpoints.catalog import (
    CheckpointInfo,
    VerifyResult,
    download_checkpoint,
    latest_verified,
    list_checkpoints,
    verify_checkpoint,
)
from orchestrator.core.checkpoints.protocol import (
    CHECKPOINTS_DIR,
    MANIFEST_NAME,
    RANKS_DIR,
    Manifest,
    ManifestError,
    check_checkpoint_path,
    file_entry,
    manifest_key,
    rank_part_key,
    read_manifest,
    sha256_file,
    step_prefix,
    step_tag,
    try_commit,
    wait_and_commit,
    write_rank_part,
)
from orchestrator.core.checkpoints.retention import apply_retention, plan_retention

__all__ = [
    "CHECKPOINTS_DIR", "MANIFEST_NAME", "RANKS_DIR", "CheckpointInfo", "Manifest", "ManifestError", "VerifyResult",
    "apply_retention", "check_checkpoint_path", "download_checkpoint", "file_entry", "latest_verified",
    "list_checkpoints", "manifest_key", "plan_retention", "rank_part_key", "read_manifest", "sha256_file",
    "step_prefix", "step_tag", "try_commit", "verify_checkpoint", "wait_and_commit", "write_rank_part",
]
