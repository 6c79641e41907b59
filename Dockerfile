# HTC Grid: htc-server, htc-agent and htc in one image.
#
#   docker build -t htc-grid .
#   docker run --rm htc-grid htc --help
#
# Two stages: the Swift toolchain builds the release binaries with the Swift runtime and Foundation
# linked in statically (--static-swift-stdlib), and a slim Debian image of the same release (bookworm,
# so the C libraries match) gets only the binaries and the shared libraries they load: hiredis, SQLite
# and libcurl (Foundation's URLSession, used by `htc --server`). No Docker engine is available on the
# project's machines, so this file is not built by CI: docs/deployment.md says how to check it by hand.
# SWIFT_VERSION must be at least the manifest's tools version (6.1); the project is developed on 6.3.
ARG SWIFT_VERSION=6.1

FROM swift:${SWIFT_VERSION}-bookworm AS build
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libsqlite3-dev libhiredis-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so that a change to the sources does not fetch them again.
COPY Package.swift ./
RUN swift package resolve
COPY Sources ./Sources
COPY Tests ./Tests
COPY IntegrationTests ./IntegrationTests
COPY openapi.yaml ./
RUN swift build -c release --static-swift-stdlib \
    && bin="$(swift build -c release --static-swift-stdlib --show-bin-path)" \
    && mkdir -p /staging \
    && cp "$bin/htc-server" "$bin/htc-agent" "$bin/htc" /staging/ \
    && strip /staging/*

FROM debian:bookworm-slim
# ca-certificates: TLS to AWS and rediss://; curl: the health check of htc-server; tini: PID 1 that
# forwards SIGTERM (agents drain on it) and reaps the children of --exec commands.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates curl libcurl4 libhiredis0.14 libsqlite3-0 tini tzdata \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/htc --create-home --shell /usr/sbin/nologin htc
COPY --from=build /staging/ /usr/local/bin/
# Fails the build if a binary needs a shared library the image lacks.
RUN ! ldd /usr/local/bin/htc-server /usr/local/bin/htc-agent /usr/local/bin/htc | grep "not found"
USER 10001:10001
WORKDIR /var/lib/htc
ENV HTC_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["htc", "--help"]
