"""`orch data prepare` through the CLI: a .txt + .jsonl + .parquet mix in S3 (a real S3 server process) tokenized
by Ray tasks on the e2e cluster into s3://, the index checked against the objects, and a rerun that skips."""

from __future__ import annotations

import hashlib
import io
import json

import pytest

from tests.s3server import SECRET_ACCESS_KEY

pytestmark = pytest.mark.e2e

TEXT = "".join(f"Line {i}: the corpus says something about shards and tokens.\n" for i in range(200))
JSONL = [f"document number {i} from the jsonl file" for i in range(50)]
PARQUET = [f"parquet row {i}" for i in range(40)]


@pytest.mark.e2e_timeout(300)
def test_prepare_a_mixed_corpus_into_s3_and_rerun_skips(orch, s3_server):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bucket = "prepare-e2e"
    s3_server.make_bucket(bucket)
    s3 = s3_server.client()
    s3.put_object(Bucket=bucket, Key="in/a.txt", Body=TEXT.encode())
    s3.put_object(Bucket=bucket, Key="in/b.jsonl", Body="".join(json.dumps({"text": t}) + "\n" for t in JSONL).encode())
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": PARQUET}), buf)
    s3.put_object(Bucket=bucket, Key="in/more/c.parquet", Body=buf.getvalue())

    args = ("data", "prepare", f"s3://{bucket}/in", "--out", f"s3://{bucket}/data", "--vocab-size", "300",
            "--shard-tokens", "512", "--unit-mb", "0.004")
    first = orch.run(*args, "--json", extra_env=s3_server.env, timeout=240)
    result = json.loads(first.stdout)
    assert result["units"] >= 4 and result["units_skipped"] == 0  # the .txt file is cut into several units
    index = json.loads(s3.get_object(Bucket=bucket, Key="data/index.json")["Body"].read())
    assert index["dtype"] == "<u2" and index["vocab_size"] == 300 and index["eos_id"] == 0
    assert {s["split"] for s in index["shards"]} == {"train", "val"}
    assert result["tokens_train"] + result["tokens_val"] == sum(s["tokens"] for s in index["shards"])
    for shard in index["shards"]:
        raw = s3.get_object(Bucket=bucket, Key=f"data/{shard['key']}")["Body"].read()
        assert len(raw) == 2 * shard["tokens"] and hashlib.sha256(raw).hexdigest() == shard["sha256"]
    records = [json.loads(s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read())
               for o in s3.list_objects_v2(Bucket=bucket, Prefix="data/units/")["Contents"]]
    by_format = {fmt: [r["documents"] for r in records if r["signature"]["fmt"] == fmt]
                 for fmt in ("txt", "jsonl", "parquet")}
    assert by_format["jsonl"] == [len(JSONL)] and by_format["parquet"] == [len(PARQUET)]
    assert len(by_format["txt"]) >= 3 and set(by_format["txt"]) <= {0, 1}  # each piece of a cut .txt: a document

    again = orch.run(*args, extra_env=s3_server.env, timeout=240)
    assert f"{result['units']} of {result['units']} units were already committed and skipped" in again.stderr
    assert json.loads(s3.get_object(Bucket=bucket, Key="data/index.json")["Body"].read()) == index
    assert SECRET_ACCESS_KEY not in first.stdout + first.stderr + again.stdout + again.stderr
