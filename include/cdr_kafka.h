/*
 * The boundary between the C glue (src/glue.c) and the Rust module.
 *
 * The Rust side never links against an Asterisk symbol: everything it needs from
 * Asterisk arrives through `struct cdrk_host` (function pointers and strings filled
 * by the glue at load) or through `struct cdrk_cdr` (a borrowed, flat copy of the
 * pointers of one `struct ast_cdr`). That keeps the Rust library testable without
 * an Asterisk process, and keeps every Asterisk struct layout on the C side, where
 * the headers being built against define it.
 */
#ifndef CDR_KAFKA_H
#define CDR_KAFKA_H

#include <stddef.h>
#include <stdint.h>

/* Log levels, mapped by the glue onto Asterisk's __LOG_* values. */
enum cdrk_log_level {
	CDRK_LOG_DEBUG = 0,
	CDRK_LOG_NOTICE = 1,
	CDRK_LOG_WARNING = 2,
	CDRK_LOG_ERROR = 3,
	CDRK_LOG_VERBOSE = 4,
};

/* What `config_walk` reports about a configuration file. */
enum cdrk_config_status {
	CDRK_CONFIG_OK = 0,
	CDRK_CONFIG_MISSING = 1,
	CDRK_CONFIG_INVALID = 2,
};

/* Called once per `name = value` line, in file order; returns 0 to go on. */
typedef int (*cdrk_config_entry_fn)(void *context, const char *category, const char *name,
	const char *value, int lineno);

/* A point in time as Asterisk holds it, with the UTC offset of Asterisk's local zone at that time. */
struct cdrk_time {
	int64_t sec;
	int64_t usec;
	int32_t gmtoff;
};

/*
 * One CDR, borrowed: every pointer points into Asterisk's `struct ast_cdr` (or at a
 * static string) and is valid only until the CDR callback returns.
 */
struct cdrk_cdr {
	const char *clid;
	const char *src;
	const char *dst;
	const char *dcontext;
	const char *channel;
	const char *dstchannel;
	const char *lastapp;
	const char *lastdata;
	struct cdrk_time start;
	struct cdrk_time answer;
	struct cdrk_time end;
	int64_t duration;
	int64_t billsec;
	const char *disposition;
	const char *amaflags;
	const char *accountcode;
	const char *peeraccount;
	const char *uniqueid;
	const char *linkedid;
	/* NULL when the Asterisk built against has no tenant fields. */
	const char *tenantid;
	const char *peertenantid;
	const char *userfield;
	int32_t sequence;
	/* First CDR variable, walked with `cdrk_host.variable_next`; NULL when there are none. */
	const void *variables;
};

/*
 * One CEL event, borrowed: the strings of Asterisk's `struct ast_cel_event_record`, valid
 * only until the CEL callback returns.
 */
struct cdrk_cel {
	const char *eventname;
	struct cdrk_time eventtime;
	const char *userdeftype;
	const char *cid_name;
	const char *cid_num;
	const char *cid_ani;
	const char *cid_rdnis;
	const char *cid_dnid;
	const char *exten;
	const char *context;
	const char *channame;
	const char *appname;
	const char *appdata;
	const char *accountcode;
	const char *peeraccount;
	const char *uniqueid;
	const char *linkedid;
	const char *amaflags;
	const char *userfield;
	const char *peer;
	/* NULL when the Asterisk built against has no tenant in CEL records. */
	const char *tenantid;
	const char *extra;
};

/* What the glue hands the Rust module at load. Static for the life of the module image. */
struct cdrk_host {
	void (*log)(enum cdrk_log_level level, const char *file, int line, const char *function,
		const char *message);
	/* Reads a file with Asterisk's config engine and calls `entry` for each variable. */
	enum cdrk_config_status (*config_walk)(const char *filename, void *context,
		cdrk_config_entry_fn entry);
	/* Returns the variable after `cursor` and sets its name and value. */
	const void *(*variable_next)(const void *cursor, const char **name, const char **value);
	const char *entity_id;
	const char *system_name;
	const char *asterisk_version;
	/* gethostname(), read once at load. */
	const char *hostname;
	const char *config_dir;
	const char *spool_dir;
	/* 1 when `struct ast_cdr` has tenantid/peertenantid. */
	int has_tenant_fields;
	/* Registers / unregisters the CEL backend; 0 on success. */
	int (*cel_register)(void);
	int (*cel_unregister)(void);
};

/* Rust entry points, called by the glue. Each returns 0 on success. */
int cdr_kafka_load(const struct cdrk_host *host);
int cdr_kafka_reload(void);
int cdr_kafka_unload(void);
int cdr_kafka_log_cdr(const struct cdrk_cdr *cdr);
int cdr_kafka_log_cel(const struct cdrk_cel *cel);
/* A status report for the CLI; free it with cdr_kafka_free_text. */
char *cdr_kafka_status_text(void);
/* `cdr kafka show destinations`; free it with cdr_kafka_free_text. */
char *cdr_kafka_destinations_text(void);
/* The destinations' names, one a line, for CLI completion; free it with cdr_kafka_free_text. */
char *cdr_kafka_destination_names(void);
/*
 * Enables (flag != 0) or disables a destination; 0 on success. *message gets the text for
 * the operator either way (free it with cdr_kafka_free_text). Starts and stops threads:
 * call it on a short-lived thread, as load/reload/unload.
 */
int cdr_kafka_destination_set_enabled(const char *name, int flag, char **message);
/* The metrics in Prometheus' text format; free it with cdr_kafka_free_text. */
char *cdr_kafka_prometheus_text(void);
void cdr_kafka_free_text(char *text);

#endif
