"""Local paths and ``s3://`` URIs behind one interface.

pyarrow's ``S3FileSystem`` ignores ``AWS_ENDPOINT_URL``; this module reads the standard AWS
variables (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``/``AWS_DEFAULT_REGION``) and merges
``storage_options`` over them, so every part of ra2batch talks to the same store the same way.
The filesystems returned are picklable and carry their settings into Ray workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs


def is_remote(uri: str) -> bool:
    return uri.startswith("s3://")


def _s3_settings(options: dict[str, Any] | None) -> dict[str, Any]:
    env = os.environ
    s: dict[str, Any] = {
        "endpoint_url": env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"),
        "key": env.get("AWS_ACCESS_KEY_ID"),
        "secret": env.get("AWS_SECRET_ACCESS_KEY"),
        "token": env.get("AWS_SESSION_TOKEN"),
        "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
    }
    s.update({k: v for k, v in (options or {}).items() if v is not None})
    return s


@dataclass
class Location:
    """A resolved root: ``fs`` (pyarrow filesystem) and ``path`` inside it (no scheme)."""

    uri: str
    fs: pafs.FileSystem
    path: str
    options: dict[str, Any] = field(default_factory=dict)

    def join(self, *parts: str) -> str:
        """A path inside this root, in ``fs`` terms."""
        return "/".join([self.path.rstrip("/"), *[p.strip("/") for p in parts]])

    def uri_of(self, *parts: str) -> str:
        """A full URI (``s3://...`` or a local path) for display and for other tools."""
        p = self.join(*parts)
        return f"s3://{p}" if is_remote(self.uri) else p

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.join(*parts)).type != pafs.FileType.NotFound

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.join(*parts)) as f:
            return f.read()

    def write_bytes(self, data: bytes, *parts: str) -> None:
        target = self.join(*parts)
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(target) as f:
            f.write(data)

    def delta_options(self) -> dict[str, str] | None:
        """The same store's settings as delta-rs storage options (``None`` for a local path).

        S3 commits use conditional writes (``conditional_put: etag``, supported by AWS S3, MinIO and
        R2), so two writers can never both commit the same table version; no lock table is needed.
        """
        if not is_remote(self.uri):
            return None
        s = self.options
        opts = {"AWS_REGION": str(s["region"]), "conditional_put": "etag"}
        if s.get("endpoint_url"):
            opts["AWS_ENDPOINT_URL"] = str(s["endpoint_url"])
            if str(s["endpoint_url"]).startswith("http://"):
                opts["AWS_ALLOW_HTTP"] = "true"
        for key, name in (("key", "AWS_ACCESS_KEY_ID"), ("secret", "AWS_SECRET_ACCESS_KEY"),
                          ("token", "AWS_SESSION_TOKEN")):
            if s.get(key):
                opts[name] = str(s[key])
        return opts

    def fsspec(self):
        """An fsspec filesystem for the same store (for pandas/duckdb readers that want one)."""
        if not is_remote(self.uri):
            import fsspec

            return fsspec.filesystem("file")
        import s3fs

        s = self.options
        kw: dict[str, Any] = {"key": s.get("key"), "secret": s.get("secret"), "token": s.get("token")}
        ck = {"region_name": s.get("region")}
        if s.get("endpoint_url"):
            ck["endpoint_url"] = s["endpoint_url"]
        return s3fs.S3FileSystem(client_kwargs=ck, **kw)


def resolve(uri: str, storage_options: dict[str, Any] | None = None) -> Location:
    """Resolve a local path or ``s3://bucket/prefix`` to a :class:`Location`."""
    if is_remote(uri):
        s = _s3_settings(storage_options)
        kw: dict[str, Any] = {"region": s["region"]}
        if s.get("key"):
            kw.update(access_key=s["key"], secret_key=s["secret"], session_token=s.get("token"))
        if s.get("endpoint_url"):
            ep = str(s["endpoint_url"])
            scheme, _, host = ep.partition("://")
            kw.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
        fs = pafs.S3FileSystem(**kw)
        return Location(uri, fs, uri[len("s3://"):].rstrip("/"), s)
    if "://" in uri:
        raise ValueError(f"unsupported location {uri!r}: use a local path or s3://bucket/prefix")
    return Location(uri, pafs.LocalFileSystem(), os.path.abspath(uri), {})
