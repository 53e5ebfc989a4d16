# Convenience front door; CMake does the building.
#   make run    build and run spamtrapd in the foreground on conf/spamtrapd.json,
#               with its SQLite file under ./var
#   make test   build with ASan/UBSan and run every test layer (unit,
#               integration, end to end with Postfix and Redis)
BUILD ?= build
TEST_BUILD ?= build-test
JOBS ?= $(shell nproc)

.PHONY: all deps build run test test-deps check-format clean

all: build

deps:
	scripts/install-deps.sh build

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSPAMTRAPD_TESTS=OFF
	cmake --build $(BUILD) -j $(JOBS)

# The shipped config runs as user "spamtrapd", which exists once the .deb is
# installed. From a checkout: as root, serve as "nobody" (spamtrapd never
# serves as root); otherwise stay the user who ran make. scripts/spamtrapctl
# runs spamtrapctl on the same store as the same user: keep them in step.
RUN_USER = $(if $(filter 0,$(shell id -u)),nobody,null)

run: build
	mkdir -p var
	if [ "$(RUN_USER)" = nobody ]; then chown nobody: var; fi
	$(BUILD)/src/spamtrapd -f -c conf/spamtrapd.json -o store.sqlite.path=var/spamtrapd.db -o user=$(RUN_USER)

test-deps:
	scripts/install-deps.sh test

test: test-deps
	cmake -S . -B $(TEST_BUILD) -DCMAKE_BUILD_TYPE=Debug -DSPAMTRAPD_SANITIZE=ON -DSPAMTRAPD_TESTS=ON
	cmake --build $(TEST_BUILD) -j $(JOBS)
	cd $(TEST_BUILD) && ctest --output-on-failure -j $(JOBS)
	$(MAKE) check-format

# make build-release-check  what packagers and `make build` compile: an
#                optimised build (RelWithDebInfo, -O2, no sanitizers) of
#                everything, daemon, spamtrapctl, unit tests, fuzz replays and
#                bench tools, in $(RELEASE_BUILD), then the unit tests and fuzz
#                replays in it. -O2 warns where -O0 does not (-Werror): CI runs
#                it after make test (.ci/run).
RELEASE_BUILD ?= build-release

.PHONY: build-release-check

build-release-check: test-deps
	cmake -S . -B $(RELEASE_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSPAMTRAPD_SANITIZE=OFF -DSPAMTRAPD_TESTS=ON -DSPAMTRAPD_BENCH=ON
	cmake --build $(RELEASE_BUILD) -j $(JOBS)
	cd $(RELEASE_BUILD) && ctest --output-on-failure -j $(JOBS) -L 'unit|fuzz'

# make valgrind  plain Debug build in $(VALGRIND_BUILD) (no sanitizers: valgrind
#                cannot run them); the unit, integration and end-to-end tests
#                run with spamtrapd, spamtrapctl and each unit test under
#                valgrind, and fail on any leak or memory error
#                (docs/testing.md "Valgrind").
VALGRIND_BUILD ?= build-valgrind

.PHONY: valgrind

valgrind:
	scripts/install-deps.sh valgrind
	cmake -S . -B $(VALGRIND_BUILD) -DCMAKE_BUILD_TYPE=Debug -DSPAMTRAPD_SANITIZE=OFF -DSPAMTRAPD_VALGRIND=ON -DSPAMTRAPD_TESTS=ON -DSPAMTRAPD_BENCH=OFF
	cmake --build $(VALGRIND_BUILD) -j $(JOBS)
	cd $(VALGRIND_BUILD) && ctest --output-on-failure -j $(JOBS) -L 'unit|integration|e2e'

check-format:
	clang-format --dry-run --Werror $$(git ls-files 'src/*.[ch]' 'tests/*.[ch]' 'bench/*.[ch]' 'fuzz/*.[ch]')

clean:
	rm -rf $(BUILD) $(TEST_BUILD) $(RELEASE_BUILD)

# make deb       build the Debian package into $(DEB_OUT) (lintian must find no error)
# make deb-test  build it, install it, run it as the systemd unit would, purge it
#                (root only: it installs and removes a system package)
DEB_OUT ?= build-deb

.PHONY: deb deb-deps deb-test

deb-deps:
	scripts/install-deps.sh deb

deb: deb-deps
	packaging/build-deb.sh $(DEB_OUT)

deb-test: deb-deps
	tests/package/test_deb.sh

# make bench     Release build in $(BENCH_BUILD), then bench/run.py: one table of
#                speed and memory against the protocol limits and postgrey
#                (docs/performance.md). BENCH_ARGS passes options, e.g.
#                BENCH_ARGS="--duration 5 --reps 3".
BENCH_BUILD ?= build-bench
BENCH_ARGS ?=

.PHONY: bench

bench:
	scripts/install-deps.sh bench
	cmake -S . -B $(BENCH_BUILD) -DCMAKE_BUILD_TYPE=Release -DSPAMTRAPD_SANITIZE=OFF -DSPAMTRAPD_TESTS=OFF -DSPAMTRAPD_BENCH=ON
	cmake --build $(BENCH_BUILD) -j $(JOBS)
	python3 bench/run.py --build $(BENCH_BUILD) $(BENCH_ARGS)

# make bench-compare BASELINE_REF=COMMIT
#                the same benchmark with a second spamtrapd, built (Release) from
#                COMMIT's tree in $(BENCH_BASE), running beside this tree's on a
#                copy of the same store (and on the same redis-server and entries
#                for the Redis rows): the table adds this/baseline ratios of
#                throughput, server CPU per request or session and p99, per store.
BASELINE_REF ?= HEAD~1
BENCH_BASE ?= build-bench-base

.PHONY: bench-compare

bench-compare:
	scripts/install-deps.sh bench
	rm -rf $(BENCH_BASE) && mkdir -p $(BENCH_BASE)/tree
	git archive $(BASELINE_REF) | tar -x -C $(BENCH_BASE)/tree
	cmake -S $(BENCH_BASE)/tree -B $(BENCH_BASE)/build -DCMAKE_BUILD_TYPE=Release -DSPAMTRAPD_SANITIZE=OFF -DSPAMTRAPD_TESTS=OFF -DSPAMTRAPD_BENCH=OFF
	cmake --build $(BENCH_BASE)/build -j $(JOBS) --target spamtrapd spamtrapctl
	cmake -S . -B $(BENCH_BUILD) -DCMAKE_BUILD_TYPE=Release -DSPAMTRAPD_SANITIZE=OFF -DSPAMTRAPD_TESTS=OFF -DSPAMTRAPD_BENCH=ON
	cmake --build $(BENCH_BUILD) -j $(JOBS)
	python3 bench/run.py --build $(BENCH_BUILD) --baseline $(BENCH_BASE)/build/src/spamtrapd $(BENCH_ARGS)

# make fuzz      clang build in $(FUZZ_BUILD), then each libFuzzer target
#                (fuzz/) for $(FUZZ_TIME) seconds, one after the other, on a
#                working corpus in $(FUZZ_WORK) seeded from fuzz/corpus/ (the
#                repository is not written); fails when a target crashes.
#                docs/testing.md "Fuzzing".
FUZZ_BUILD ?= build-fuzz
FUZZ_TIME ?= 60
FUZZ_WORK ?= $(or $(TMPDIR),/tmp)/spamtrapd-fuzz
FUZZ_TARGETS ?= policy_parse httpreq addr greynorm lists config spf

.PHONY: fuzz

fuzz:
	scripts/install-deps.sh fuzz
	cmake -S . -B $(FUZZ_BUILD) -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug -DSPAMTRAPD_SANITIZE=ON -DSPAMTRAPD_TESTS=ON -DSPAMTRAPD_BENCH=OFF
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target $(addprefix fuzz_,$(FUZZ_TARGETS))
	fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_TIME) $(FUZZ_WORK) $(FUZZ_TARGETS)
