"""The user: python-novaclient with --profile KEY, unmodified (run under bu-osprofiler-run).

Prints JSON with the trace id novaclient started (what `nova --profile` prints at the end) and
the server it got back.
"""
import json
import sys

from keystoneauth1 import session
from keystoneauth1 import token_endpoint
from novaclient import client
from osprofiler import profiler


def main():
    url, key = sys.argv[1], sys.argv[2]
    sess = session.Session(auth=token_endpoint.Token(url, "fake-token"))
    nova = client.Client("2.1", session=sess, profile=key)
    server = nova.servers.get("srv-1")
    print(json.dumps({"base_id": profiler.get().get_base_id(), "name": server.name}))


if __name__ == "__main__":
    main()
