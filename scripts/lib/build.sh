# shellcheck shell=bash
# Builds everything the demo, the tests and the benchmarks need, quietly:
#   - the host binaries (shim) in target/debug,
#   - the static guest agent in target/x86_64-unknown-linux-gnu/release,
#   - the guest image ($BULWARK_BUILD/guest: vmlinux, initramfs.cpio, kernel-release),
#   - the test guest image ($BULWARK_BUILD/guest-test: the same, its agent built with the
#     feature test-modes: hostile guests on demand for the fault tests; never for production),
#   - the busybox and pause test images ($BULWARK_BUILD/images/{busybox,pause}-oci.tar).
# Source after scripts/lib/deps.sh (it sets BULWARK_REPO, BULWARK_BUILD, BULWARK_TOOLS_BIN);
# call bulwark_build.

bulwark_build() {
    (
        cd "$BULWARK_REPO"
        cargo build --quiet --workspace --bins --tests
        local agent=target/x86_64-unknown-linux-gnu/release/bulwark-agent
        local static=(env RUSTFLAGS="-C target-feature=+crt-static"
            LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu)
        # The test agent first, copied aside; the production agent last, so $agent is always it.
        "${static[@]}" cargo build --quiet --release --target x86_64-unknown-linux-gnu -p bulwark-agent --features test-modes
        mkdir -p "$BULWARK_BUILD/guest-test"
        cp "$agent" "$BULWARK_BUILD/guest-test/bulwark-agent.new"
        mv -f "$BULWARK_BUILD/guest-test/bulwark-agent.new" "$BULWARK_BUILD/guest-test/bulwark-agent"
        "${static[@]}" cargo build --quiet --release --target x86_64-unknown-linux-gnu -p bulwark-agent
        if grep -qaF -e kill-agent-after-start -e huge-replies -e 'TEST MODE' "$agent"; then
            echo "error: the production agent $agent has test modes compiled in" >&2
            return 1
        fi
        images/build-guest-image "$agent" "$BULWARK_BUILD/guest"
        images/build-guest-image "$BULWARK_BUILD/guest-test/bulwark-agent" "$BULWARK_BUILD/guest-test"
        images/build-test-image "$BULWARK_BUILD/images"
    )
}

# Fails unless running as root: containerd, QEMU's helpers and mounts need it.
bulwark_require_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "error: $0 must run as root (it starts containerd and mounts container filesystems)" >&2
        exit 1
    fi
}

# Starts a private containerd under directory $1 (config, root, state, socket $1/c.sock, log
# $1/containerd.log) with Bulwark installed into $1 by scripts/install-node --root (the same
# install logic as a node's: $1/opt/bulwark, $1/etc/bulwark/config.toml, the runtime handler in
# $1/containerd.toml), the demo's VM size and timeout on top. Sets BULWARK_CONTAINERD_PID.
bulwark_start_containerd() {
    local dir=$1
    mkdir -p "$dir"
    cat >"$dir/containerd.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$dir/c.sock"
[ttrpc]
  address = "$dir/c.sock.ttrpc"
TOML
    "$BULWARK_REPO/scripts/install-node" --root "$dir" --containerd-config "$dir/containerd.toml" --link \
        --runtime-dir "$dir/r" --set vm.memory_mib=256 --set vm.boot_timeout_secs=120 \
        --set "tenant.host_paths=[\"$dir\"]" || return 1
    PATH="$dir/usr/local/bin:$PATH" BULWARK_CONFIG="$dir/etc/bulwark/config.toml" \
        containerd --config "$dir/containerd.toml" >"$dir/containerd.log" 2>&1 &
    BULWARK_CONTAINERD_PID=$!
    local i
    for i in $(seq 1 100); do
        if [ -S "$dir/c.sock" ] && ctr -a "$dir/c.sock" version >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    echo "error: containerd did not start; see $dir/containerd.log" >&2
    return 1
}

# Stops the containerd started by bulwark_start_containerd (by its pid) and removes $1.
bulwark_stop_containerd() {
    local dir=$1
    if [ -n "${BULWARK_CONTAINERD_PID:-}" ]; then
        kill "$BULWARK_CONTAINERD_PID" 2>/dev/null || true
        wait "$BULWARK_CONTAINERD_PID" 2>/dev/null || true
        BULWARK_CONTAINERD_PID=
    fi
    # Detach whatever containerd left mounted under our own directory, deepest first.
    awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
        while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$dir"
}
