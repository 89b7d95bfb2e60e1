#!/bin/sh
# Builds the .deb and the .rpm of jcdi-forwarder from a release build.
#
#   packaging/build.sh                                    # glibc build (Debian 12+, Ubuntu 22.04+, RHEL 9+)
#   packaging/build.sh --target x86_64-unknown-linux-musl # static build (also RHEL 8 class hosts)
#
# Output: target/packages/ (or target/packages/<triple>/ with --target):
#   jcdi-forwarder_<version>-1_amd64.deb and jcdi-forwarder-<version>-1.x86_64.rpm
# The man pages and shell completions are generated from the command line by
# the binary itself (jcdi-forwarder generate) into target/[<triple>/]release/generated/.
# Installs cargo-deb and cargo-generate-rpm (pinned) when missing.
set -eu

CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1

cd "$(dirname "$0")/.."

target=""
while [ $# -gt 0 ]; do
    case "$1" in
        --target) [ $# -ge 2 ] || { echo "build.sh: --target needs a triple" >&2; exit 2; }
                  target=$2; shift 2 ;;
        --target=*) target=${1#--target=}; shift ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

# Tools: install only when missing, so a second run (or CI on a kept machine)
# skips the ~3 minute compile. --locked: the versions these files were tested with.
if ! command -v cargo-deb >/dev/null 2>&1; then
    cargo install --locked "cargo-deb@$CARGO_DEB_VERSION"
fi
if ! command -v cargo-generate-rpm >/dev/null 2>&1; then
    cargo install --locked "cargo-generate-rpm@$CARGO_GENERATE_RPM_VERSION"
fi

out=target/packages
if [ -n "$target" ]; then
    # The Rust standard library for the target comes from rustup; it cannot be
    # added where rustup's download server is unreachable, so say so plainly.
    if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx "$target"; then
        echo "build.sh: Rust target $target is not installed: run 'rustup target add $target' first" >&2
        exit 1
    fi
    case "$target" in
        *-linux-musl)
            # ring compiles C and assembly: it needs a C compiler for musl.
            if ! command -v musl-gcc >/dev/null 2>&1; then
                echo "build.sh: musl-gcc not found: install musl-tools (Debian) or musl-gcc (RHEL)" >&2
                exit 1
            fi
            cc_var=CC_$(echo "$target" | tr '-' '_')
            export "$cc_var=musl-gcc"
            # A fully static binary: no glibc version requirement on the host.
            export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static"
            ;;
    esac
    out=$out/$target
    set -- --target "$target"
fi
mkdir -p "$out"
# Only this build's packages in $out, so that scripts can pick them by pattern.
rm -f "$out"/*.deb "$out"/*.rpm

# cargo-generate-rpm neither builds nor strips: build here once, for both
# packages ([profile.release] has strip = true).
cargo build --release "$@"

# Man pages and completions, generated from the CLI definition so that they
# list what --help lists. Both packaging tools take them from
# target/release/generated/ (target/<triple>/release/ with --target).
release=target/release
if [ -n "$target" ]; then release=target/$target/release; fi
generator=$release/jcdi-forwarder
if ! "$generator" --version >/dev/null 2>&1; then
    # A target this host cannot run: generate with a host build (same CLI).
    cargo build --release
    generator=target/release/jcdi-forwarder
fi
# The pages' date: the Debian changelog's latest entry, so that a rebuild of
# the same version gives the same pages (and cargo-deb the same timestamps).
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(date -d "$(sed -n 's/^ -- .*>  //p' packaging/debian/changelog | head -n 1)" +%s)
    export SOURCE_DATE_EPOCH
fi
rm -rf "$release/generated"
"$generator" generate man --out "$release/generated/man" >/dev/null
# Compressed as Debian policy wants (cargo-deb leaves globbed assets as they
# are); -n: no name nor time inside, so the same pages give the same bytes.
gzip -9n "$release"/generated/man/*.1
"$generator" generate completions --out "$release/generated/completions" >/dev/null

# --no-build: package the binary built above. Both tools rewrite the
# target/release/ asset paths to target/<triple>/release/ with --target.
cargo deb --no-build "$@" --output "$out/"
# gzip payload: older rpm (RHEL 7 and other releases without zstd support)
# cannot read the default zstd payload.
cargo generate-rpm --payload-compress gzip "$@" --output "$out/"

ls -l "$out"/*.deb "$out"/*.rpm
