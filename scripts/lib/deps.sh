# shellcheck shell=bash
# Bulwark host dependencies. Source this file; it defines variables and functions only.
#
#   . scripts/lib/deps.sh
#   bulwark_install_deps        # installs what is missing; silent when everything is present
#
# Variables (respecting values already set in the environment):
#   BULWARK_REPO       repository root (derived from this file's location)
#   BULWARK_CACHE      ${BULWARK_CACHE:-$HOME/.cache/bulwark}: kernels, tools, ... (survives sessions)
#   BULWARK_TOOLS_BIN  $BULWARK_CACHE/tools/bin: cargo-installed helpers (virtiofsd, vhost-device-vsock,
#                      cargo-fuzz for scripts/fuzz)
#   BULWARK_BUILD      $BULWARK_REPO/build: build outputs (git-ignored)
#   BULWARK_CONTAINERD2_BIN  containerd 2.x (Debian sid's package) unpacked under $BULWARK_CACHE
#   BULWARK_VENV       $BULWARK_CACHE/venv: a private Python venv for the PyPI tools below

BULWARK_REPO="${BULWARK_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
BULWARK_CACHE="${BULWARK_CACHE:-$HOME/.cache/bulwark}"
BULWARK_TOOLS_BIN="$BULWARK_CACHE/tools/bin"
BULWARK_BUILD="${BULWARK_BUILD:-$BULWARK_REPO/build}"
export BULWARK_REPO BULWARK_CACHE BULWARK_TOOLS_BIN BULWARK_BUILD

# Debian packages the project needs on the host. clang compiles the agent's BPF programs;
# libelf-dev, zlib1g-dev and make: libbpf (built from libbpf-sys's source) linked statically
# into the agent.
BULWARK_DEB_PACKAGES=(
  qemu-system-x86 containerd runc busybox-static protobuf-compiler libseccomp-dev
  libcap-ng-dev cpio xz-utils zstd pkg-config clang erofs-utils
  containernetworking-plugins iproute2 kmod lz4 binutils python3-venv
  libelf-dev zlib1g-dev make
)

# package==version  binary: PyPI tools, installed into $BULWARK_VENV (never the system's Python).
# kubernetes-validate: the Kubernetes OpenAPI schemas (up to 1.37) for runtimeclass/tests.
BULWARK_PYPI_TOOLS=(
  "kubernetes-validate==1.37.0 kubernetes-validate"
)
BULWARK_VENV="$BULWARK_CACHE/venv"
export BULWARK_VENV

# crate  version  binary
BULWARK_CARGO_TOOLS=(
  "virtiofsd 1.14.0 virtiofsd"
  "vhost-device-vsock 0.3.0 vhost-device-vsock"
  "cargo-fuzz 0.13.2 cargo-fuzz"
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
  # e.g. "virtiofsd 1.14.0", "vhost-device-vsock 0.3.0", "cargo-fuzz 0.13.2"
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

# bulwark_python_tool_ok PACKAGE==VERSION BINARY: true if the venv has that version and binary.
bulwark_python_tool_ok() {
  local pkg="${1%%==*}" want="${1##*==}" have
  [ -x "$BULWARK_VENV/bin/$2" ] || return 1
  have="$("$BULWARK_VENV/bin/python" -m pip show "$pkg" 2>/dev/null | awk '$1 == "Version:" { print $2 }')"
  [ "$have" = "$want" ]
}

bulwark_install_python_tools() {
  local entry spec bin log
  for entry in "${BULWARK_PYPI_TOOLS[@]}"; do
    read -r spec bin <<<"$entry"
    bulwark_python_tool_ok "$spec" "$bin" && continue
    command -v python3 >/dev/null 2>&1 ||
      { bulwark_die "python3 not found: needed for $spec"; return 1; }
    log="$(mktemp)"
    if [ ! -x "$BULWARK_VENV/bin/python" ]; then
      mkdir -p "$BULWARK_CACHE"
      if ! python3 -m venv "$BULWARK_VENV" >"$log" 2>&1; then
        cat "$log" >&2; rm -f "$log"
        bulwark_die "python3 -m venv $BULWARK_VENV failed (Debian: apt-get install python3-venv)"; return 1
      fi
    fi
    echo "bulwark: installing $spec into $BULWARK_VENV" >&2
    if ! "$BULWARK_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$spec" >"$log" 2>&1; then
      cat "$log" >&2; rm -f "$log"
      bulwark_die "pip install $spec into $BULWARK_VENV failed (see above)"; return 1
    fi
    rm -f "$log"
    bulwark_python_tool_ok "$spec" "$bin" ||
      { bulwark_die "$BULWARK_VENV/bin/$bin missing or not ${spec##*==} after pip install"; return 1; }
  done
}

bulwark_install_deps() {
  bulwark_install_debs || return 1
  bulwark_install_cargo_tools || return 1
  bulwark_install_python_tools || return 1
  bulwark_install_containerd2 || return 1
}

# containerd 2.x for the CRI tests, from Debian sid's `containerd` package, unpacked into a
# private prefix; the system's containerd (bookworm, 1.6) stays the one on PATH.
#   BULWARK_CONTAINERD2_PREFIX  $BULWARK_CACHE/containerd2: the unpacked .deb (usr/bin/...)
#   BULWARK_CONTAINERD2_BIN     its bin dir: containerd, ctr, containerd-shim-runc-v2
# The .deb is fetched with a private apt configuration (its own sources, lists and cache under
# $BULWARK_CACHE/apt-sid); the machine's apt sources and state are never touched.
# Any 2.x: sid ships 2.1.x today and may move on; the tests only need the 2.x config format.
BULWARK_CONTAINERD2_SERIES="2."
BULWARK_CONTAINERD2_PREFIX="$BULWARK_CACHE/containerd2"
BULWARK_CONTAINERD2_BIN="$BULWARK_CONTAINERD2_PREFIX/usr/bin"
export BULWARK_CONTAINERD2_PREFIX BULWARK_CONTAINERD2_BIN

# True when the cached containerd 2.x runs and reports a version of the wanted series.
bulwark_containerd2_ok() {
  local out
  [ -x "$BULWARK_CONTAINERD2_BIN/containerd" ] && [ -x "$BULWARK_CONTAINERD2_BIN/ctr" ] || return 1
  out="$("$BULWARK_CONTAINERD2_BIN/containerd" --version 2>/dev/null)" || return 1
  # e.g. "containerd github.com/containerd/containerd/v2 2.1.4~ds1 2.1.4~ds1-1"
  [[ "$(awk '{print $3}' <<<"$out")" == "$BULWARK_CONTAINERD2_SERIES"* ]]
}

# The Debian archive URI the machine's own apt sources use (deb822 or one-line format): the
# first one naming debian that is not the security archive.
bulwark_debian_mirror() {
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri="$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /debian/ && $i !~ /security/) { print $i; exit } }' "$f")"
    [ -n "$uri" ] && { echo "$uri"; return 0; }
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    uri="$(awk '$1 == "deb" && $0 !~ /security/ && $0 ~ /debian/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' "$f")"
    [ -n "$uri" ] && { echo "$uri"; return 0; }
  done
  return 1
}

bulwark_install_containerd2() {
  bulwark_containerd2_ok && return 0
  local apt="$BULWARK_CACHE/apt-sid" mirror log deb
  mirror="$(bulwark_debian_mirror)" ||
    { bulwark_die "no Debian archive found in the machine's apt sources (needed to fetch sid's containerd 2.x)"; return 1; }
  mkdir -p "$apt/sources.list.d" "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/download"
  cat >"$apt/sources.list.d/sid.sources" <<SRC
Types: deb
URIs: $mirror
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  local opts=(
    -o "Dir::Etc::sourcelist=/dev/null" -o "Dir::Etc::sourceparts=$apt/sources.list.d"
    -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o "Dir::State::status=/dev/null"
    -o "APT::Architecture=amd64" -o "APT::Architectures=amd64" -o "Debug::NoLocking=1"
  )
  echo "bulwark: fetching Debian sid's containerd 2.x into $BULWARK_CONTAINERD2_PREFIX" >&2
  log="$(mktemp)"
  if ! apt-get "${opts[@]}" -qq update >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"
    bulwark_die "apt-get update of the private sid sources ($apt) failed (see above)"; return 1
  fi
  if ! (cd "$apt/download" && rm -f containerd_*.deb && apt-get "${opts[@]}" -qq download containerd) >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"
    bulwark_die "apt-get download containerd from sid failed (see above)"; return 1
  fi
  rm -f "$log"
  deb="$(ls "$apt/download"/containerd_*.deb 2>/dev/null | head -n1)"
  [ -n "$deb" ] || { bulwark_die "no containerd .deb in $apt/download after apt-get download"; return 1; }
  rm -rf "$BULWARK_CONTAINERD2_PREFIX.new"
  dpkg-deb -x "$deb" "$BULWARK_CONTAINERD2_PREFIX.new" ||
    { bulwark_die "dpkg-deb -x $deb failed"; return 1; }
  rm -rf "$BULWARK_CONTAINERD2_PREFIX"
  mv "$BULWARK_CONTAINERD2_PREFIX.new" "$BULWARK_CONTAINERD2_PREFIX"
  rm -rf "$apt/lists" "$apt/cache"
  bulwark_containerd2_ok ||
    { bulwark_die "$BULWARK_CONTAINERD2_BIN/containerd from $(basename "$deb") is not a working ${BULWARK_CONTAINERD2_SERIES}x (sid moved on? adjust BULWARK_CONTAINERD2_SERIES)"; return 1; }
}
