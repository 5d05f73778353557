# Parley's build. `make help` lists the targets.
#
# Code generators are pinned in tools/go.mod and run with `go tool`, and the
# TypeScript generator comes from clients/ts/package-lock.json, so everything
# here works offline from the Go module proxy and the npm registry alone.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# Every go command here leaves the checkout's path out of what it builds
# (-trimpath), so that the build cache serves a clone at any path: a clean
# clone (as CI makes one) recompiles only what changed, where otherwise
# it recompiled every package of the module, with and without the race
# detector, and each fuzz target's instrumented build.
ifeq ($(filter -trimpath,$(GOFLAGS)),)
export GOFLAGS := $(strip $(GOFLAGS) -trimpath)
endif

GO_TOOL := go tool -modfile=tools/go.mod
BUF := $(GO_TOOL) buf
# validate.proto is copied here from the pinned Go module (never committed).
PROTOVALIDATE_DIR := third_party/protovalidate/buf/validate
ENT_FEATURES := sql/upsert,sql/execquery
GENERATED := gen ent clients/ts/src/gen proto

.PHONY: help
help: ## Show the targets.
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

.PHONY: run
run: ## Run the server with embedded stores (same as `go run .`).
	go run .

.PHONY: build
build: ## Build the server binary into bin/parley.
	go build -trimpath -ldflags "-s -w" -o bin/parley .

# MinIO, the S3-compatible server the S3 storage is tested against (AGPL; run
# as a separate process only). Its module has one version on the proxy; the
# first build takes about 5 minutes.
MINIO_VERSION := v0.0.0-20260212201848-7aac2a2c5b7c
MINIO := $(shell go env GOPATH)/bin/minio

$(MINIO):
	GOFLAGS= go install github.com/minio/minio@$(MINIO_VERSION)

# Mailpit, the SMTP server the account mails are tested against (the tests
# read what it received through its HTTP API); servertest starts it.
MAILPIT_VERSION := v1.33.1
MAILPIT := $(shell go env GOPATH)/bin/mailpit

$(MAILPIT):
	GOFLAGS= go install github.com/axllent/mailpit@$(MAILPIT_VERSION)

# Debian's Chromium, which the browser test drives through playwright-core
# (Playwright's own browser download cannot work here).
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium

# grpcurl and jq, which the README's examples use (TestREADME runs them).
GRPCURL_VERSION := v1.9.4
GRPCURL := $(shell go env GOPATH)/bin/grpcurl
JQ := /usr/bin/jq

$(GRPCURL):
	GOFLAGS= go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)

$(JQ):
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends jq

# Debian's nginx (1.22), which deploy/nginx/parley.conf is tested with.
NGINX := /usr/sbin/nginx

$(NGINX):
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx

# The suites `make test` runs, in order. Each one builds what it needs first,
# so that one suite's failure (or its setup's) leaves the others to run.
TEST_SUITES := go embedded cluster soak ts web

.PHONY: test
test: ## Run every test suite (go, embedded, cluster, soak, ts, web), even after one fails, and name the failed ones at the end.
	@failed=(); took=(); \
	for suite in $(TEST_SUITES); do \
		start=$$SECONDS; \
		$(MAKE) --no-print-directory test-$$suite || failed+=("$$suite"); \
		took+=("$$suite $$((SECONDS - start))s"); \
	done; \
	printf -v times '%s, ' "$${took[@]}"; \
	echo "make test: time per suite: $${times%, }"; \
	if (( $${#failed[@]} > 0 )); then \
		printf -v names '%s, ' "$${failed[@]}"; \
		echo "make test: FAILED: $${names%, }" >&2; exit 1; \
	fi; \
	echo "make test: all suites passed: $(TEST_SUITES)"

.PHONY: test-go
test-go: $(MINIO) $(MAILPIT) $(NGINX) $(GRPCURL) $(JQ) ## Go tests against real PostgreSQL, Redis, the document engine (FerretDB 2 + DocumentDB), MinIO, Mailpit and nginx; the README's examples.
	PARLEY_TEST_MINIO=$(MINIO) PARLEY_TEST_MAILPIT=$(MAILPIT) PARLEY_TEST_NGINX=$(NGINX) PARLEY_TEST_GRPCURL=$(GRPCURL) scripts/with-test-services go test -race -count=1 -timeout 60m ./...

# The chat store's tests that cover every store method, run again on the
# embedded FerretDB 1.x that `go run .` uses (it answers by scanning, so
# the slow paging test is left to the real engine), without the race
# detector: test-go runs them with it on the engine, and here it would
# instrument the in-process FerretDB too (294 s against 110 s without it,
# on session 17's machine).
EMBEDDED_TESTS := ^(TestStore_PagesAcrossGaps|TestPrepare_UpgradesVersion1|TestChatService_(CreatePrivateChat|CreateGroupChat|Admins|ListChats|AdminsDemoteEachOther|AdminsLeaveTogether)|TestMessageService_(Idempotent|RetryTakesNoSeq|RetryAfterLostAttempt|SeqCounterLost|StatusAndUnread|EditDelete|MarkDeliveredOnLiveEvent)|TestRace_(ReadAndDelivered|RenameAndSend|SendsSetLastMessage|DeleteAndRead)|TestSendMessage_(ChecksOnEveryInstance|ChangeThatDied|VersionLost)|TestPrivacyService|TestNeeded|TestLocks_Nil|TestReplies|TestMentions|TestChatSettings_(PinArchiveMute|PinLimitRace)|TestDeleteMessagesForMe|TestInvites_(JoinByLink|RaceToLimit)|TestGroupAvatar|TestSearchMessages|TestPins_(PinUnpinList|RaceToLimit)|TestMessageReceipts|TestForward_(TextAndFiles|DeleteKeepsSharedFile)|TestReactions_(AddRemoveList|Limit)|TestDeletedMember|TestRetry_(AnnouncesWhatTheFailedCallDidNot|LeaveWithinTenMinutes|ArrivalsAnnouncedOnce))$$

.PHONY: test-embedded
test-embedded: ## The chat store's tests (a subset covering every store method) on the embedded FerretDB 1.x.
	scripts/with-test-services env PARLEY_TEST_MONGO_URI= go test -count=1 -timeout 20m -run '$(EMBEDDED_TESTS)' ./server/chat/ ./server/doclock/

# The packages whose tests cover every family of Redis keys and channels
# (sessions, rate limits, seq counters, chat versions, positions, event
# logs, stream leases, presence, upload slots, push subscriptions and the
# push queue), run again on a Redis
# Cluster, without the race detector (test-go runs them with it, on the
# same code but the Redis client; with it they take 15 minutes here); then,
# alone and with it, the failover tests of server/clustertest, which kill
# the cluster's nodes, and server/redisconn.
CLUSTER_PACKAGES := ./server/auth/ ./server/live/ ./server/chat/ ./server/media/ ./server/push/

.PHONY: test-cluster
test-cluster: $(MAILPIT) ## The auth, live, chat, media and push suites on a Redis Cluster (3 masters, 3 replicas) that the test scripts start, then the failover tests.
	PARLEY_TEST_REDIS_CLUSTER=1 PARLEY_TEST_MAILPIT=$(MAILPIT) scripts/with-test-services bash -c \
		'go test -count=1 -timeout 20m $(CLUSTER_PACKAGES); a=$$?; go test -race -count=1 -p 1 -timeout 10m ./server/redisconn/ ./server/clustertest/; exit $$((a | $$?))'

# The fault soak (cmd/parley-soak): three instances behind nginx, on a Redis
# Cluster and the document engine with synchronous_commit on, under
# traffic while faults are injected; it fails on any message lost, stored
# twice or missed. SOAK_FLAGS adds to its flags (`make soak SOAK_FLAGS=-keep`).
SOAK_DURATION ?= 10m
SOAK_FLAGS ?=
SOAK := PARLEY_TEST_REDIS_CLUSTER=1 PARLEY_ENGINE_DURABLE=1 scripts/with-test-services \
	go run ./cmd/parley-soak -parley-bin bin/parley-test -nginx $(NGINX)

.PHONY: soak
soak: test-server $(NGINX) ## The fault soak for SOAK_DURATION (10m): one fault a minute, every kind in turns.
	$(SOAK) -duration $(SOAK_DURATION) $(SOAK_FLAGS)

.PHONY: test-soak
test-soak: test-server $(NGINX) ## The fault soak for 60 s with two faults: an instance's kill -9 and a Redis master's.
	$(SOAK) -duration 60s -fault-every 20s -faults instance-kill,redis-master-kill -drain 30s -grace 30s $(SOAK_FLAGS)

.PHONY: test-ts
test-ts: clients/ts/node_modules test-server $(NGINX) ## The TS client's tests against a real server, then against two behind nginx.
	npm --prefix clients/ts run --silent build
	PARLEY_BIN=$(CURDIR)/bin/parley-test npm --prefix clients/ts test
	PARLEY_BIN=$(CURDIR)/bin/parley-test PARLEY_NGINX=$(NGINX) scripts/with-test-services scripts/behind-nginx \
		-registrations-per-address 100000 -login-attempts-per-address 100000 -access-token-ttl 2s -- \
		npm --prefix clients/ts test

.PHONY: test-web
test-web: web $(CHROMIUM) test-server $(NGINX) ## The web chat's browser test (in Chromium) against a real server, then against two behind nginx.
	PARLEY_BIN=$(CURDIR)/bin/parley-test CHROMIUM=$(CHROMIUM) npm --prefix clients/web test
	PARLEY_BIN=$(CURDIR)/bin/parley-test PARLEY_NGINX=$(NGINX) CHROMIUM=$(CHROMIUM) scripts/with-test-services \
		scripts/behind-nginx -web-dir $(CURDIR)/clients/web/dist -- npm --prefix clients/web test

# The server binary the TS client's and the web chat's tests start.
.PHONY: test-server
test-server:
	go build -o bin/parley-test .

# How long `make fuzz` fuzzes each target (`make fuzz FUZZTIME=1m`).
FUZZTIME ?= 10s

.PHONY: fuzz
fuzz: ## Run every fuzz target (func Fuzz... in *_test.go) alone for FUZZTIME (10s) each; stop at the first failure.
	FUZZTIME=$(FUZZTIME) scripts/fuzz

.PHONY: bench
bench: ## Run the load tool's workloads 3 times each on the document engine (about 20 minutes) and write BENCHMARKS.md and bench/charts.
	scripts/bench

.PHONY: bench-quick
bench-quick: ## The whole benchmark chain in short (one run, 3 s phases) into a temp dir: that it works, not what it measures.
	PARLEY_BENCH_QUICK=1 scripts/bench

.PHONY: web
web: clients/web/node_modules ## Build the web chat into clients/web/dist (serve it with -web-dir).
	npm --prefix clients/ts run --silent build
	npm --prefix clients/web run --silent build

.PHONY: generate
generate: proto-deps clients/ts/node_modules ## Regenerate gen/, ent/ and clients/ts/src/gen from scratch.
	$(BUF) format -w
	$(BUF) lint
	rm -rf gen clients/ts/src/gen
	$(BUF) generate
	find ent -mindepth 1 -maxdepth 1 ! -name schema ! -name migrate -exec rm -rf {} +
	find ent/migrate -mindepth 1 -maxdepth 1 ! -name migrations -exec rm -rf {} +
	$(GO_TOOL) ent generate --feature $(ENT_FEATURES) ./ent/schema

.PHONY: check-generated
check-generated: generate ## Fail if the committed generated code differs from a fresh generation.
	@changes=$$(git status --porcelain -- $(GENERATED)); \
	if [ -n "$$changes" ]; then \
		echo "Generated code is stale; run 'make generate' and commit:"; echo "$$changes"; \
		git --no-pager diff --stat -- $(GENERATED); exit 1; \
	fi

.PHONY: proto-deps
proto-deps: ## Copy validate.proto from the Go module pinned in tools/go.mod.
	@mkdir -p $(PROTOVALIDATE_DIR)
	@dir=$$(go list -modfile=tools/go.mod -m -f '{{.Dir}}' github.com/bufbuild/protovalidate); \
	if [ -z "$$dir" ] || [ ! -d "$$dir" ]; then \
		go mod download -modfile=tools/go.mod github.com/bufbuild/protovalidate; \
		dir=$$(go list -modfile=tools/go.mod -m -f '{{.Dir}}' github.com/bufbuild/protovalidate); \
	fi; \
	install -m 0644 "$$dir/proto/protovalidate/buf/validate/validate.proto" $(PROTOVALIDATE_DIR)/validate.proto

clients/ts/node_modules: clients/ts/package-lock.json
	npm --prefix clients/ts ci --no-audit --no-fund
	@touch $@

clients/web/node_modules: clients/web/package-lock.json clients/ts/node_modules
	npm --prefix clients/web ci --no-audit --no-fund
	@touch $@

.PHONY: lint
lint: proto-deps ## buf lint, go vet, a gofmt check and go.mod tidy.
	$(BUF) lint
	go vet ./...
	go mod tidy -diff
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change:"; echo "$$unformatted"; exit 1; fi

# What `make ci` runs, in order; it stops at the first that fails, and
# says how long each took.
CI_STEPS := check-generated lint test fuzz-and-bench-quick

.PHONY: ci
ci: ## Everything CI checks (check-generated, lint, test, fuzz-and-bench-quick).
	@took=(); \
	for step in $(CI_STEPS); do \
		start=$$SECONDS; \
		$(MAKE) --no-print-directory $$step || { rc=$$?; echo "make ci: $$step FAILED after $$((SECONDS - start))s" >&2; exit $$rc; }; \
		took+=("$$step $$((SECONDS - start))s"); \
		printf -v times '%s, ' "$${took[@]}"; echo "make ci: time per step so far: $${times%, }"; \
	done

# The fuzzing and the short benchmark run side by side: each lasts a set
# time (FUZZTIME per target, 3 s phases) rather than a set amount of work,
# so that together they take the longer of the two, not the sum. The
# fuzzing's output is shown after the benchmark's.
.PHONY: fuzz-and-bench-quick
fuzz-and-bench-quick: ## `make fuzz` and `make bench-quick` side by side (part of `make ci`).
	@fuzzlog=$$(mktemp); bench=0; fuzzed=0; \
	$(MAKE) --no-print-directory fuzz >"$$fuzzlog" 2>&1 & fuzz=$$!; \
	$(MAKE) --no-print-directory bench-quick || bench=$$?; \
	wait $$fuzz || fuzzed=$$?; \
	cat "$$fuzzlog"; rm -f "$$fuzzlog"; \
	if (( fuzzed != 0 )); then echo "make ci: fuzz FAILED" >&2; fi; \
	if (( bench != 0 )); then echo "make ci: bench-quick FAILED" >&2; fi; \
	exit $$(( fuzzed | bench ))
