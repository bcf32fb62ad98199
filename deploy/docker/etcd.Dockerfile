# etcd for Chorus's membership: Debian's etcd-server (3.4) and etcd-client (etcdctl) packages.
#
# Ordinary build (no context needed):  docker build -t chorus-etcd:3.4 - < deploy/docker/etcd.Dockerfile
# No registry:     deploy/docker/build-images.sh passes BASE_IMAGE=chorus-base:bookworm (made with
#                  debootstrap); the packages come from Debian's archive, as for the ordinary build.
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim
FROM ${BASE_IMAGE}
# A fixed numeric user (made before the package's postinst, which then reuses it), so that
# Kubernetes' runAsNonRoot can check it.
RUN set -eu; \
    groupadd --system --gid 2379 etcd; \
    useradd --system --uid 2379 --gid etcd --home-dir /var/lib/etcd --no-create-home --shell /usr/sbin/nologin etcd; \
    apt-get update -qq; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server etcd-client >/dev/null; \
    rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log /var/log/alternatives.log /var/cache/debconf/*-old; \
    mkdir -p /var/lib/etcd; chown etcd:etcd /var/lib/etcd; chmod 700 /var/lib/etcd
# A named volume mounted on /var/lib/etcd starts with this owner and mode.
ENV ETCD_DATA_DIR=/var/lib/etcd/data \
    ETCDCTL_API=3
WORKDIR /var/lib/etcd
USER 2379:2379
EXPOSE 2379 2380
ENTRYPOINT ["/usr/bin/etcd"]
LABEL org.opencontainers.image.title="chorus-etcd" \
      org.opencontainers.image.description="etcd 3.4 from Debian's etcd-server package, for Chorus membership"
