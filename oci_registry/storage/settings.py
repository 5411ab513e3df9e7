"""
The S3 driver's settings, its section of the ``storage`` configuration
(`oci_registry.storage.drivers`)::

    storage:
      s3:
        bucket: registry          # required
        endpoint: http://127.0.0.1:8333   # default: https://s3.<region>.amazonaws.com
        region: us-east-1
        access_key: ...           # default: $AWS_ACCESS_KEY_ID
        secret_key: ...           # default: $AWS_SECRET_ACCESS_KEY
        prefix: ociregistry       # keys start with "<prefix>/" (default: none)
        redirect: false           # blob GETs answer 307 to a presigned URL
        redirect_expiry: 20m      # how long a presigned URL stays valid
        redirect_endpoint: ...    # the S3 URL clients can reach, if not endpoint
        part_size: 8MiB           # multipart part size (at least 5MiB)

Every ``s3`` key can also come from an environment variable
``OCIREGISTRY_S3_<KEY>`` (``OCIREGISTRY_S3_BUCKET``, ``OCIREGISTRY_S3_SECRET_KEY``…)
and, except the secrets, from ``twistd ociregistry --s3-<key>`` options;
the precedence is file < environment < options.
"""

from __future__ import annotations

from collections.abc import Mapping

import attr

from ..units import parse_duration, parse_size

MIN_PART_SIZE = 5 << 20  # S3's smallest part (all but the last)
MAX_PART_SIZE = 5 << 30
ENV_PREFIX = "OCIREGISTRY_S3_"


def _prefix(value) -> str:
    return str(value or "").strip("/")


@attr.s(auto_attribs=True, frozen=True, kw_only=True)
class S3Settings:
    bucket: str
    endpoint: str = ""
    region: str = "us-east-1"
    access_key: str | None = None
    secret_key: str | None = attr.ib(default=None, repr=False)
    session_token: str | None = attr.ib(default=None, repr=False)
    prefix: str = attr.ib(default="", converter=_prefix)
    redirect: bool = False
    redirect_expiry: float = 1200.0
    redirect_endpoint: str = ""  # where clients reach S3, when it is not ``endpoint``
    part_size: int = 8 << 20

    @property
    def endpoint_url(self) -> str:
        return self.endpoint or f"https://s3.{self.region}.amazonaws.com"

    def describe(self) -> str:
        """Where the data is, for logs: never the keys."""
        return f"s3://{self.bucket}/{self.prefix} at {self.endpoint_url}"

    def to_dict(self) -> dict:
        return {"s3": attr.asdict(self)}

    @classmethod
    def from_dict(cls, values: Mapping) -> S3Settings:
        known = {f.name for f in attr.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown s3 keys: {', '.join(sorted(unknown))}")
        values = {k: v for k, v in values.items() if v is not None}
        if not values.get("bucket"):
            raise ValueError("s3 storage needs a bucket")
        if not values.get("access_key") or not values.get("secret_key"):
            raise ValueError(
                "s3 storage needs access_key and secret_key "
                "(or OCIREGISTRY_S3_ACCESS_KEY/_SECRET_KEY, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
            )
        if "redirect" in values and not isinstance(values["redirect"], bool):
            values["redirect"] = str(values["redirect"]).strip().lower() in ("1", "true", "yes", "on")
        if "redirect_expiry" in values:
            values["redirect_expiry"] = parse_duration(values["redirect_expiry"])
            if not 1 <= values["redirect_expiry"] <= 7 * 24 * 3600:
                raise ValueError("s3 redirect_expiry must be between 1s and 7 days (the SigV4 limit)")
        if "part_size" in values:
            values["part_size"] = parse_size(values["part_size"])
            if not MIN_PART_SIZE <= values["part_size"] <= MAX_PART_SIZE:
                raise ValueError("s3 part_size must be between 5MiB and 5GiB")
        for key in ("bucket", "endpoint", "region", "access_key", "secret_key", "session_token", "redirect_endpoint"):
            if key in values:
                values[key] = str(values[key])
        for key in ("endpoint", "redirect_endpoint"):
            if values.get(key):
                from .s3client import _split_endpoint

                _split_endpoint(values[key])  # ValueError: not an http(s) URL
        return cls(**values)


def s3_sources(section: Mapping | None, environ: Mapping[str, str], options: Mapping) -> dict | None:
    """
    The ``s3`` section with ``OCIREGISTRY_S3_*`` environment variables and
    command-line ``options`` (s3 keys; None values are ignored) over the
    file's ``section``; None when none of the three has any.  Credentials
    missing from all three come from the usual ``AWS_*`` variables.
    """
    names = {f.name for f in attr.fields(S3Settings)}
    from_env = {
        key[len(ENV_PREFIX) :].lower(): value
        for key, value in environ.items()
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX) :].lower() in names
    }
    from_options = {k: v for k, v in options.items() if v is not None}
    if section is None and not from_env and not from_options:
        return None
    s3 = {**(section or {}), **from_env, **from_options}
    if not s3.get("access_key") and environ.get("AWS_ACCESS_KEY_ID"):
        s3["access_key"] = environ["AWS_ACCESS_KEY_ID"]
        for key, variable in (("secret_key", "AWS_SECRET_ACCESS_KEY"), ("session_token", "AWS_SESSION_TOKEN")):
            if not s3.get(key) and environ.get(variable):
                s3[key] = environ[variable]
    return s3
