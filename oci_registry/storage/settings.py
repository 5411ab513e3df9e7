"""
Which storage to use, as the ``storage`` key of the configuration::

    storage:                      # absent: the filesystem under data_dir
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


def parse_storage(value) -> S3Settings | None:
    """The ``storage`` config value: None (or ``{filesystem: {}}``) for the filesystem, else S3."""
    if value is None or isinstance(value, S3Settings):
        return value
    if isinstance(value, Mapping) and "bucket" in value:
        # The flat form `Config.to_dict` gives (attr.asdict): the round trip to worker processes.
        return S3Settings.from_dict(value)
    if not isinstance(value, Mapping) or len(value) != 1:
        raise ValueError("storage must be a mapping with one key: s3 or filesystem")
    ((kind, options),) = value.items()
    if kind == "filesystem":
        if options:
            raise ValueError("storage: filesystem takes no options (use data_dir)")
        return None
    if kind != "s3":
        raise ValueError(f"unknown storage {kind!r} (use s3 or filesystem)")
    if not isinstance(options, Mapping):
        raise ValueError("storage: s3 must be a mapping")
    return S3Settings.from_dict(options)


def storage_values(from_file, environ: Mapping[str, str], options: Mapping | None = None):
    """
    Merge the ``storage`` value of the config file with ``OCIREGISTRY_S3_*``
    environment variables and command-line ``options`` (s3 keys; None
    values are ignored).  Credentials missing from all three come from the
    usual ``AWS_*`` variables.
    """
    names = {f.name for f in attr.fields(S3Settings)}
    from_env = {
        key[len(ENV_PREFIX) :].lower(): value
        for key, value in environ.items()
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX) :].lower() in names
    }
    from_options = {k: v for k, v in (options or {}).items() if v is not None}
    file_s3 = None
    if isinstance(from_file, Mapping) and isinstance(from_file.get("s3"), Mapping):
        file_s3 = dict(from_file["s3"])
    if file_s3 is None and not from_env and not from_options:
        return from_file
    s3 = {**(file_s3 or {}), **from_env, **from_options}
    if not s3.get("access_key") and environ.get("AWS_ACCESS_KEY_ID"):
        s3["access_key"] = environ["AWS_ACCESS_KEY_ID"]
        for key, variable in (("secret_key", "AWS_SECRET_ACCESS_KEY"), ("session_token", "AWS_SESSION_TOKEN")):
            if not s3.get(key) and environ.get(variable):
                s3[key] = environ[variable]
    return {"s3": s3}
