#!/usr/bin/env bash
# Runs a command inside a fresh network namespace that has nothing but loopback, so that
# whatever it starts can listen on and talk to 127.0.0.1 only. The Ray tests need this: Ray
# turns 127.0.0.1 into the machine's own address (services.resolve_ip_for_localhost) and its
# GCS, raylets and workers listen on every interface, whatever --node-ip-address says. In
# a namespace with only `lo`, the machine's address is 127.0.0.1 and no other interface
# exists. Sets CLINSEARCH_LOOPBACK_NETNS=1 inside so the tests can tell.
#
# Needs root (or CAP_SYS_ADMIN) and iproute2's `ip`; without them it says so and exits 3.
set -euo pipefail
if [ "$(id -u)" != 0 ] || ! command -v ip > /dev/null; then
  echo "in_loopback_netns: needs root and iproute2 (ip netns) to isolate the Ray cluster" >&2
  exit 3
fi
ns="clinsearch-test-$$"
ip netns add "$ns"
cleanup() {
  # Whatever the command left running in the namespace (a Ray cluster) goes with it.
  ip netns pids "$ns" 2> /dev/null | xargs -r kill -9 2> /dev/null || true
  ip netns del "$ns" 2> /dev/null || true
}
trap cleanup EXIT
trap 'exit 143' INT TERM
ip netns exec "$ns" ip link set lo up
CLINSEARCH_LOOPBACK_NETNS=1 ip netns exec "$ns" "$@"
