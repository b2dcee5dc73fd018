#!/usr/bin/env bash
# Entrypoint of the Bulwark node installer image (Containerfile), run by the DaemonSets in
# daemonset.yaml ("install") and uninstall-daemonset.yaml ("uninstall"). It runs the same
# scripts/install-node as a node does by hand, against the node's root file system mounted at
# /host (--host-root): files are written there, the configs name the node's own paths, and
# containerd is asked for its version, checked and restarted in the node's namespaces (the pod
# has hostPID; install-node uses nsenter --target 1). Then it sleeps, so that the DaemonSet
# shows one ready pod per node that is done; a failure exits non-zero and is retried by the
# kubelet (e.g. an uninstall refused while Bulwark pods still run on the node).
#
#   entrypoint.sh install   [install-node options, e.g. --set vm.allow_tcg_fallback=false]
#   entrypoint.sh uninstall [--force]
set -euo pipefail

mode=${1:-install}
[ $# -gt 0 ] && shift
HOST_ROOT=${BULWARK_HOST_ROOT:-/host}
PAYLOAD=${BULWARK_PAYLOAD:-/opt/bulwark-payload}
INSTALL_NODE=${BULWARK_INSTALL_NODE:-/opt/bulwark-install/install-node}
DONE=${BULWARK_DONE_FILE:-/tmp/bulwark-node-done}

[ -d "$HOST_ROOT/etc" ] || { echo "entrypoint: the node's root is not mounted at $HOST_ROOT" >&2; exit 1; }
: "${NODE_NAME:?NODE_NAME must name the node (the DaemonSet passes spec.nodeName)}"

rm -f "$DONE"
case $mode in
  install)
    "$INSTALL_NODE" --host-root "$HOST_ROOT" --from "$PAYLOAD" --node-name "$NODE_NAME" "$@"
    echo "entrypoint: Bulwark is installed on node $NODE_NAME" ;;
  uninstall)
    "$INSTALL_NODE" --host-root "$HOST_ROOT" --uninstall "$@"
    echo "entrypoint: Bulwark is removed from node $NODE_NAME" ;;
  *)
    echo "usage: entrypoint.sh install|uninstall [install-node options]" >&2
    exit 2 ;;
esac
touch "$DONE"
sleep infinity &
sleeper=$!
trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM INT
wait "$sleeper"
