# outboxd build. `make` builds build/outboxd; `make test` installs what is missing,
# then runs the unit and integration tests against servers it starts itself.
CC ?= cc
BUILD ?= build
SANITIZE ?=
PKGS = libpq hiredis libevent libevent_pthreads
OPT ?= -O2
CFLAGS_BASE = -std=c11 -D_GNU_SOURCE -g $(OPT) -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
	-Isrc $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LIBS = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpthread -lm
ifeq ($(SANITIZE),1)
  BUILD = build/asan
  CFLAGS_BASE += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
endif
override CFLAGS := $(CFLAGS_BASE) $(CFLAGS)

CORE = buf log config event metrics store_pg store_schema redis_sink admin_http relay relay_batch relay_scan sse sse_run sse_replay sse_redis sse_page
CORE_OBJ = $(CORE:%=$(BUILD)/%.o)
TOOLS = obx_load obx_sub obx_sse
UNIT = test_buf test_config test_relay test_scan test_metrics test_sse

.PHONY: all deps test test-sanitize unit integration run bench soak clean format docs
all: $(BUILD)/outboxd $(TOOLS:%=$(BUILD)/%)

deps:
	@bash scripts/install-deps.sh

$(BUILD)/%.o: src/%.c src/*.h | $(BUILD)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/outboxd: $(CORE_OBJ) $(BUILD)/main.o
	$(CC) $(LDFLAGS) $^ $(LIBS) -o $@

$(BUILD)/obx_%: tests/tools/obx_%.c tests/tools/*.h $(BUILD)/buf.o $(BUILD)/metrics.o | $(BUILD)
	$(CC) $(CFLAGS) $(LDFLAGS) $< $(BUILD)/buf.o $(BUILD)/metrics.o $(LIBS) -o $@

# Unit tests link one module plus fakes of its neighbours.
$(BUILD)/test_buf: tests/unit/test_buf.c $(BUILD)/buf.o $(BUILD)/event.o
$(BUILD)/test_config: tests/unit/test_config.c $(BUILD)/config.o $(BUILD)/log.o $(BUILD)/buf.o
$(BUILD)/test_metrics: tests/unit/test_metrics.c $(BUILD)/metrics.o $(BUILD)/buf.o
$(BUILD)/test_sse: tests/unit/test_sse.c $(BUILD)/sse.o $(BUILD)/sse_run.o $(BUILD)/sse_replay.o $(BUILD)/sse_redis.o $(BUILD)/sse_page.o $(BUILD)/event.o $(BUILD)/buf.o $(BUILD)/metrics.o $(BUILD)/admin_http.o \
	$(BUILD)/log.o $(BUILD)/config.o $(BUILD)/store_pg.o
$(BUILD)/test_relay: tests/unit/test_relay.c tests/unit/fakes.c $(BUILD)/relay_batch.o $(BUILD)/event.o \
	$(BUILD)/buf.o $(BUILD)/log.o $(BUILD)/metrics.o
$(BUILD)/test_scan: tests/unit/test_scan.c $(BUILD)/relay_scan.o
$(BUILD)/test_%: | $(BUILD)
	$(CC) $(CFLAGS) $(LDFLAGS) $(filter %.c %.o,$^) $(LIBS) -lcmocka -o $@

$(BUILD):
	mkdir -p $(BUILD)

unit: $(UNIT:%=$(BUILD)/%)
	@set -e; for t in $(UNIT); do $(BUILD)/$$t; done

integration: all
	@BUILD=$(BUILD) bash tests/integration/run.sh

test: deps
	@$(MAKE) --no-print-directory all unit
	@$(MAKE) --no-print-directory integration

# The same suite under AddressSanitizer and UndefinedBehaviorSanitizer (build/asan).
test-sanitize: deps
	@$(MAKE) --no-print-directory SANITIZE=1 all unit
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 $(MAKE) --no-print-directory SANITIZE=1 integration

run: deps
	@$(MAKE) --no-print-directory all
	@bash scripts/demo.sh

bench: deps
	@$(MAKE) --no-print-directory all
	@bash bench/run.sh

# Retention soak: a million events through a relay with --retention on (bench/soak.sh).
soak: deps
	@$(MAKE) --no-print-directory all
	@bash bench/soak.sh

# Regenerates docs/CONFIGURATION.md from the settings table.
docs: $(BUILD)/outboxd
	$(BUILD)/outboxd settings > docs/CONFIGURATION.md

format:
	clang-format -i src/*.c src/*.h tests/unit/*.c tests/tools/*.c tests/tools/*.h

clean:
	rm -rf build
