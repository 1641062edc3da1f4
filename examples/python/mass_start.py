#!/usr/bin/env python3
"""Drive a mass start against `wasmsched serve` with nothing but the standard library.

    wasmsched serve --listen 127.0.0.1:8080 --data /tmp/wasmsched-data &
    python3 examples/python/mass_start.py --url http://127.0.0.1:8080 --vms 8

Creates (or replaces) the cluster `python-demo` from examples/clusters/small.json,
schedules N web VMs one request at a time (each decision sees the pending resources of the
ones before, durable on the server before it answers), prints the placements, then
reports every placed VM as started.
"""

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
CLUSTER_FILE = os.path.join(HERE, "..", "clusters", "small.json")


class Client:
    """A minimal wasmsched HTTP client."""

    def __init__(self, url, token=None):
        self.url = url.rstrip("/")
        self.token = token

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", "Bearer " + self.token)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.load(response)
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            raise SystemExit(f"{method} {path}: HTTP {e.code}: {detail}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--token", default=os.environ.get("WASMSCHED_TOKEN"))
    parser.add_argument("--cluster", default="python-demo")
    parser.add_argument("--vms", type=int, default=8)
    parser.add_argument("--memory-mb", type=int, default=4096)
    args = parser.parse_args()

    client = Client(args.url, args.token)
    with open(CLUSTER_FILE) as f:
        snapshot = json.load(f)
    created = client.call("PUT", f"/v1/clusters/{args.cluster}", snapshot)
    print(f"cluster {args.cluster}: {created['hosts']} hosts, epoch {created['epoch']}")

    placed = []
    for i in range(1, args.vms + 1):
        vm = {
            "id": f"py-web-{i}",
            "memory_mb": args.memory_mb,
            "cpu": {"sockets": 1, "cores_per_socket": 2, "threads_per_core": 1},
        }
        decision = client.call("POST", f"/v1/clusters/{args.cluster}/schedule", {"vm": vm})
        host = decision["host"]
        print(f"{vm['id']} -> {host or 'no host'}  ({decision['summary']})")
        if host:
            placed.append(vm["id"])

    for vm_id in placed:
        client.call("POST", f"/v1/clusters/{args.cluster}/vms/{vm_id}/started")
    print(f"placed {len(placed)} of {args.vms}; all reported started")
    return 0


if __name__ == "__main__":
    sys.exit(main())
