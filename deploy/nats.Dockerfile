# nats-server FROM scratch, for machines that cannot pull the official nats
# image: `make images` builds nats-server from its Go module at the version
# services/go.mod requires (static, -trimpath) and packs it here, laid out
# like the official image (/nats-server as the entrypoint), plus
# /healthcheck for the container's health check. The compose test
# (compose.local.yaml) uses it in place of nats:<version>.
FROM scratch
COPY etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY nats-server healthcheck /
EXPOSE 4222 6222 8222
ENTRYPOINT ["/nats-server"]
