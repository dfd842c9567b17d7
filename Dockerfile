# syntax=docker/dockerfile:1
#
# Redeliver controller image: a fully static (musl) binary on distroless/static.
#
# Why static musl on distroless/static rather than glibc on distroless/cc: the crate is
# pure Rust except ring's C/assembly, so a musl build is fully static and needs no libc
# in the image at all; distroless/static still brings what a static binary needs at run
# time (CA certificates for Graph over TLS, /etc/passwd with the nonroot user 65532,
# tzdata) and nothing else: no shell, no package manager. The result is a few MB on top
# of the binary. The price, musl's slower allocator and simpler DNS resolver, does not
# matter for a controller that spends its time waiting on the API server and Graph; should
# it ever, switch to a glibc build on gcr.io/distroless/cc-debian12:nonroot.
#
# The builder runs on the target platform (no --platform=$BUILDPLATFORM), so
# `docker buildx build --platform linux/amd64,linux/arm64 .` builds each architecture
# natively or under emulation with no cross toolchain.
#
#   docker build -t redeliver:0.1.0 .
#   kind load docker-image redeliver:0.1.0     # or push it and set image.repository

ARG RUST_VERSION=1
FROM rust:${RUST_VERSION}-bookworm AS build

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# musl-tools provides musl-gcc, which ring's build script uses for its C and assembly.
# Not version-pinned: bookworm point releases replace the package, and a pin would break
# the build on each of them without making the (build-time only) tool any safer.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# The target triple follows the build machine's architecture (x86_64 or aarch64). Cache
# mounts keep the registry and target directory between builds; the binary is copied out
# of the cached target directory in the same step.
# ring is compiled with Debian's musl-gcc, which targets the native architecture; naming
# it explicitly keeps the cc crate from looking for an "<arch>-linux-musl-gcc" cross
# compiler on arm64.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    set -eux; \
    target="$(uname -m)-unknown-linux-musl"; \
    rustup target add "$target"; \
    export "CC_$(echo "$target" | tr - _)=musl-gcc"; \
    cargo build --release --locked --bin redeliver --target "$target"; \
    install -D -m 0755 "target/$target/release/redeliver" /out/redeliver

FROM gcr.io/distroless/static-debian12:nonroot

LABEL org.opencontainers.image.title="redeliver" \
      org.opencontainers.image.description="Kubernetes operator that keeps Microsoft Entra ID access package assignments truly delivered" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=build /out/redeliver /usr/local/bin/redeliver

# Numeric user so Kubernetes can check runAsNonRoot; the chart's securityContext uses the
# same 65532:65532 (distroless "nonroot") and a read-only root filesystem.
USER 65532:65532

# Metrics, /livez and /readyz (the chart passes --metrics-addr=0.0.0.0:8080).
EXPOSE 8080

ENTRYPOINT ["/usr/local/bin/redeliver"]
CMD ["controller"]
