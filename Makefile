# keysystem: `make demo` shows the main job, `make test` runs every test.
GO  ?= go
BIN ?= bin

.PHONY: all build demo test lint deps clean keyserver-alldns test-alldns

all: build

# Debian packages and Go tools the build and tests need.
deps:
	@scripts/deps.sh

build:
	$(GO) build -o $(BIN)/ ./cmd/...

# A keyserver on the embedded store, a node admitted with a token, its CGC
# renewed, the token replayed and refused, the keyserver stopped cleanly.
demo: deps build
	@BIN=$(abspath $(BIN)) scripts/demo.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

test: deps lint
	$(GO) test -race -count=1 -timeout 15m ./...

# The keyserver with every lego DNS provider linked in (its own module:
# some 180 more modules, several minutes the first time), as
# $(BIN)/keyserver-alldns; test-alldns runs its test.
keyserver-alldns:
	cd cmd/keyserver/alldns && $(GO) build -o $(abspath $(BIN))/keyserver-alldns .

test-alldns:
	cd cmd/keyserver/alldns && $(GO) vet . && $(GO) test -race -count=1 .

clean:
	rm -rf $(BIN) demo
