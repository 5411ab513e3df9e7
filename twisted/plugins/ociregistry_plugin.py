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
    ]
    optFlags = [["no-access-log", None, "Do not log a line per request."]]

    def __init__(self):
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description):
        """Twisted endpoint to listen on (repeatable), e.g. tcp:5000, ssl:5443:privateKey=k.pem:certKey=c.pem, unix:/run/reg.sock. Default tcp:5000."""
        self["listen"].append(description)

    opt_l = opt_listen


@implementer(IServiceMaker, IPlugin)
class RegistryServiceMaker:
    tapname = "ociregistry"
    description = "A container registry speaking the OCI Distribution Specification."
    options = Options

    def makeService(self, options):
        from oci_registry.config import Config, ConfigError
        from oci_registry.service import make_service

        try:
            config = Config.load(
                options["config"],
                listen=options["listen"],
                data_dir=options["data-dir"],
                max_manifest_size=options["max-manifest-size"],
                workers=options["workers"],
                access_log=False if options["no-access-log"] else None,
            )
            return make_service(config)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


serviceMaker = RegistryServiceMaker()
