/*
 * Stand-ins for the Asterisk symbols glue.c references, for tests/glue/unload_check.c: the
 * CDR backend list behaves as Asterisk's main/cdr.c does (ast_cdr_unregister refuses a
 * backend that is not suspended while CDRs are active, and says how many), shutdown and
 * the channel count are set by the check, and every call the unload path makes is printed
 * in order. No Asterisk header here, as in stubs.c.
 */
#include <stdarg.h>
#include <stdio.h>

/* Set by the check before it unloads. */
int stub_shutting_down;
int stub_active_cdrs;
int stub_active_channels;

static int backend_suspended;

static void event(const char *what)
{
	printf("event=%s\n", what);
}

int ast_cdr_unregister(const char *name)
{
	if (!backend_suspended && stub_active_cdrs != 0) {
		printf("log=WARNING Unable to unregister CDR backend %s; %d CDRs are still active\n",
			name, stub_active_cdrs);
		event("cdr_unregister refused");
		return -1;
	}
	event(backend_suspended ? "cdr_unregister suspended" : "cdr_unregister");
	return 0;
}

int ast_cdr_backend_suspend(const char *name)
{
	(void) name;
	backend_suspended = 1;
	event("cdr_suspend");
	return 0;
}

int ast_cdr_backend_unsuspend(const char *name)
{
	(void) name;
	backend_suspended = 0;
	event("cdr_unsuspend");
	return 0;
}

int ast_shutting_down(void)
{
	return stub_shutting_down;
}

int ast_active_channels(void)
{
	return stub_active_channels;
}

int ast_cel_backend_register(const char *name, void *callback)
{
	(void) name;
	(void) callback;
	event("cel_register");
	return 0;
}

int ast_cel_backend_unregister(const char *name)
{
	(void) name;
	event("cel_unregister");
	return 0;
}

int ast_cli_unregister_multiple(void *entries, int count)
{
	(void) entries;
	(void) count;
	event("cli_unregister");
	return 0;
}

int cdr_kafka_unload(void)
{
	event("rust_unload");
	return 0;
}

/* Asterisk's __LOG_WARNING and __LOG_ERROR (logger.h). */
void ast_log(int level, const char *file, int line, const char *function, const char *fmt, ...)
{
	char message[1024];
	va_list ap;

	(void) file;
	(void) line;
	(void) function;
	va_start(ap, fmt);
	vsnprintf(message, sizeof(message), fmt, ap);
	va_end(ap);
	printf("log=%s %s", level == 3 ? "WARNING" : level == 4 ? "ERROR" : "OTHER", message);
}

/* Taken around the res_prometheus state on the unload path; one thread here, nothing to lock. */
int __ast_pthread_mutex_lock(void)
{
	return 0;
}

int __ast_pthread_mutex_unlock(void)
{
	return 0;
}

/* Read by ast_fully_booted. */
unsigned long long ast_options;

/* Called by the module constructor. */
void ast_module_register(const void *info)
{
	(void) info;
}

void ast_module_unregister(const void *info)
{
	(void) info;
}

/* Never called by the check: present so the program links. */
const char *ast_config_AST_CONFIG_DIR;
const char *ast_config_AST_SPOOL_DIR;
const char *ast_config_AST_SYSTEM_NAME;
unsigned char ast_eid_default[6];

#define NEVER_CALLED(name) int name(void) { return -1; }
NEVER_CALLED(__ast_cli_register_multiple)
NEVER_CALLED(ast_category_browse_filtered)
NEVER_CALLED(ast_category_first)
NEVER_CALLED(ast_category_get_name)
NEVER_CALLED(ast_cdr_disp2str)
NEVER_CALLED(ast_cdr_register)
NEVER_CALLED(ast_cel_fill_record)
NEVER_CALLED(ast_channel_amaflags2string)
NEVER_CALLED(ast_cli)
NEVER_CALLED(ast_config_destroy)
NEVER_CALLED(ast_config_load2)
NEVER_CALLED(ast_eid_to_str)
NEVER_CALLED(ast_get_version)
NEVER_CALLED(ast_localtime)
NEVER_CALLED(ast_var_name)
NEVER_CALLED(ast_var_value)
NEVER_CALLED(cdr_kafka_load)
NEVER_CALLED(cdr_kafka_reload)
NEVER_CALLED(cdr_kafka_log_cdr)
NEVER_CALLED(cdr_kafka_log_cel)
NEVER_CALLED(cdr_kafka_status_text)
NEVER_CALLED(cdr_kafka_free_text)
NEVER_CALLED(__ast_cond_destroy)
NEVER_CALLED(__ast_cond_init)
NEVER_CALLED(__ast_cond_signal)
NEVER_CALLED(__ast_cond_timedwait)
NEVER_CALLED(__ast_str_helper)
NEVER_CALLED(__ast_strndup)
NEVER_CALLED(ast_cli_completion_add)
NEVER_CALLED(cdr_kafka_destination_names)
NEVER_CALLED(cdr_kafka_destination_set_enabled)
NEVER_CALLED(cdr_kafka_destinations_text)
NEVER_CALLED(cdr_kafka_prometheus_text)
