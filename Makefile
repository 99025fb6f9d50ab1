# The Makefile knows every module of the workspace: `go test ./...` does not
# cross module boundaries, so every target loops over MODULES.
MODULES := proto services ingress scheduler deliverer bouncer cli deploy
BIN     := $(CURDIR)/bin
GO      ?= go
# Fuzz and race-heavy packages need more than the default 10 minutes on 2 cores.
TEST_TIMEOUT ?= 15m

.PHONY: all build test fuzz vet lint run proto clean tidy jaeger bench-queue bench

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./ingress/cmd/sluice-ingress ./scheduler/cmd/sluice-scheduler \
		./deliverer/cmd/sluice-deliverer ./bouncer/cmd/sluice-bouncer ./deploy/cmd/sluice-local ./cli/cmd/sluice

test:
	@set -e; for m in $(MODULES); do \
		echo "== $$m"; \
		(cd $$m && $(GO) test -race -timeout $(TEST_TIMEOUT) -count=1 ./...); \
	done
	@$(MAKE) --no-print-directory fuzz

# fuzz runs every fuzz target for FUZZTIME on top of its committed corpus
# (testdata/fuzz): everything that parses client input. `go test -fuzz`
# takes one package and one target at a time.
# FUZZTIME is a count of executions, not a duration: with a duration, Go
# 1.26's fuzz coordinator can report "context deadline exceeded" as a failure
# when its deadline fires while a worker is mid-input (golang/go#75804, fixed
# in Go 1.27); a count has no deadline to race. 20,000 inputs take 1-5 s per
# target on 2 cores.
FUZZTIME ?= 20000x
FUZZ := ingress/guard:FuzzScanner ingress/guard:FuzzContentReader \
	ingress/address:FuzzParse ingress/received:FuzzHeader \
	ingress/authres:FuzzMessage ingress/smtpconn:FuzzTakePriority \
	deliverer/mtasts:FuzzParse deliverer/dane:FuzzTLSA \
	cli/headers:FuzzParseReceived proto/admin:FuzzUnmarshalQueueEvent
fuzz:
	@set -e; for t in $(FUZZ); do \
		echo "== fuzz $${t%%:*} $${t##*:}"; \
		$(GO) test -run='^$$' -fuzz="^$${t##*:}$$" -fuzztime=$(FUZZTIME) ./$${t%%:*}; \
	done

vet:
	@set -e; for m in $(MODULES); do (cd $$m && $(GO) vet ./...); done

lint: vet
	@test -z "$$(gofmt -l $(MODULES))" || (gofmt -l $(MODULES); exit 1)

tidy:
	@set -e; for m in $(MODULES); do (cd $$m && $(GO) mod tidy); done

# run builds everything and starts the whole system on this machine: an
# embedded JetStream server, the four services (in the launcher's process, on
# in-process NATS connections; ARGS=-processes runs each as a process of its
# binary) and a capture destination for the test domain example.test.
# When bin/jaeger exists (make jaeger), it is started too and receives every
# service's traces.
run: build
	$(BIN)/sluice-local -bin $(BIN) -data $(CURDIR)/data -jaeger $(BIN)/jaeger -jaeger-config $(CURDIR)/deploy/jaeger/config.yaml $(ARGS)

# cluster is `make run` on a JetStream cluster: three nats-server processes on
# loopback (client ports 4222-4224, monitoring 8222-8224), every stream
# replicated three times, and the services against them. Kill a node to
# watch the failover; sluice-local starts it again after 10 s.
.PHONY: cluster
cluster: build $(BIN)/nats-server
	$(BIN)/sluice-local -cluster 3 -nats-server $(BIN)/nats-server -bin $(BIN) -data $(CURDIR)/data -jaeger $(BIN)/jaeger -jaeger-config $(CURDIR)/deploy/jaeger/config.yaml $(ARGS)

# nats-server is built from the module the services are tested with.
$(BIN)/nats-server: services/go.mod
	@mkdir -p $(BIN)
	cd deploy && $(GO) build -o $(BIN)/nats-server github.com/nats-io/nats-server/v2

# jaeger builds Jaeger v1.76.0 from the Go module proxy into bin/jaeger (a few
# minutes, once). Its module lives outside the workspace on purpose.
jaeger: $(BIN)/jaeger
$(BIN)/jaeger:
	@mkdir -p $(BIN)
	cd deploy/jaeger && GOWORK=off $(GO) build -o $(BIN)/jaeger github.com/jaegertracing/jaeger/cmd/jaeger

# bench runs the same SMTP load against Sluice and Postfix (installed from
# Debian when run as root) with the harness in ../shared/bench, and prints one
# table with ratios; then the deliverer scaling benchmark, and the same on
# nats-server processes: R1 on one server against R3 on a three-node cluster,
# and 1, 2 and 4 deliverers on the cluster. Never part of test.
bench: build
	deploy/bench/relay.sh
	cd deploy && $(GO) test ./e2e -run '^$$' -bench 'DeliverersSlow|^BenchmarkShaping' -benchtime 1x -count 3
	cd deploy && $(GO) test ./e2e -run '^$$' -bench '^BenchmarkCluster' -benchtime 1x

# bench-queue fills a running system with a million deferred jobs across a
# thousand domains and times `sluice queue stats`, the first row of
# `sluice queue list -domain D`, and the index memory per job. It takes a
# few minutes and is not part of `make test`. BENCH_QUEUE_FLAGS passes
# flags, e.g. BENCH_QUEUE_FLAGS="-jobs 100000".
bench-queue: build
	cd deploy && $(GO) run ./bench/queue -bin $(BIN) $(BENCH_QUEUE_FLAGS)

# proto regenerates the Go code of the wire schemas (needs protoc and
# protoc-gen-go; the generated code is committed, so builds do not).
proto:
	protoc --go_out=proto --go_opt=paths=source_relative -Iproto proto/sluicev1/sluice.proto

clean:
	rm -rf $(BIN)

# images builds Sluice's container images FROM scratch (deploy/Dockerfile),
# which needs no registry: static binaries of the four services, the compose
# deployment's mail sink (sluice-capture), sluice-setup and healthcheck go
# into bin/image with the build host's CA certificates, and one image per
# service is built from there, tagged IMAGE_TAG. nats-server is built from
# its Go module at the version services/go.mod requires and packed as
# $(NATS_IMAGE), which the compose test uses in place of the official
# nats:<version> image.
IMAGE_TAG    ?= 0.1.0
IMAGE_DIR    := $(BIN)/image
NATS_VERSION := $(shell awk '$$1 == "github.com/nats-io/nats-server/v2" {print $$2}' services/go.mod)
NATS_IMAGE   := sluice-local/nats:$(NATS_VERSION:v%=%)
CA_CERTS     ?= /etc/ssl/certs/ca-certificates.crt
IMAGE_SERVICES := ingress scheduler deliverer bouncer capture
# The legacy builder: the engine may be older than the client's BuildKit
# expects, and without buildx the client has nothing else.
DOCKER_BUILD := DOCKER_BUILDKIT=0 docker build -q

.PHONY: images image-binaries test-compose
image-binaries:
	@test -r $(CA_CERTS) || { echo "images: $(CA_CERTS) is missing (apt-get install ca-certificates)"; exit 1; }
	@mkdir -p $(IMAGE_DIR)/etc/ssl/certs $(IMAGE_DIR)/var/lib/sluice/secrets $(IMAGE_DIR)/var/lib/sluice/tools
	cp $(CA_CERTS) $(IMAGE_DIR)/etc/ssl/certs/ca-certificates.crt
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags=-s -o $(IMAGE_DIR)/ ./ingress/cmd/sluice-ingress \
		./scheduler/cmd/sluice-scheduler ./deliverer/cmd/sluice-deliverer ./bouncer/cmd/sluice-bouncer \
		./deploy/cmd/sluice-capture ./deploy/cmd/sluice-setup ./deploy/cmd/healthcheck
	GOBIN=$(IMAGE_DIR) CGO_ENABLED=0 $(GO) install -trimpath -ldflags=-s github.com/nats-io/nats-server/v2@$(NATS_VERSION)

# Each image is built from a context of its own (hard links into
# bin/image-context/<name>) holding only what it copies: the daemon reads
# and stores every byte of a context, and all binaries together are 110 MB.
images: image-binaries
	@set -e; ctx=$(BIN)/image-context; rm -rf $$ctx; \
	for s in nats $(IMAGE_SERVICES); do \
		mkdir -p $$ctx/$$s/etc/ssl/certs; \
		ln -f $(IMAGE_DIR)/etc/ssl/certs/ca-certificates.crt $$ctx/$$s/etc/ssl/certs/; \
		ln -f $(IMAGE_DIR)/healthcheck $$ctx/$$s/; \
		if [ $$s = nats ]; then \
			ln -f $(IMAGE_DIR)/nats-server $$ctx/$$s/; \
			echo "docker build $(NATS_IMAGE)"; \
			$(DOCKER_BUILD) -f deploy/nats.Dockerfile -t $(NATS_IMAGE) $$ctx/$$s; \
		else \
			ln -f $(IMAGE_DIR)/sluice-setup $(IMAGE_DIR)/sluice-$$s $$ctx/$$s/; \
			cp -r $(IMAGE_DIR)/var $$ctx/$$s/; \
			echo "docker build sluice-$$s:$(IMAGE_TAG)"; \
			$(DOCKER_BUILD) -f deploy/Dockerfile --build-arg SERVICE=$$s -t sluice-$$s:$(IMAGE_TAG) $$ctx/$$s; \
		fi; \
	done

# test-compose runs the compose deployment for real (deploy/compose/test.sh):
# the local images, three NATS nodes, mail in through submission with AUTH
# and out to the sink, a NATS node stopped and another cut off during a load,
# and an exact count of what was delivered. Skipped when no Docker engine
# answers.
test-compose:
	deploy/compose/test.sh
