# cdr_kafka: build, install and test the Asterisk Kafka CDR backend.
#
#   make                 build cdr_kafka.so against the installed Asterisk headers
#   make install         copy it (and its XML docs) into the installed Asterisk
#   make samples         install cdr_kafka.conf.sample as cdr_kafka.conf (old one kept as .old)
#   make deb             build cdr-kafka_<version>_<arch>.deb for the Asterisk of ASTERISK_INCLUDE_DIR
#   make demo            broker + Asterisk 22 + the module in a throwaway Debian root; places calls, prints records
#   make test            every test, including real Asterisk 22 and a real broker
#   make bench           the figures: callback cost, throughput, latency, memory, Asterisk CPU per CDR, librdkafka per request

CARGO ?= cargo
DESTDIR ?=
ASTERISK_INCLUDE_DIR ?= /usr/include
ASTETCDIR ?= /etc/asterisk
# Where the installed Asterisk loads modules and third-party docs from (asterisk.conf says).
ASTMODDIR ?= $(or $(shell sed -n 's/^[[:space:]]*astmoddir[[:space:]]*=>*[[:space:]]*//p' $(DESTDIR)$(ASTETCDIR)/asterisk.conf 2>/dev/null),\
	$(wildcard $(DESTDIR)/usr/lib/$(shell gcc -dumpmachine 2>/dev/null)/asterisk/modules),/usr/lib/asterisk/modules)
ASTDATADIR ?= $(or $(shell sed -n 's/^[[:space:]]*astdatadir[[:space:]]*=>*[[:space:]]*//p' $(DESTDIR)$(ASTETCDIR)/asterisk.conf 2>/dev/null),/var/lib/asterisk)
# The module make install copies (make builds it).
MODULE ?= cdr_kafka.so
# The Asterisk that loads it: make warns, and make install refuses, when that Asterisk was
# built with other build options and would refuse the module (build/buildopts.sh).
# Empty: no check.
ASTERISK_BIN ?= $(firstword $(wildcard $(DESTDIR)/usr/sbin/asterisk $(DESTDIR)/usr/local/sbin/asterisk))

# The sandbox of the tests and the demo: a Debian unstable root with Asterisk 22.
SANDBOX ?= $(HOME)/.cache/cdr_kafka
SANDBOX_ROOT ?= $(SANDBOX)/sid-root
SANDBOX_INCLUDE ?= $(SANDBOX)/asterisk-include
TANSU ?= $(or $(shell command -v tansu 2>/dev/null),$(HOME)/.cargo/bin/tansu)

TEST_ENV = CDR_KAFKA_ROOT=$(SANDBOX_ROOT) CDR_KAFKA_MODULE=$(CURDIR)/target/release/libcdr_kafka.so \
	CDR_KAFKA_TANSU=$(TANSU) ASTERISK_INCLUDE_DIR=$(SANDBOX_INCLUDE)

.PHONY: all install samples deb sandbox test demo bench check check-versions clean

all: cdr_kafka.so

cdr_kafka.so: FORCE
	ASTERISK_INCLUDE_DIR=$(ASTERISK_INCLUDE_DIR) $(CARGO) build --release
	cp target/release/libcdr_kafka.so $@
	@sh build/buildopts.sh $@ "$(ASTERISK_BIN)" $(ASTERISK_INCLUDE_DIR) warn

FORCE:

# Each file gets the owner and group of the folder it goes into: Debian's Asterisk runs as
# user asterisk and cannot read a root:root 0640 cdr_kafka.conf in a root:asterisk /etc/asterisk.
owner_of = $$(stat -c '-o %u -g %g' $(1))

install:
	@test -f $(MODULE) || { echo "$(MODULE) is not built: run make first"; exit 1; }
	@sh build/buildopts.sh $(MODULE) "$(ASTERISK_BIN)" $(ASTERISK_INCLUDE_DIR) refuse
	install -d $(DESTDIR)$(ASTMODDIR) $(DESTDIR)$(ASTDATADIR)/documentation/thirdparty
	# A new file, never an overwrite: the running Asterisk may have the old one mapped.
	rm -f $(DESTDIR)$(ASTMODDIR)/cdr_kafka.so
	install -m 0755 $(call owner_of,$(DESTDIR)$(ASTMODDIR)) $(MODULE) $(DESTDIR)$(ASTMODDIR)/cdr_kafka.so
	install -m 0644 $(call owner_of,$(DESTDIR)$(ASTDATADIR)/documentation/thirdparty) \
		documentation/cdr_kafka_config-en_US.xml $(DESTDIR)$(ASTDATADIR)/documentation/thirdparty/

samples:
	install -d $(DESTDIR)$(ASTETCDIR)
	if [ -f $(DESTDIR)$(ASTETCDIR)/cdr_kafka.conf ]; then \
		mv -f $(DESTDIR)$(ASTETCDIR)/cdr_kafka.conf $(DESTDIR)$(ASTETCDIR)/cdr_kafka.conf.old; fi
	install -m 0640 $(call owner_of,$(DESTDIR)$(ASTETCDIR)) cdr_kafka.conf.sample $(DESTDIR)$(ASTETCDIR)/cdr_kafka.conf

# The Debian package (packaging/make-deb.sh): the module, its XML docs and the sample as a
# conffile, depending on the Asterisk build ASTERISK_INCLUDE_DIR's headers describe. The
# default module is built here; a DEB_MODULE given is packaged as it is.
BUILT_MODULE = $(or $(CARGO_TARGET_DIR),target)/release/libcdr_kafka.so
DEB_MODULE ?= $(BUILT_MODULE)
DEB_DIR ?= .
DEB_VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
DEB_MAINTAINER ?= $(shell git log -1 --format='%an <%ae>' 2>/dev/null)

deb:
	$(if $(filter $(BUILT_MODULE),$(DEB_MODULE)),ASTERISK_INCLUDE_DIR=$(ASTERISK_INCLUDE_DIR) $(CARGO) build --release)
	packaging/make-deb.sh $(DEB_MODULE) $(ASTERISK_INCLUDE_DIR) $(DEB_DIR) $(DEB_VERSION) "$(DEB_MAINTAINER)"

# The tests and the demo need root: debootstrap, chroot and mount.
sandbox:
	TANSU=$(TANSU) tests/sandbox/install-tools.sh
	tests/sandbox/make-root.sh $(SANDBOX_ROOT) $(SANDBOX_INCLUDE)

test: sandbox
	$(TEST_ENV) $(CARGO) build --release
	$(TEST_ENV) $(CARGO) test --release -- --test-threads=1

demo: sandbox
	$(TEST_ENV) $(CARGO) build --release
	$(TEST_ENV) $(CARGO) run --quiet --release --example demo

# Figures, not assertions: nothing here fails on a time. Each bench prints a table;
# CDR_KAFKA_BENCH_QUICK=1 runs them small (a few seconds each).
BENCHES = callback throughput latency memory asterisk_cpu broker_requests
bench: sandbox
	$(TEST_ENV) $(CARGO) build --release
	@for bench in $(BENCHES); do $(TEST_ENV) $(CARGO) bench --quiet --bench $$bench || exit 1; done

# Builds the module against the installed headers of every Asterisk release line in
# ASTERISK_HEADERS (folders holding asterisk.h and asterisk/) and runs the unit tests of
# each build, and tests/glue_view.rs: the C glue's view of a CDR laid out by those
# headers. librdkafka does not depend on the headers: it is built once.
ASTERISK_HEADERS ?= ../shared/asterisk-headers
check-versions:
	@set -e; for dir in $(ASTERISK_HEADERS)/*/; do \
		echo "== Asterisk headers $$dir"; \
		ASTERISK_INCLUDE_DIR=$$dir $(CARGO) build --release --lib --quiet; \
		ASTERISK_INCLUDE_DIR=$$dir $(CARGO) test --release --lib --test glue_view --test glue_unload --quiet; \
	done

check:
	$(CARGO) fmt --all -- --check
	ASTERISK_INCLUDE_DIR=$(ASTERISK_INCLUDE_DIR) $(CARGO) clippy --release --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -f cdr_kafka.so
