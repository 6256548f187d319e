# layer2: a two-level nostr event store for Lua 5.4 and LuaJIT (OpenResty).
# `make` builds the C core for both ABIs; `make test` and `make run` install what is missing first.

LUA ?= lua5.4
CC ?= cc
CFLAGS ?= -O2 -g
WARN := -Wall -Wextra -Werror -Werror=implicit-function-declaration
PQ_INC := $(shell pkg-config --cflags libpq 2>/dev/null || echo -I/usr/include/postgresql)
BASE_CFLAGS := -std=gnu11 -fPIC -fvisibility=hidden $(WARN) $(PQ_INC)
LIBS := -llmdb -lpq -lsecp256k1 -lcrypto -lm -lpthread

CORE_SRC := csrc/buf.c csrc/json.c csrc/event.c csrc/filter.c csrc/schnorr.c csrc/batch.c csrc/import.c csrc/rules.c csrc/store_env.c csrc/store_write.c csrc/store_read.c csrc/store_cache.c csrc/store_maint.c csrc/store_if.c csrc/answers.c csrc/pgstore.c csrc/pgstore_wire.c csrc/learned.c csrc/killpoint.c csrc/backend.c csrc/backend_query.c csrc/backend_answers.c csrc/backend_defer.c csrc/backend_gc.c csrc/backend_poll.c csrc/fanout.c csrc/negentropy.c csrc/child.c
BIND_SRC := csrc/lua_layer2.c csrc/lua_args.c csrc/lua_store.c csrc/lua_lmdb.c csrc/lua_pg.c csrc/lua_backend.c csrc/lua_luastore.c csrc/lua_fanout.c csrc/lua_negentropy.c csrc/lua_child.c
HEADERS := $(wildcard csrc/*.h)

LUA54_INC := $(shell pkg-config --cflags lua5.4 2>/dev/null || echo -I/usr/include/lua5.4)
LUAJIT_INC := $(shell pkg-config --cflags luajit 2>/dev/null || echo -I/usr/include/luajit-2.1)

# Debian 12 packages the project needs (see README); `make deps` installs those missing.
DEB_PACKAGES := build-essential pkg-config clang libclang-rt-14-dev lua5.4 liblua5.4-dev luajit2 libluajit2-5.1-dev \
	liblmdb-dev lmdb-utils libpq-dev postgresql libsecp256k1-dev libssl-dev lua-cjson lua-busted lua-check luarocks lua-socket lua-http curl \
	nginx-core libnginx-mod-http-lua libnginx-mod-http-ndk lua-resty-core lua-nginx-websocket

ABI_DIR = $(if $(filter luajit,$(LUA)),luajit,lua5.4)

.PHONY: all deps env test test-asan test-valgrind fuzz run demo lint bench bench-event bench-store bench-cache bench-compare bench-backend bench-relay bench-relay-mix bench-sync bench-postgres rock rock-build rock-install clean

all: build/lua5.4/layer2/core.so build/luajit/layer2/core.so

# The module exports only luaopen_layer2_core; it is not linked against liblua, so one .so
# per ABI is loaded by that interpreter and resolves the Lua API from it.
build/lua5.4/layer2/core.so: $(CORE_SRC) $(BIND_SRC) $(HEADERS) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(BASE_CFLAGS) $(CFLAGS) $(LUA54_INC) -shared -o $@ $(CORE_SRC) $(BIND_SRC) $(LDFLAGS) $(LIBS)

build/luajit/layer2/core.so: $(CORE_SRC) $(BIND_SRC) $(HEADERS) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(BASE_CFLAGS) $(CFLAGS) $(LUAJIT_INC) -shared -o $@ $(CORE_SRC) $(BIND_SRC) $(LDFLAGS) $(LIBS)

deps:
	@sh tools/deps.sh $(DEB_PACKAGES)
	@command -v node >/dev/null 2>&1 || sh tools/deps.sh nodejs npm

# eval "$(make -s env)" or eval "$(make -s env LUA=luajit)"
env:
	@echo 'export LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;;"'
	@echo 'export LUA_CPATH="$(CURDIR)/build/$(ABI_DIR)/?.so;;"'

test: deps all lint rock
	@bash spec/run

# The module built with AddressSanitizer and UndefinedBehaviorSanitizer, the whole suite under
# Lua 5.4 with it; any report fails the run.
ASAN_LIBS = $(shell $(CC) -print-file-name=libasan.so):$(shell $(CC) -print-file-name=libubsan.so)
build/asan/layer2/core.so: $(CORE_SRC) $(BIND_SRC) $(HEADERS) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(BASE_CFLAGS) -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer \
		$(LUA54_INC) -shared -o $@ $(CORE_SRC) $(BIND_SRC) $(LIBS)

test-asan: deps all build/asan/layer2/core.so
	@LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;;" LUA_CPATH="$(CURDIR)/build/asan/?.so;;" \
	LAYER2_ASAN=1 ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	tools/pg run --fast -- env LD_PRELOAD="$(ASAN_LIBS)" lua5.4 $$(command -v busted) -o TAP spec > build/asan/tap.log 2>&1; \
	rc=$$?; p=$$(grep -c '^ok ' build/asan/tap.log); f=$$(grep -c '^not ok ' build/asan/tap.log); \
	if [ $$rc -ne 0 ] || [ $$f -ne 0 ] || grep -q 'runtime error\|AddressSanitizer' build/asan/tap.log; then \
		grep -v '^ok ' build/asan/tap.log | tail -60; echo "asan: $$p passed, $$f failed"; exit 1; fi; \
	echo "asan: $$p passed, 0 failed (ASan + UBSan, Lua 5.4)"

# Valgrind memcheck on the specs that drive the C core in this process (the module built -O1
# without sanitizers, Lua 5.4): a definite leak or any memory error fails the run. The brute-force,
# relay, crash and process specs are left out: their work happens in child processes valgrind
# does not follow, or is the same code paths at a hundred times the length.
VALGRIND_SPECS := spec/event_spec.lua spec/event_input_spec.lua spec/filter_spec.lua spec/lmdb_spec.lua \
	spec/postgres_spec.lua $(wildcard spec/backend*_spec.lua) spec/hostile_spec.lua spec/gen_spec.lua spec/save_events_spec.lua \
	spec/fanout_spec.lua spec/negentropy_spec.lua spec/strfry_plugin_spec.lua
build/valgrind/layer2/core.so: $(CORE_SRC) $(BIND_SRC) $(HEADERS) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(BASE_CFLAGS) -O1 -g $(LUA54_INC) -shared -o $@ $(CORE_SRC) $(BIND_SRC) $(LIBS)

test-valgrind: deps all build/valgrind/layer2/core.so
	@sh tools/deps.sh valgrind
	@rm -f build/valgrind/vg.*.log; LUA_PATH="$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;;" \
	LUA_CPATH="$(CURDIR)/build/valgrind/?.so;;" tools/pg run --fast -- valgrind -q --leak-check=full \
		--show-leak-kinds=definite --errors-for-leak-kinds=definite --error-exitcode=99 \
		--log-file=$(CURDIR)/build/valgrind/vg.%p.log lua5.4 $$(command -v busted) -o TAP $(VALGRIND_SPECS) \
		> build/valgrind/tap.log 2>&1; \
	rc=$$?; p=$$(grep -c '^ok ' build/valgrind/tap.log); f=$$(grep -c '^not ok ' build/valgrind/tap.log); \
	if [ $$rc -ne 0 ] || [ $$f -ne 0 ] || [ -n "$$(cat build/valgrind/vg.*.log 2>/dev/null)" ]; then \
		grep -v '^ok ' build/valgrind/tap.log | tail -30; cat build/valgrind/vg.*.log 2>/dev/null | head -80; \
		echo "valgrind: $$p passed, $$f failed, exit status $$rc"; exit 1; fi; \
	echo "valgrind: $$p passed, 0 failed, no leak or memory error from the module (memcheck, Lua 5.4)"

# libFuzzer targets (clang, with ASan + UBSan) seeded from the generated corpus, and the real one
# when present ($LAYER2_DATA or ../shared/data); any crash, leak or sanitizer report fails. CI runs
# a short pass.
FUZZ_TARGETS := event_parse filter_parse binary_decode store negentropy deferred
FUZZ_SECONDS ?= 60
REAL_DATA := $(firstword $(wildcard $(LAYER2_DATA)/real.jsonl ../shared/data/real.jsonl))
FUZZ_SEEDS := build/fuzz/seed/valid.jsonl build/fuzz/seed/invalid.jsonl \
	$(if $(REAL_DATA),$(REAL_DATA) $(dir $(REAL_DATA))real-invalid.jsonl)
build/fuzz/%: fuzz/%.c $(CORE_SRC) $(HEADERS)
	@mkdir -p build/fuzz
	clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -Icsrc $(PQ_INC) -o $@ $< $(CORE_SRC) $(LIBS)

fuzz: deps all $(addprefix build/fuzz/,$(FUZZ_TARGETS))
	@rm -rf build/fuzz/corpus && mkdir -p build/fuzz/seed && export LUA_PATH="$(CURDIR)/?.lua;$(CURDIR)/lua/?.lua;$(CURDIR)/lua/?/init.lua;;" \
		LUA_CPATH="$(CURDIR)/build/lua5.4/?.so;;" && lua5.4 -e 'require("spec.fixtures.corpus").write("build/fuzz/seed")' && \
		lua5.4 tools/fuzz-corpus.lua build/fuzz/corpus $(FUZZ_SEEDS)
	@for t in $(FUZZ_TARGETS); do \
		build/fuzz/$$t -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -max_len=65536 \
			-artifact_prefix=build/fuzz/crash-$$t- build/fuzz/corpus/$$t > build/fuzz/$$t.log 2>&1 || \
			{ tail -40 build/fuzz/$$t.log; echo "fuzz: $$t FAILED (see build/fuzz/$$t.log)"; exit 1; }; \
		echo "fuzz: $$t: $$(grep -o 'Done [0-9]* runs' build/fuzz/$$t.log | grep -o '[0-9]*') executions in $(FUZZ_SECONDS) s, no crash"; \
	done

lint:
	@luacheck -q --no-color lua spec bench examples bin/layer2

# The example relay on nginx in the foreground: ws://127.0.0.1:7777/, data in ./data
run: deps all
	@exec tools/relay --listen 127.0.0.1:7777 --data ./data

# The library demo without nginx: sign, store and query a generated data set
demo: deps all
	@bash -c 'eval "$$($(MAKE) -s env)"; exec lua5.4 examples/demo.lua'

# every benchmark, one summary table, bench/results/latest.md (BENCH_EVENTS=1000000 for more)
bench: deps all
	@sh tools/deps.sh gnuplot-nox
	@bash -c 'eval "$$($(MAKE) -s env)"; exec lua5.4 bench/run.lua'

bench-event:
	@bash -c 'eval "$$($(MAKE) -s env)"; exec lua5.4 bench/event.lua'

# BENCH_EVENTS=1000000 for the large run
bench-store:
	@bash -c 'eval "$$($(MAKE) -s env)"; exec lua5.4 bench/store.lua $(BENCH_EVENTS)'

# this tree's query classes against REV's, side by side: make bench-compare REV=52d94ce [BENCH_EVENTS=...]
bench-compare: deps all
	@bash -c 'eval "$$($(MAKE) -s env)"; exec lua5.4 bench/compare.lua "$(REV)" $(BENCH_EVENTS)'

bench-cache:
	@bash -c 'eval "$$($(MAKE) -s env)"; exec lua5.4 bench/cache.lua'

# the two-level store against the raw stores it is made of
bench-backend: deps all
	@bash -c 'eval "$$($(MAKE) -s env)"; exec lua5.4 bench/backend.lua'

# the example relay on nginx (STRFRY=/path/to/strfry: strfry beside it; BENCH_EVENTS: 20,000)
bench-relay: deps all
	@bash -c 'eval "$$($(MAKE) -s env)"; exec lua5.4 bench/relay.lua $(BENCH_EVENTS)'

# the REQ mix as the store grows: stores imported with N events for each size (STRFRY=/path/to/strfry:
# strfry beside it; BENCH_SIZES: 20000,1000000, the large data set made once, about 2 minutes)
bench-relay-mix: deps all
	@bash -c 'eval "$$($(MAKE) -s env)"; exec lua5.4 bench/relay_mix.lua $(BENCH_SIZES)'

# NIP-77 sync, layer2 sync against the example relay (STRFRY=/path/to/strfry: with strfry's sync and
# relay beside; BENCH_EVENTS: the events both sides hold, 99,000)
bench-sync: deps all
	@bash -c 'eval "$$($(MAKE) -s env)"; exec lua5.4 bench/sync.lua $(BENCH_EVENTS)'

# PostgreSQL next to L1, and the cross-node delay, on a throwaway server (BENCH_EVENTS as above)
bench-postgres: deps all
	@bash -c 'eval "$$($(MAKE) -s env)"; exec tools/pg run -- lua5.4 bench/postgres.lua $(BENCH_EVENTS)'

# Builds and installs the rockspec offline for Lua 5.4 and for LuaJIT, each into a scratch tree,
# and loads it from there with that interpreter.
rock: deps
	@bash tools/rock-check

# The targets luarocks runs (rockspec/layer2-scm-1.rockspec): one module for the Lua whose headers
# are in LUA_INCDIR.
rock-build:
	@mkdir -p build/rock/layer2
	$(CC) $(BASE_CFLAGS) $(CFLAGS) -I$(LUA_INCDIR) $(ROCK_CPPFLAGS) -shared -o build/rock/layer2/core.so \
		$(CORE_SRC) $(BIND_SRC) $(ROCK_LDFLAGS) $(LIBS)

rock-install:
	install -d $(INST_LIBDIR)/layer2 $(INST_LUADIR)/layer2/policy $(INST_LUADIR)/layer2/resty $(INST_BINDIR)
	install -m 755 build/rock/layer2/core.so $(INST_LIBDIR)/layer2/core.so
	install -m 644 lua/layer2/*.lua $(INST_LUADIR)/layer2/
	install -m 644 lua/layer2/policy/*.lua $(INST_LUADIR)/layer2/policy/
	install -m 644 lua/layer2/resty/*.lua $(INST_LUADIR)/layer2/resty/
	install -m 755 bin/layer2 $(INST_BINDIR)/layer2

clean:
	rm -rf build
