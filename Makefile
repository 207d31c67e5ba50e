# outboxd build. `make` builds build/outboxd; `make test` installs what is missing,
# then runs the unit and integration tests against servers it starts itself.
CC ?= cc
BUILD ?= build
SANITIZE ?=
PKGS = libpq hiredis libevent libevent_pthreads libevent_openssl libssl libcrypto jansson
OPT ?= -O2
CFLAGS_BASE = -std=c11 -D_GNU_SOURCE -g $(OPT) -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
	-Isrc $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LIBS = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpthread -lm
ifeq ($(SANITIZE),1)
  BUILD = build/asan
  CFLAGS_BASE += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
endif
override CFLAGS := $(CFLAGS_BASE) $(CPPFLAGS) $(CFLAGS)

CORE = buf log config event metrics store_pg store_relay store_schema redis_tls redis_conn redis_endpoint redis_cluster \
	redis_aconn redis_pubsub redis_sink redis_sink_conn redis_sink_pipe redis_sink_cluster redis_sink_hw admin_http relay relay_chores relay_batch relay_scan sse sse_run sse_cache sse_out sse_replay \
	sse_redis sse_workers sse_page sse_auth sse_reply jwks jwt http_client auth auth_forward
CORE_OBJ = $(CORE:%=$(BUILD)/%.o)
# The Redis connection layer, for the unit tests that link a module using it.
REDIS_OBJ = $(BUILD)/redis_cluster.o $(BUILD)/redis_aconn.o $(BUILD)/redis_pubsub.o $(BUILD)/redis_endpoint.o \
	$(BUILD)/redis_conn.o $(BUILD)/redis_tls.o
TOOLS = obx_load obx_sub obx_sse obx_listen
UNIT = test_buf test_config test_relay test_scan test_metrics test_sse test_sse_out test_jwt test_auth test_auth_forward \
	test_redis_conn \
	test_redis_pubsub test_redis_cluster

.PHONY: pgext all deps test test-sanitize unit integration run bench bench-scale soak clean format docs
all: $(BUILD)/outboxd $(TOOLS:%=$(BUILD)/%)

deps:
	@bash scripts/install-deps.sh

$(BUILD)/%.o: src/%.c src/*.h | $(BUILD)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/outboxd: $(CORE_OBJ) $(BUILD)/main.o
	$(CC) $(LDFLAGS) $^ $(LIBS) -o $@

# The tools link outboxd's Redis layer (obx_sub speaks TLS through it).
TOOL_OBJ = $(BUILD)/buf.o $(BUILD)/metrics.o $(BUILD)/config.o $(BUILD)/log.o $(BUILD)/redis_conn.o $(BUILD)/redis_tls.o
$(BUILD)/obx_%: tests/tools/obx_%.c tests/tools/*.h $(TOOL_OBJ) | $(BUILD)
	$(CC) $(CFLAGS) $(LDFLAGS) $< $(TOOL_OBJ) $(LIBS) -o $@

# Unit tests link one module plus fakes of its neighbours.
$(BUILD)/test_buf: tests/unit/test_buf.c $(BUILD)/buf.o $(BUILD)/event.o
$(BUILD)/test_config: tests/unit/test_config.c $(BUILD)/config.o $(BUILD)/log.o $(BUILD)/buf.o
$(BUILD)/test_metrics: tests/unit/test_metrics.c $(BUILD)/metrics.o $(BUILD)/buf.o
$(BUILD)/test_jwt: tests/unit/test_jwt.c $(BUILD)/jwt.o $(BUILD)/jwks.o
$(BUILD)/test_auth_forward: tests/unit/test_auth_forward.c $(BUILD)/auth_forward.o $(BUILD)/log.o $(BUILD)/metrics.o $(BUILD)/buf.o
$(BUILD)/test_auth: tests/unit/test_auth.c $(BUILD)/auth.o $(BUILD)/auth_forward.o $(BUILD)/http_client.o \
	$(BUILD)/jwt.o $(BUILD)/jwks.o $(BUILD)/log.o $(BUILD)/buf.o $(BUILD)/metrics.o
$(BUILD)/test_sse: tests/unit/test_sse.c $(BUILD)/sse.o $(BUILD)/sse_auth.o $(BUILD)/sse_reply.o $(BUILD)/sse_run.o $(BUILD)/sse_cache.o $(BUILD)/sse_out.o $(BUILD)/sse_replay.o $(BUILD)/sse_redis.o $(BUILD)/sse_workers.o $(BUILD)/sse_page.o $(BUILD)/event.o $(BUILD)/buf.o $(BUILD)/metrics.o $(BUILD)/admin_http.o \
	$(BUILD)/log.o $(BUILD)/config.o $(BUILD)/store_pg.o $(BUILD)/auth.o $(BUILD)/auth_forward.o $(BUILD)/http_client.o $(BUILD)/jwt.o $(BUILD)/jwks.o $(REDIS_OBJ)
$(BUILD)/test_sse_out: tests/unit/test_sse_out.c $(BUILD)/sse_out.o $(BUILD)/sse_cache.o $(BUILD)/event.o $(BUILD)/buf.o
$(BUILD)/test_relay: tests/unit/test_relay.c tests/unit/fakes.c $(BUILD)/relay_batch.o $(BUILD)/event.o \
	$(BUILD)/buf.o $(BUILD)/log.o $(BUILD)/metrics.o
$(BUILD)/test_scan: tests/unit/test_scan.c $(BUILD)/relay_scan.o
# Built from the source with a 7-byte read, so that TLS records are read in pieces.
$(BUILD)/test_redis_conn: override CFLAGS += -DRCONN_READ_CHUNK=7
$(BUILD)/test_redis_conn: tests/unit/test_redis_conn.c src/redis_conn.c src/*.h $(BUILD)/redis_endpoint.o \
	$(BUILD)/redis_tls.o $(BUILD)/buf.o
$(BUILD)/test_redis_pubsub: tests/unit/test_redis_pubsub.c $(BUILD)/redis_pubsub.o $(BUILD)/redis_conn.o \
	$(BUILD)/redis_tls.o $(BUILD)/buf.o
$(BUILD)/test_redis_cluster: tests/unit/test_redis_cluster.c $(BUILD)/redis_cluster.o $(BUILD)/redis_conn.o \
	$(BUILD)/redis_tls.o $(BUILD)/config.o $(BUILD)/log.o $(BUILD)/buf.o
$(BUILD)/test_%: | $(BUILD)
	$(CC) $(CFLAGS) $(LDFLAGS) $(filter %.c %.o,$^) $(LIBS) -lcmocka -o $@

$(BUILD):
	mkdir -p $(BUILD)

unit: $(UNIT:%=$(BUILD)/%)
	@set -e; for t in $(UNIT); do $(BUILD)/$$t; done

integration: all pgext
	@BUILD=$(BUILD) bash tests/integration/run.sh

# The PostgreSQL extension outboxd (pgext/: the seq trigger in C), built with PGXS in
# pgext/; `make -C pgext install` (as root) installs it into the server.
pgext:
	@$(MAKE) --no-print-directory -s -C pgext

test: deps
	@$(MAKE) --no-print-directory all unit
	@$(MAKE) --no-print-directory integration

# The same suite under AddressSanitizer and UndefinedBehaviorSanitizer (build/asan),
# without the packaging checks (t_40-t_43: generated files, make install, the Grafana
# dashboard, the .deb), which run no code of ours that the other tests do not.
test-sanitize: deps
	@$(MAKE) --no-print-directory SANITIZE=1 all unit
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 SKIP="t_40 t_41 t_42 t_43" \
		$(MAKE) --no-print-directory SANITIZE=1 integration

run: deps
	@$(MAKE) --no-print-directory all
	@bash scripts/demo.sh

# BENCH_SSE_AUTH=0 skips the gateway's authorization cost (bench/sse_auth.sh).
bench: deps
	@$(MAKE) --no-print-directory all pgext
	@bash bench/run.sh
	@[ "$${BENCH_SSE_AUTH:-1}" = 0 ] || bash bench/sse_auth.sh

# Gateway scale: 100,000 idle streams over workers, a hot run fanned out to 10,000
# streams, each beside the single-process gateway, and the per-event unit costs of
# docs/SCALING.md (bench/scale.sh; about 6 minutes).
bench-scale: deps
	@$(MAKE) --no-print-directory all
	@bash bench/scale.sh

# Retention soak: a million events through a relay with --retention on (bench/soak.sh;
# SOAK_SEQ_TRIGGER=c with the C seq trigger).
soak: deps
	@$(MAKE) --no-print-directory all pgext
	@bash bench/soak.sh

# Regenerates docs/CONFIGURATION.md, the man page and bash completion from the
# settings and command tables.
docs: $(BUILD)/outboxd
	$(BUILD)/outboxd settings > docs/CONFIGURATION.md
	$(BUILD)/outboxd settings --format man > docs/outboxd.1
	$(BUILD)/outboxd settings --format bash-completion > contrib/bash-completion/outboxd

format:
	clang-format -i src/*.c src/*.h tests/unit/*.c tests/tools/*.c tests/tools/*.h

clean:
	rm -rf build
	rm -f pgext/*.o pgext/*.so pgext/*.bc

# ---- Releases: version, install, Debian package -----------------------------------
# Kept apart from the build above, so that module lists can change without it.

# "VERSION COMMIT" from git, else the VERSION file of a release archive, else the
# newest release in CHANGELOG.md (scripts/version.sh). Both can be given: make deb VERSION=...
VERSION_INFO := $(shell sh scripts/version.sh 2>/dev/null)
VERSION ?= $(word 1,$(VERSION_INFO))
COMMIT ?= $(or $(word 2,$(VERSION_INFO)),unknown)

# Rewritten only when the version changes, so that main.o is rebuilt only then.
$(BUILD)/version.h: FORCE | $(BUILD)
	@printf '#define OUTBOXD_VERSION "%s"\n#define OUTBOXD_COMMIT "%s"\n' '$(VERSION)' '$(COMMIT)' >$@.tmp
	@if cmp -s $@.tmp $@; then rm -f $@.tmp; else mv $@.tmp $@; fi
$(BUILD)/main.o: $(BUILD)/version.h
$(BUILD)/main.o: override CFLAGS += -I$(BUILD)
$(BUILD)/outboxd: $(BUILD)/manual.o
.PHONY: FORCE install uninstall deb test-deb
FORCE:

# make install [PREFIX=/usr/local] [DESTDIR=]: the binary, man page, bash completion,
# docs, systemd units (with these paths filled in) and, unless one exists, the
# environment file. PREFIX=/usr puts configuration in /etc and units in /lib/systemd.
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man
DOCDIR ?= $(PREFIX)/share/doc/outboxd
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ifeq ($(PREFIX),/usr)
  SYSCONFDIR ?= /etc
  UNITDIR ?= /lib/systemd/system
else
  SYSCONFDIR ?= $(PREFIX)/etc
  UNITDIR ?= $(PREFIX)/lib/systemd/system
endif
INSTALL_DOCS = README.md CHANGELOG.md $(wildcard docs/*.md)
UNITS = outboxd-relay.service outboxd-sse.service
ENV_FILE = $(DESTDIR)$(SYSCONFDIR)/outboxd/outboxd.env

install: $(BUILD)/outboxd
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(BASHCOMPDIR) \
		$(DESTDIR)$(DOCDIR)/examples $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/outboxd
	install -m 755 $(BUILD)/outboxd $(DESTDIR)$(BINDIR)/outboxd
	install -m 644 docs/outboxd.1 $(DESTDIR)$(MANDIR)/man1/outboxd.1
	install -m 644 contrib/bash-completion/outboxd $(DESTDIR)$(BASHCOMPDIR)/outboxd
	install -m 644 $(INSTALL_DOCS) $(DESTDIR)$(DOCDIR)/
	install -m 644 contrib/grafana/outboxd.json $(DESTDIR)$(DOCDIR)/examples/grafana-dashboard.json
	for u in $(UNITS); do \
		sed -e 's|/usr/local/bin/outboxd|$(BINDIR)/outboxd|g' -e 's|/etc/outboxd/|$(SYSCONFDIR)/outboxd/|g' \
		    -e 's|/usr/share/doc/outboxd/|$(DOCDIR)/|g' contrib/systemd/$$u >$(DESTDIR)$(UNITDIR)/$$u.tmp && \
		chmod 644 $(DESTDIR)$(UNITDIR)/$$u.tmp && mv $(DESTDIR)$(UNITDIR)/$$u.tmp $(DESTDIR)$(UNITDIR)/$$u || exit 1; \
	done
	@if [ -e $(ENV_FILE) ]; then echo "install: keeping the existing $(ENV_FILE)"; \
	else install -m 600 contrib/systemd/outboxd.env.example $(ENV_FILE); fi

# Removes what install put there, except an environment file that was edited.
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/outboxd $(DESTDIR)$(MANDIR)/man1/outboxd.1 $(DESTDIR)$(BASHCOMPDIR)/outboxd \
		$(addprefix $(DESTDIR)$(DOCDIR)/,$(notdir $(INSTALL_DOCS))) $(DESTDIR)$(DOCDIR)/examples/grafana-dashboard.json \
		$(addprefix $(DESTDIR)$(UNITDIR)/,$(UNITS))
	@if [ -e $(ENV_FILE) ] && ! cmp -s $(ENV_FILE) contrib/systemd/outboxd.env.example; then \
		echo "uninstall: keeping $(ENV_FILE): it was edited"; else rm -f $(ENV_FILE); fi
	@rmdir $(DESTDIR)$(DOCDIR)/examples $(DESTDIR)$(DOCDIR) $(DESTDIR)$(SYSCONFDIR)/outboxd 2>/dev/null || true

# make deb: build/deb/outboxd_<version>_<arch>.deb by dpkg-buildpackage (debian/),
# from a copy of this tree; installs the Debian build tools it needs.
deb:
	@VERSION='$(VERSION)' COMMIT='$(COMMIT)' BUILD='$(BUILD)' bash scripts/deb.sh

# The package installed, run, upgraded and purged in a clean Debian 12 root
# (tests/deb/test-deb.sh, as root; about two minutes, so not part of make test).
test-deb:
	@bash tests/deb/test-deb.sh
