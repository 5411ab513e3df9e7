"""
Serve ociregistry inside your own Twisted web application.

Run:  python docs/examples/embed.py /tmp/registry-data 8080
Then: curl http://127.0.0.1:8080/            (your application's page)
      skopeo copy ... docker://127.0.0.1:8080/myrepo:tag --dest-tls-verify=false
"""

import sys

from twisted.internet import endpoints, reactor
from twisted.web.resource import Resource

from oci_registry.service import RegistrySite, registry_resource


class HomePage(Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"text/plain")
        return b"my application\n"


def make_site(data_dir: str) -> RegistrySite:
    root = Resource()
    root.putChild(b"", HomePage())
    # Registry clients always talk to /v2/ at the root of the host.
    root.putChild(b"v2", registry_resource(data_dir, reactor=reactor))
    # RegistrySite streams blob uploads into storage as they arrive; a plain
    # twisted.web.server.Site works too, buffering bodies first.
    return RegistrySite(root)


if __name__ == "__main__":
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    data_dir = sys.argv[1] if len(sys.argv) > 1 else "registry-data"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 8080
    endpoints.TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(make_site(data_dir))
    reactor.run()
