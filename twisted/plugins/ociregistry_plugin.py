"""twistd plugin: ``twistd -n ociregistry [options]``."""

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    optParameters = [
        ["data-dir", "d", None, "Directory for the filesystem storage (default: ~/.local/share/ociregistry)."],
        ["config", "c", None, "YAML configuration file; options given here override it."],
        ["max-manifest-size", None, None, "Largest manifest accepted, in bytes (default 4 MiB)."],
        ["workers", "w", None, "Worker processes serving the same tcp port (default 1)."],
        [
            "s3-bucket",
            None,
            None,
            (
                "Store in this S3 bucket instead of --data-dir"
                " (keys: config file or OCIREGISTRY_S3_* / AWS_* environment)."
            ),
        ],
        ["s3-endpoint", None, None, "S3 endpoint URL, e.g. http://127.0.0.1:8333 (default: AWS for --s3-region)."],
        ["s3-region", None, None, "S3 region (default us-east-1)."],
        ["s3-prefix", None, None, "Key prefix inside the S3 bucket (default: none)."],
        ["log-format", None, None, "text (default) or json: one JSON object per line, for every worker."],
        ["log-level", None, None, "Log events of this level and above: debug, info (default), warn, error."],
        [
            "metrics",
            None,
            None,
            "Serve Prometheus metrics (and /healthz, /readyz) on this endpoint, e.g. tcp:9100:interface=127.0.0.1.",
        ],
        [
            "shutdown-timeout",
            None,
            None,
            "On SIGTERM, time in-flight requests get to finish before they are cut (default 30s).",
        ],
    ]
    optFlags = [
        ["no-access-log", None, "Do not log a line per request."],
        ["s3-redirect", None, "Answer blob GETs with a 307 to a presigned S3 URL."],
    ]

    def __init__(self):
        super().__init__()
        self["listen"] = []
        self["proxy"] = []
        self["trusted-proxy"] = []

    def opt_listen(self, description):
        """Twisted endpoint to listen on (repeatable), e.g. tcp:5000, ssl:5443:privateKey=k.pem:certKey=c.pem, unix:/run/reg.sock. Default tcp:5000."""  # noqa: E501 twistd --help shows it, wrapped: one line
        self["listen"].append(description)

    opt_l = opt_listen

    def opt_trusted_proxy(self, cidr):
        """A reverse proxy (CIDR, repeatable) whose X-Forwarded-For/-Proto/-Host are believed, e.g. 10.0.0.0/8. Replaces the config file's trusted_proxies."""  # noqa: E501 twistd --help shows it, wrapped: one line
        self["trusted-proxy"].append(cidr)

    def opt_version(self):
        """Print the ociregistry version and exit."""
        from oci_registry import __version__

        print(f"ociregistry {__version__}")
        raise SystemExit(0)

    def opt_proxy(self, mapping):
        """Pull-through cache (repeatable): PREFIX=URL, e.g. dockerhub=https://registry-1.docker.io, ghcr=https://user:token@ghcr.io; an empty PREFIX mirrors a whole registry. Replaces the config file's proxies."""  # noqa: E501 twistd --help shows it, wrapped: one line
        self["proxy"].append(mapping)


@implementer(IServiceMaker, IPlugin)
class RegistryServiceMaker:
    tapname = "ociregistry"
    description = "A container registry speaking the OCI Distribution Specification."
    options = Options

    def makeService(self, options):
        import sys

        from twisted.internet import reactor

        from oci_registry.bulk import large_buffers_from_mmap
        from oci_registry.config import Config, ConfigError
        from oci_registry.logs import stamp_request_ids, twistd_observer
        from oci_registry.service import make_service
        from oci_registry.startup import CONFIG_STATUS, DaemonService, report

        large_buffers_from_mmap()
        stamp_request_ids()

        try:
            config = Config.load(
                options["config"],
                listen=options["listen"],
                data_dir=options["data-dir"],
                max_manifest_size=options["max-manifest-size"],
                workers=options["workers"],
                access_log=False if options["no-access-log"] else None,
                proxies=options["proxy"],
                log_format=options["log-format"],
                log_level=options["log-level"],
                trusted_proxies=options["trusted-proxy"],
                shutdown_timeout=options["shutdown-timeout"],
                metrics=options["metrics"],
                storage_options={
                    "bucket": options["s3-bucket"],
                    "endpoint": options["s3-endpoint"],
                    "region": options["s3-region"],
                    "prefix": options["s3-prefix"],
                    "redirect": True if options["s3-redirect"] else None,
                },
            )
            service = make_service(config, reactor)
        except ConfigError as e:
            # The message alone: a traceback would bury it.
            report(str(e))
            sys.exit(CONFIG_STATUS)
        twistd_options = getattr(options, "parent", None)
        observer = None
        if twistd_options is not None:
            observer = twistd_observer(
                twistd_options, config.log_format, config.log_level, worker=0 if config.workers > 1 else None
            )
        daemon = DaemonService(reactor, observer)
        service.setServiceParent(daemon)
        return daemon


serviceMaker = RegistryServiceMaker()
