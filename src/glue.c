/*
 * The C half of cdr_kafka: only what must be C because Asterisk offers it as macros
 * (module registration, CLI entries, logging with file/line, list walks) or because
 * it depends on struct layouts of the Asterisk being built for.
 *
 * Threads: Asterisk calls load/reload/unload on whatever thread asked (its main
 * thread at startup, a CLI thread later). Rust code that starts threads registers
 * thread-local destructors on the calling thread, and a destructor registered on a
 * thread that outlives the module keeps the .so mapped after dlclose. So every call
 * into Rust that may start or stop threads runs on a short-lived thread of its own,
 * joined before we return.
 */
/* AST_MODULE and AST_MODULE_SELF_SYM come from build.rs, as for every compile against asterisk.h. */
#include "asterisk.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "asterisk/cdr.h"
#include "asterisk/cel.h"
#include "asterisk/event.h"
#include "asterisk/channel.h"
#include "asterisk/chanvars.h"
#include "asterisk/cli.h"
#include "asterisk/config.h"
#include "asterisk/localtime.h"
#include "asterisk/logger.h"
#include "asterisk/module.h"
#include "asterisk/options.h"
#include "asterisk/paths.h"
#ifdef CDRK_HAVE_PROMETHEUS
#include "asterisk/res_prometheus.h"
#endif
#include "asterisk/strings.h"
#include "asterisk/utils.h"
#include "asterisk/ast_version.h"

#include "cdr_kafka.h"

#define BACKEND_NAME "kafka"

static const int asterisk_log_levels[] = {
	[CDRK_LOG_DEBUG] = __LOG_DEBUG,
	[CDRK_LOG_NOTICE] = __LOG_NOTICE,
	[CDRK_LOG_WARNING] = __LOG_WARNING,
	[CDRK_LOG_ERROR] = __LOG_ERROR,
	[CDRK_LOG_VERBOSE] = __LOG_VERBOSE,
};

static void host_log(enum cdrk_log_level level, const char *file, int line, const char *function,
	const char *message)
{
	int asterisk_level = __LOG_ERROR;

	if ((unsigned int) level < ARRAY_LEN(asterisk_log_levels)) {
		asterisk_level = asterisk_log_levels[level];
	}
	/* The message is our text, never a format string. */
	ast_log(asterisk_level, file, line, function, "%s\n", message);
}

static enum cdrk_config_status host_config_walk(const char *filename, void *context,
	cdrk_config_entry_fn entry)
{
	struct ast_flags flags = { 0 };
	struct ast_config *cfg = ast_config_load2(filename, AST_MODULE, flags);
	struct ast_category *category = NULL;

	if (cfg == CONFIG_STATUS_FILEMISSING) {
		return CDRK_CONFIG_MISSING;
	}
	if (cfg == CONFIG_STATUS_FILEINVALID || cfg == CONFIG_STATUS_FILEUNCHANGED) {
		return CDRK_CONFIG_INVALID;
	}
	while ((category = ast_category_browse_filtered(cfg, NULL, category, NULL))) {
		const char *category_name = ast_category_get_name(category);
		struct ast_variable *var;

		for (var = ast_category_first(category); var; var = var->next) {
			if (entry(context, category_name, var->name, var->value, var->lineno)) {
				ast_config_destroy(cfg);
				return CDRK_CONFIG_OK;
			}
		}
	}
	ast_config_destroy(cfg);
	return CDRK_CONFIG_OK;
}

static const void *host_variable_next(const void *cursor, const char **name, const char **value)
{
	const struct ast_var_t *var = cursor;

	*name = ast_var_name((struct ast_var_t *) var);
	*value = ast_var_value((struct ast_var_t *) var);
	return AST_LIST_NEXT(var, entries);
}

static int host_cel_register(void);
static int host_cel_unregister(void);

static char entity_id[20];
static char hostname[256];
static struct cdrk_host host = {
	.log = host_log,
	.config_walk = host_config_walk,
	.variable_next = host_variable_next,
	.cel_register = host_cel_register,
	.cel_unregister = host_cel_unregister,
	.entity_id = entity_id,
	.hostname = hostname,
#ifdef CDRK_HAVE_CDR_TENANTID
	.has_tenant_fields = 1,
#endif
};

static void fill_time(struct cdrk_time *out, const struct timeval *tv)
{
	struct ast_tm tm;

	out->sec = tv->tv_sec;
	out->usec = tv->tv_usec;
	out->gmtoff = 0;
	/* The same local-time conversion ast_json_timeval uses. */
	if (!ast_tvzero(*tv) && ast_localtime(tv, &tm, NULL)) {
		out->gmtoff = (int32_t) tm.tm_gmtoff;
	}
}

#define CEL_BACKEND_NAME "kafka"

/* CEL callbacks running now: unload waits for none before the module may go. */
static int cel_in_flight;
static int cel_registered;

static void cel_log(struct ast_event *event)
{
	struct ast_cel_event_record record = {
		.version = AST_CEL_EVENT_RECORD_VERSION,
	};
	struct cdrk_cel view;

	ast_atomic_fetchadd_int(&cel_in_flight, +1);
	if (ast_cel_fill_record(event, &record)) {
		ast_atomic_fetchadd_int(&cel_in_flight, -1);
		return;
	}
	view = (struct cdrk_cel) {
		.eventname = record.event_name,
		.userdeftype = record.user_defined_name,
		.cid_name = record.caller_id_name,
		.cid_num = record.caller_id_num,
		.cid_ani = record.caller_id_ani,
		.cid_rdnis = record.caller_id_rdnis,
		.cid_dnid = record.caller_id_dnid,
		.exten = record.extension,
		.context = record.context,
		.channame = record.channel_name,
		.appname = record.application_name,
		.appdata = record.application_data,
		.accountcode = record.account_code,
		.peeraccount = record.peer_account,
		.uniqueid = record.unique_id,
		.linkedid = record.linked_id,
		.amaflags = ast_channel_amaflags2string(record.amaflag),
		.userfield = record.user_field,
		.peer = record.peer,
#ifdef CDRK_HAVE_CEL_TENANTID
		.tenantid = S_OR(record.tenant_id, ""),
#endif
		.extra = record.extra,
	};
	fill_time(&view.eventtime, &record.event_time);
	cdr_kafka_log_cel(&view);
	ast_atomic_fetchadd_int(&cel_in_flight, -1);
}

static int host_cel_register(void)
{
	if (cel_registered) {
		return 0;
	}
	if (ast_cel_backend_register(CEL_BACKEND_NAME, cel_log)) {
		return -1;
	}
	cel_registered = 1;
	return 0;
}

static int host_cel_unregister(void)
{
	if (!cel_registered) {
		return 0;
	}
	ast_cel_backend_unregister(CEL_BACKEND_NAME);
	cel_registered = 0;
	/* A callback that started before the unregister finishes before we go on. */
	while (ast_atomic_fetchadd_int(&cel_in_flight, 0) > 0) {
		usleep(1000);
	}
	return 0;
}

static int cdr_log(struct ast_cdr *cdr)
{
	struct cdrk_cdr view = {
		.clid = cdr->clid,
		.src = cdr->src,
		.dst = cdr->dst,
		.dcontext = cdr->dcontext,
		.channel = cdr->channel,
		.dstchannel = cdr->dstchannel,
		.lastapp = cdr->lastapp,
		.lastdata = cdr->lastdata,
		.duration = cdr->duration,
		.billsec = cdr->billsec,
		.disposition = ast_cdr_disp2str(cdr->disposition),
		.amaflags = ast_channel_amaflags2string(cdr->amaflags),
		.accountcode = cdr->accountcode,
		.peeraccount = cdr->peeraccount,
		.uniqueid = cdr->uniqueid,
		.linkedid = cdr->linkedid,
#ifdef CDRK_HAVE_CDR_TENANTID
		.tenantid = cdr->tenantid,
		.peertenantid = cdr->peertenantid,
#endif
		.userfield = cdr->userfield,
		.sequence = cdr->sequence,
		.variables = AST_LIST_FIRST(&cdr->varshead),
	};

	fill_time(&view.start, &cdr->start);
	fill_time(&view.answer, &cdr->answer);
	fill_time(&view.end, &cdr->end);
	return cdr_kafka_log_cdr(&view);
}

static char *cli_show_status(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	char *text;

	switch (cmd) {
	case CLI_INIT:
		e->command = "cdr kafka show status";
		e->usage =
			"Usage: cdr kafka show status\n"
			"       Shows the Kafka CDR backend's brokers, topic, producer state and counters.\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	if (a->argc != 4) {
		return CLI_SHOWUSAGE;
	}
	text = cdr_kafka_status_text();
	if (text) {
		ast_cli(a->fd, "%s", text);
		cdr_kafka_free_text(text);
	}
	return CLI_SUCCESS;
}

static char *cli_show_destinations(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	char *text;

	switch (cmd) {
	case CLI_INIT:
		e->command = "cdr kafka show destinations";
		e->usage =
			"Usage: cdr kafka show destinations\n"
			"       Shows each destination of the Kafka CDR backend: its type, target and state,\n"
			"       and its records matched, delivered, failed, filtered, skipped and waiting.\n";
		return NULL;
	case CLI_GENERATE:
		return NULL;
	}
	if (a->argc != 4) {
		return CLI_SHOWUSAGE;
	}
	text = cdr_kafka_destinations_text();
	if (text) {
		ast_cli(a->fd, "%s", text);
		cdr_kafka_free_text(text);
	}
	return CLI_SUCCESS;
}

/* Offers the destination names that start with what was typed. */
static void complete_destination(const char *word)
{
	char *names = cdr_kafka_destination_names();
	const char *name;
	size_t typed = strlen(word);

	if (!names) {
		return;
	}
	/* One name a line; the text is Rust's and is read, never cut in place. */
	for (name = names; *name; ) {
		const char *end = strchr(name, '\n');
		size_t length = end ? (size_t) (end - name) : strlen(name);

		if (length >= typed && !strncasecmp(word, name, typed)
			&& ast_cli_completion_add(ast_strndup(name, length))) {
			break;
		}
		name += length + (end ? 1 : 0);
	}
	cdr_kafka_free_text(names);
}

struct rust_call {
	int (*function)(void);
	const struct cdrk_host *host;
	int (*load)(const struct cdrk_host *host);
	/* A call about one destination: its name and a flag in, a text for the operator out. */
	int (*named)(const char *name, int flag, char **message);
	const char *name;
	int flag;
	char *message;
	int result;
};

static int run_on_short_thread(struct rust_call *call);

static char *cli_destination_enable(struct ast_cli_entry *e, int cmd, struct ast_cli_args *a)
{
	struct rust_call call = { .named = cdr_kafka_destination_set_enabled };

	switch (cmd) {
	case CLI_INIT:
		e->command = "cdr kafka destination {enable|disable}";
		e->usage =
			"Usage: cdr kafka destination {enable|disable} <name>\n"
			"       Stops or starts delivering to one destination of the Kafka CDR backend.\n"
			"       A disabled destination keeps its place in the spool: the records for it\n"
			"       wait there and are delivered, once each, when it is enabled again.\n"
			"       The choice lasts until cdr_kafka is loaded again.\n";
		return NULL;
	case CLI_GENERATE:
		if (a->pos == 4) {
			complete_destination(a->word);
		}
		return NULL;
	}
	if (a->argc != 5) {
		return CLI_SHOWUSAGE;
	}
	call.name = a->argv[4];
	call.flag = !strcasecmp(a->argv[3], "enable");
	/* Feeder threads stop and start here: never on the CLI's own thread. */
	call.result = run_on_short_thread(&call);
	if (call.message) {
		ast_cli(a->fd, "%s\n", call.message);
		cdr_kafka_free_text(call.message);
	}
	return call.result ? CLI_FAILURE : CLI_SUCCESS;
}

static struct ast_cli_entry cli_entries[] = {
	AST_CLI_DEFINE(cli_show_status, "Show the Kafka CDR backend's status"),
	AST_CLI_DEFINE(cli_show_destinations, "Show the Kafka CDR backend's destinations"),
	AST_CLI_DEFINE(cli_destination_enable, "Enable or disable a Kafka CDR backend destination"),
};

static void *rust_call_thread(void *data)
{
	struct rust_call *call = data;

	if (call->named) {
		call->result = call->named(call->name, call->flag, &call->message);
	} else {
		call->result = call->load ? call->load(call->host) : call->function();
	}
	return NULL;
}

/* Runs a Rust entry point on a thread that ends before we return (see the top of this file). */
static int run_on_short_thread(struct rust_call *call)
{
	pthread_t thread;

	if (pthread_create(&thread, NULL, rust_call_thread, call)) {
		ast_log(LOG_ERROR, "cdr_kafka: cannot start a thread to run the module's setup\n");
		return -1;
	}
	pthread_join(thread, NULL);
	return call->result;
}

#ifdef CDRK_HAVE_PROMETHEUS
/*
 * Metrics through res_prometheus, when it is loaded. Its functions are looked up at run
 * time (it exports them globally): linking them would make Asterisk refuse to load this
 * module wherever res_prometheus is absent. Not `.optional_modules` either: Asterisk
 * declines a module whose optional module is present but declined (res_prometheus does
 * without a prometheus.conf), and CDRs would be lost for want of metrics.
 *
 * res_prometheus keeps registered callbacks across its reload and forgets them all when
 * unloaded; a callback runs on its HTTP thread under its scrape lock, which its
 * unregister takes, so once that returns no scrape runs our code. Each call into it
 * holds its library open for the call and resolves the function from that handle, so an
 * unload of res_prometheus at that moment cannot unmap the code being called.
 */
static void prometheus_scrape(struct ast_str **output)
{
	char *text = cdr_kafka_prometheus_text();

	if (text) {
		ast_str_append(output, 0, "%s", text);
		cdr_kafka_free_text(text);
	}
}

static struct prometheus_callback prometheus_callback = {
	.name = "cdr_kafka",
	.callback_fn = prometheus_scrape,
};

/* Guards what follows, between load/reload/unload and the startup watcher. */
AST_MUTEX_DEFINE_STATIC(prometheus_lock);
static ast_cond_t prometheus_wake;
static int prometheus_registered;
static int prometheus_watching;
static int prometheus_stop;
static pthread_t prometheus_watcher;

/* Calls res_prometheus' register (or unregister) with our callback; -1 when it is absent. */
static int prometheus_call(const char *symbol, int registering)
{
	void *found = dlsym(RTLD_DEFAULT, symbol);
	void *library;
	void *function;
	Dl_info where;
	int result = 0;

	if (!found || !dladdr(found, &where) || !where.dli_fname) {
		return -1;
	}
	library = dlopen(where.dli_fname, RTLD_NOW | RTLD_NOLOAD);
	if (!library) {
		return -1;
	}
	function = dlsym(library, symbol);
	if (!function) {
		result = -1;
	} else if (registering) {
		int (*register_callback)(struct prometheus_callback *) = function;

		result = register_callback(&prometheus_callback);
	} else {
		void (*unregister_callback)(struct prometheus_callback *) = function;

		unregister_callback(&prometheus_callback);
	}
	dlclose(library);
	return result;
}

/* Call with prometheus_lock held. */
static void prometheus_attach_locked(void)
{
	if (!prometheus_registered && !prometheus_call("prometheus_callback_register", 1)) {
		prometheus_registered = 1;
		ast_log(LOG_NOTICE, "cdr_kafka: metrics are published through res_prometheus\n");
	}
}

static void prometheus_attach(void)
{
	ast_mutex_lock(&prometheus_lock);
	prometheus_attach_locked();
	ast_mutex_unlock(&prometheus_lock);
}

static void prometheus_detach(void)
{
	ast_mutex_lock(&prometheus_lock);
	if (prometheus_registered) {
		/* A res_prometheus unloaded since then forgot us: nothing to find, nothing done. */
		prometheus_call("prometheus_callback_unregister", 0);
		prometheus_registered = 0;
	}
	ast_mutex_unlock(&prometheus_lock);
}

/*
 * At startup CDR backends load before res_prometheus: this thread waits until Asterisk is
 * fully booted, registers if res_prometheus is there by then, and ends.
 */
static void *prometheus_watch(void *unused)
{
	(void) unused;
	ast_mutex_lock(&prometheus_lock);
	while (!prometheus_stop && !ast_fully_booted) {
		struct timespec until;

		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += 200 * 1000 * 1000;
		if (until.tv_nsec >= 1000 * 1000 * 1000) {
			until.tv_sec += 1;
			until.tv_nsec -= 1000 * 1000 * 1000;
		}
		ast_cond_timedwait(&prometheus_wake, &prometheus_lock, &until);
	}
	if (!prometheus_stop) {
		prometheus_attach_locked();
	}
	ast_mutex_unlock(&prometheus_lock);
	return NULL;
}

static void prometheus_start(void)
{
	if (ast_fully_booted) {
		prometheus_attach();
		return;
	}
	prometheus_stop = 0;
	ast_cond_init(&prometheus_wake, NULL);
	if (pthread_create(&prometheus_watcher, NULL, prometheus_watch, NULL)) {
		ast_cond_destroy(&prometheus_wake);
		ast_log(LOG_WARNING, "cdr_kafka: cannot start a thread to wait for res_prometheus: "
			"metrics are published after 'module reload cdr_kafka'\n");
		return;
	}
	prometheus_watching = 1;
}

/* Before the module's state goes: no scrape runs our callback once this returns. */
static void prometheus_stop_all(void)
{
	if (prometheus_watching) {
		ast_mutex_lock(&prometheus_lock);
		prometheus_stop = 1;
		ast_cond_signal(&prometheus_wake);
		ast_mutex_unlock(&prometheus_lock);
		pthread_join(prometheus_watcher, NULL);
		ast_cond_destroy(&prometheus_wake);
		prometheus_watching = 0;
	}
	prometheus_detach();
}

/* A res_prometheus loaded (or loaded again) since is taken up at reload. */
static void prometheus_refresh(void)
{
	prometheus_detach();
	prometheus_attach();
}
#else
static void prometheus_start(void)
{
}

static void prometheus_stop_all(void)
{
}

static void prometheus_refresh(void)
{
}
#endif

/*
 * `core stop now` and SIGTERM never unload modules: Asterisk joins its CDR engine, which
 * posts every CDR still active to us, then calls exit(). This handler then delivers what
 * the spool holds, for up to flush_timeout_ms, as an unload would; whatever is left stays
 * in the spool for the next start (as after `core restart now`, which execs without an
 * exit). glibc also runs it at dlclose (__cxa_finalize), after unload_module: there is
 * nothing left to do then.
 * Asterisk's logger is closed by now, so what the module says here goes nowhere.
 */
static int module_running;
static int exit_hook_registered;

static void deliver_at_exit(void)
{
	struct rust_call stop = { .function = cdr_kafka_unload };

	if (!__atomic_exchange_n(&module_running, 0, __ATOMIC_SEQ_CST)) {
		return;
	}
	/* CDR callbacks ended with the CDR engine; CEL and scrapes may still come. */
	host_cel_unregister();
	prometheus_stop_all();
	run_on_short_thread(&stop);
}

static int load_module(void)
{
	struct rust_call call = { .load = cdr_kafka_load, .host = &host };

	ast_eid_to_str(entity_id, sizeof(entity_id), &ast_eid_default);
	host.system_name = ast_config_AST_SYSTEM_NAME ? ast_config_AST_SYSTEM_NAME : "";
	host.asterisk_version = ast_get_version();
	if (gethostname(hostname, sizeof(hostname) - 1)) {
		hostname[0] = '\0';
	}
	host.config_dir = ast_config_AST_CONFIG_DIR;
	host.spool_dir = ast_config_AST_SPOOL_DIR;

	if (run_on_short_thread(&call)) {
		return AST_MODULE_LOAD_DECLINE;
	}
	if (ast_cdr_register(BACKEND_NAME, "Kafka CDR backend", cdr_log)) {
		struct rust_call stop = { .function = cdr_kafka_unload };

		ast_log(LOG_ERROR, "cdr_kafka: Asterisk refused to register the CDR backend '%s'\n",
			BACKEND_NAME);
		host_cel_unregister();
		run_on_short_thread(&stop);
		return AST_MODULE_LOAD_DECLINE;
	}
	ast_cli_register_multiple(cli_entries, ARRAY_LEN(cli_entries));
	prometheus_start();
	__atomic_store_n(&module_running, 1, __ATOMIC_SEQ_CST);
	/* Once per mapping: glibc forgets it when the module is unmapped. */
	if (!exit_hook_registered) {
		if (atexit(deliver_at_exit)) {
			ast_log(LOG_WARNING, "cdr_kafka: no exit handler: at `core stop now` or SIGTERM, "
				"what the spool holds is delivered at the next start\n");
		} else {
			exit_hook_registered = 1;
		}
	}
	return AST_MODULE_LOAD_SUCCESS;
}

/*
 * Lets go of the CDR backend; 0 when no CDR callback can run any more.
 *
 * Outside shutdown Asterisk refuses to unregister a backend while CDRs are active, and says
 * how many (it alone can count them): the unload is then refused and the module keeps
 * running, as Asterisk's own backends do, so those calls' CDRs reach us when they end.
 * Suspending first would make Asterisk let us go and those CDRs would reach nobody.
 * At shutdown there is no later: Asterisk ignores what unload returns and unmaps the module
 * anyway (loader.c, modules_shutdown), so we suspend, unregister, and say what was not
 * captured. Shutdown waits for the calls to end first, so that is rare.
 */
static int unregister_cdr_backend(void)
{
	int channels;

	if (!ast_cdr_unregister(BACKEND_NAME)) {
		return 0;
	}
	/* Asterisk's own warning above gave the number of active CDRs. */
	channels = ast_active_channels();
	if (!ast_shutting_down()) {
		ast_log(LOG_WARNING, "cdr_kafka: unload refused: calls are still up (%d channel%s), "
			"and their CDRs are still active (counted in the warning above). cdr_kafka keeps "
			"running and publishes them when the calls end; unload once they have ended\n",
			channels, channels == 1 ? "" : "s");
		return -1;
	}
	/* Asterisk refuses only a backend that is not suspended. */
	ast_cdr_backend_suspend(BACKEND_NAME);
	ast_cdr_unregister(BACKEND_NAME);
	ast_log(LOG_ERROR, "cdr_kafka: Asterisk is shutting down with CDRs still active (counted in "
		"the warning above; %d channel%s still up): those CDRs are not captured by cdr_kafka\n",
		channels, channels == 1 ? " was" : "s were");
	return 0;
}

static int unload_module(void)
{
	struct rust_call stop = { .function = cdr_kafka_unload };

	/* First, while nothing has changed yet: a refusal leaves CDR and CEL running as they were. */
	if (unregister_cdr_backend()) {
		return -1;
	}
	__atomic_store_n(&module_running, 0, __ATOMIC_SEQ_CST);
	host_cel_unregister();
	ast_cli_unregister_multiple(cli_entries, ARRAY_LEN(cli_entries));
	prometheus_stop_all();
	/* No CDR, CEL or scrape callback runs after their unregister returned: now the producer may go. */
	run_on_short_thread(&stop);
	return 0;
}

static int reload_module(void)
{
	struct rust_call call = { .function = cdr_kafka_reload };
	int result = run_on_short_thread(&call);

	prometheus_refresh();
	return result ? AST_MODULE_LOAD_DECLINE : AST_MODULE_LOAD_SUCCESS;
}

AST_MODULE_INFO(ASTERISK_GPL_KEY, AST_MODFLAG_LOAD_ORDER, "Kafka CDR Backend",
	.support_level = AST_MODULE_SUPPORT_EXTENDED,
	.load = load_module,
	.unload = unload_module,
	.reload = reload_module,
	.load_pri = AST_MODPRI_CDR_DRIVER,
	.requires = "cdr",
);
