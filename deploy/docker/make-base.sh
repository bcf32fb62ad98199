#!/usr/bin/env bash
# Makes a minimal Debian root with debootstrap and imports it as a Docker image, for machines
# whose Docker engine cannot pull (no registry). It plays the part of debian:bookworm-slim:
# minbase (dpkg, apt, bash, coreutils, libc6, libstdc++6, libgcc-s1), without apt lists, caches,
# documentation, man pages or locales, and with dpkg told not to install them later.
#
# The layer is reproducible for a given archive state: every mtime is clamped to the date of the
# suite's Release file, logs and caches that record the build time are removed, and the tarball
# is written in sorted order with numeric owners. Point DEBIAN_MIRROR at a snapshot
# (http://snapshot.debian.org/archive/debian/20250520T000000Z) to get the same bytes every time.
#
# Usage: deploy/docker/make-base.sh IMAGE_TAG       (needs root and debootstrap)
set -euo pipefail

tag=${1:?usage: make-base.sh IMAGE_TAG}
suite=${DEBIAN_SUITE:-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

command -v debootstrap >/dev/null || { echo "make-base: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "make-base: debootstrap needs root" >&2; exit 1; }

work=$(mktemp -d /tmp/chorus-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs

echo "make-base: debootstrap --variant=minbase $suite from $mirror (about a minute)"
if ! debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1; then
    tail -n 20 "$work/debootstrap.log" >&2
    exit 1
fi

# The archive's own date stands in for SOURCE_DATE_EPOCH, so the same archive gives the same layer.
release_date=$(sed -n 's/^Date: //p' "$root"/var/lib/apt/lists/*_dists_"${suite}"_InRelease | head -n 1)
epoch=${SOURCE_DATE_EPOCH:-$(date -u -d "$release_date" +%s)}

# Settings the official Debian images carry: no docs, man pages or locales from later installs,
# apt cleans its cache after each install, and the usual suites.
cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
CFG
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
cat >"$root/etc/apt/apt.conf.d/docker-no-recommends" <<'CFG'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
CFG
cat >"$root/etc/apt/sources.list" <<CFG
deb http://deb.debian.org/debian $suite main
deb http://deb.debian.org/debian $suite-updates main
deb http://deb.debian.org/debian-security $suite-security main
CFG

# Drop what the image does not need and what records when or where it was built.
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/lintian/*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/var/cache/debconf/*-old \
       "$root"/var/lib/dpkg/*-old "$root"/var/cache/ldconfig/aux-cache "$root"/debootstrap
find "$root/var/log" -type f -delete
mkdir -p "$root/var/lib/apt/lists/partial"
: >"$root/etc/machine-id"
: >"$root/etc/hostname"
: >"$root/etc/resolv.conf"
# The 'last password change' field is the day the accounts were made.
sed -i -E "s/^([^:]*:[^:]*:)[0-9]+:/\1$((epoch / 86400)):/" "$root/etc/shadow"
rm -f "$root/etc/shadow-" "$root/etc/gshadow-" "$root/etc/passwd-" "$root/etc/group-"

tar --create --file "$work/rootfs.tar" --directory "$root" --sort=name --numeric-owner \
    --mtime="@$epoch" --clamp-mtime --xattrs --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime .
echo "make-base: rootfs $(du -sh "$root" | cut -f1), layer sha256 $(sha256sum "$work/rootfs.tar" | cut -c1-16)…"

docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    --change "LABEL org.opencontainers.image.description=\"Debian $suite minbase, made by deploy/docker/make-base.sh\" org.opencontainers.image.created=\"$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)\"" \
    "$work/rootfs.tar" "$tag" >/dev/null
echo "make-base: imported $tag"
