"""Publish stage: a built repository -> S3-compatible object storage, never half-visible to a reader.

Entry point: `publish(repository, url, log) -> str`, the exact `--model-repository=` value to serve.

- Every publish uploads into a new prefix, `PREFIX/builds/<UTC time>-<content hash>/`, and only then
  writes `PREFIX/LATEST` (the build's prefix, one line). A Triton replica is started on a build's full
  path, which is complete before it is ever printed or pointed to: nothing it can list is partial.
  New builds reach running replicas by a rollout to the new path (docs/deploy.md), not by
  rewriting objects under a path a server is reading.
- Object stores have no folders: Triton needs each model's version folder (an ensemble's `1/` is empty),
  so a zero-byte `.keep` object is written into every folder that would otherwise be empty.
- Credentials and endpoint come from the standard AWS variables/config (boto3's own lookup, including
  `AWS_ENDPOINT_URL` for S3-compatible servers). With an endpoint, the printed path is Triton's
  `s3://host:port/bucket/path` form.
- Bad input (unknown bucket, refused credentials, unreachable endpoint, a prefix that holds something
  else) raises PublishError with one line; objects this publish already wrote are deleted again.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from urllib.parse import urlparse

KEEP = ".keep"


class PublishError(ValueError):
    """The repository could not be published; nothing a reader could load was left behind."""


def parse_s3_url(url: str) -> tuple[str, str]:
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise PublishError(f"{url}: expected s3://BUCKET/PREFIX")
    prefix = parsed.path.strip("/")
    if not prefix:
        raise PublishError(f"{url}: give a prefix under the bucket (s3://BUCKET/PREFIX), not the bucket's root")
    return parsed.netloc, prefix


def _client():
    import boto3
    from botocore.config import Config

    # few, short retries: an unreachable endpoint should be an error in seconds, not minutes
    return boto3.client("s3", config=Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 2}))


def _objects(repository: Path) -> list[tuple[str, Path | None]]:
    """(key under the build prefix, file or None for a .keep placeholder) for the whole tree."""
    out = []
    for folder in sorted([repository, *(p for p in repository.rglob("*") if p.is_dir())]):
        files = sorted(p for p in folder.iterdir() if p.is_file())
        rel = folder.relative_to(repository).as_posix()
        if not files and not any(p.is_dir() for p in folder.iterdir()):
            out.append((f"{rel}/{KEEP}", None))
        out += [(p.relative_to(repository).as_posix(), p) for p in files]
    return out


def _build_id(objects) -> str:
    h = hashlib.sha256()
    for key, path in objects:
        h.update(key.encode())
        if path is not None:
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + h.hexdigest()[:12]


def triton_path(bucket: str, key_prefix: str) -> str:
    """Triton's s3 path: s3://host:port/bucket/prefix with a custom endpoint, s3://bucket/prefix on AWS."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        netloc = urlparse(endpoint).netloc or endpoint
        return f"s3://{netloc}/{bucket}/{key_prefix}"
    return f"s3://{bucket}/{key_prefix}"


def _describe(e: Exception, bucket: str) -> str:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(e, ClientError):
        code = e.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchBucket", "404"):
            return f"bucket {bucket!r} does not exist"
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "ExpiredToken"):
            return f"the credentials were refused for bucket {bucket!r} ({code})"
        return f"{code or 'error'}: {e}"
    if isinstance(e, EndpointConnectionError):
        return f"cannot reach the S3 endpoint: {e}"
    if isinstance(e, NoCredentialsError):
        return "no AWS credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or a role)"
    return f"{type(e).__name__}: {e}"


def check_destination(url: str) -> None:
    """Before the slow stages: the bucket answers with these credentials and the prefix is ours or empty."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = parse_s3_url(url)
    s3 = _client()
    try:
        s3.head_bucket(Bucket=bucket)
        page = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/", MaxKeys=50)
    except (BotoCoreError, ClientError) as e:
        raise PublishError(f"s3://{bucket}/{prefix}: {_describe(e, bucket)}") from None
    foreign = [o["Key"] for o in page.get("Contents", [])
               if not (o["Key"].startswith(f"{prefix}/builds/") or o["Key"] == f"{prefix}/LATEST")]
    if foreign:
        raise PublishError(f"s3://{bucket}/{prefix}/ holds objects that are not this tool's builds "
                           f"(e.g. {foreign[0]}): choose another prefix")


def publish(repository: Path, url: str, log=print) -> str:
    """Upload `repository` under a new build prefix of `url`, then point PREFIX/LATEST at it."""
    from botocore.exceptions import BotoCoreError, ClientError

    check_destination(url)
    bucket, prefix = parse_s3_url(url)
    repository = Path(repository)
    objects = _objects(repository)
    build = f"{prefix}/builds/{_build_id(objects)}"
    s3 = _client()
    written: list[str] = []
    t = time.perf_counter()
    try:
        for key, path in objects:
            full = f"{build}/{key}"
            if path is None:
                s3.put_object(Bucket=bucket, Key=full, Body=b"")
            else:
                s3.upload_file(str(path), bucket, full)
            written.append(full)
        s3.put_object(Bucket=bucket, Key=f"{prefix}/LATEST", Body=(build + "\n").encode())
    except PublishError:
        raise
    except (BotoCoreError, ClientError) as e:
        _remove(s3, bucket, written)
        raise PublishError(f"publishing to s3://{bucket}/{prefix} failed: {_describe(e, bucket)}") from None
    except BaseException:
        _remove(s3, bucket, written)
        raise
    log(f"[publish] {len(objects)} objects to s3://{bucket}/{build} ({time.perf_counter() - t:.1f}s); "
        f"s3://{bucket}/{prefix}/LATEST points to it")
    return triton_path(bucket, build)


def _remove(s3, bucket: str, keys: list[str]) -> None:
    for i in range(0, len(keys), 1000):
        try:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})
        except Exception:  # best effort: the build prefix was never printed nor pointed to
            pass
