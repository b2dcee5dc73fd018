# shellcheck shell=bash
# Bulwark host dependencies. Source this file; it defines variables and functions only.
#
#   . scripts/lib/deps.sh
#   bulwark_install_deps        # installs what is missing; silent when everything is present
#
# Variables (respecting values already set in the environment):
#   BULWARK_REPO       repository root (derived from this file's location)
#   BULWARK_CACHE      ${BULWARK_CACHE:-$HOME/.cache/bulwark}: kernels, tools, ... (survives sessions)
#   BULWARK_TOOLS_BIN  $BULWARK_CACHE/tools/bin: cargo-installed helpers (virtiofsd, vhost-device-vsock)
#   BULWARK_BUILD      $BULWARK_REPO/build: build outputs (git-ignored)

BULWARK_REPO="${BULWARK_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
BULWARK_CACHE="${BULWARK_CACHE:-$HOME/.cache/bulwark}"
BULWARK_TOOLS_BIN="$BULWARK_CACHE/tools/bin"
BULWARK_BUILD="${BULWARK_BUILD:-$BULWARK_REPO/build}"
export BULWARK_REPO BULWARK_CACHE BULWARK_TOOLS_BIN BULWARK_BUILD

# Debian packages the project needs on the host.
BULWARK_DEB_PACKAGES=(
  qemu-system-x86 containerd runc busybox-static protobuf-compiler libseccomp-dev
  libcap-ng-dev cpio xz-utils zstd pkg-config clang erofs-utils
  containernetworking-plugins iproute2 kmod lz4 binutils
)

# crate  version  binary
BULWARK_CARGO_TOOLS=(
  "virtiofsd 1.14.0 virtiofsd"
  "vhost-device-vsock 0.3.0 vhost-device-vsock"
)

bulwark_die() {
  echo "bulwark: error: $*" >&2
  return 1
}

# Prints the Debian packages from the arguments that are not installed.
bulwark_missing_debs() {
  local p status
  for p in "$@"; do
    status="$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)"
    [ "$status" = installed ] || echo "$p"
  done
}

bulwark_install_debs() {
  local missing
  mapfile -t missing < <(bulwark_missing_debs "${BULWARK_DEB_PACKAGES[@]}")
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    bulwark_die "missing Debian packages: ${missing[*]}; install them with: sudo apt-get install -y ${missing[*]}"
    return 1
  fi
  echo "bulwark: installing Debian packages: ${missing[*]}" >&2
  local log
  log="$(mktemp)"
  if ! DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"
    bulwark_die "apt-get update failed (see above)"; return 1
  fi
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"
    bulwark_die "apt-get install ${missing[*]} failed (see above)"; return 1
  fi
  rm -f "$log"
}

# bulwark_tool_ok BINARY VERSION: true if $BULWARK_TOOLS_BIN/BINARY reports VERSION.
bulwark_tool_ok() {
  local bin="$BULWARK_TOOLS_BIN/$1" want="$2" out
  [ -x "$bin" ] || return 1
  out="$("$bin" --version 2>/dev/null)" || return 1
  # e.g. "virtiofsd 1.14.0", "vhost-device-vsock 0.3.0"
  [ "${out##* }" = "$want" ]
}

bulwark_install_cargo_tools() {
  local entry crate version bin
  for entry in "${BULWARK_CARGO_TOOLS[@]}"; do
    read -r crate version bin <<<"$entry"
    bulwark_tool_ok "$bin" "$version" && continue
    command -v cargo >/dev/null 2>&1 ||
      { bulwark_die "cargo not found: needed to build $crate $version; install Rust (rustup) first"; return 1; }
    echo "bulwark: building $crate $version into $BULWARK_CACHE/tools (takes a few minutes)" >&2
    cargo install --quiet --locked --force --root "$BULWARK_CACHE/tools" "$crate@$version" ||
      { bulwark_die "cargo install $crate@$version failed (it needs libseccomp-dev libcap-ng-dev pkg-config for virtiofsd)"; return 1; }
    bulwark_tool_ok "$bin" "$version" ||
      { bulwark_die "$BULWARK_TOOLS_BIN/$bin does not report version $version after cargo install"; return 1; }
  done
}

bulwark_install_deps() {
  bulwark_install_debs || return 1
  bulwark_install_cargo_tools || return 1
}
