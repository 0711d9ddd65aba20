/*
 * Stand-ins for the Asterisk symbols glue.c references, for tests/glue/view_check.c.
 * No Asterisk header here: only the CDR path runs, so the functions it calls return
 * what it needs, and the rest exist only so that the program links.
 */
#include <stddef.h>

/* Called on the CDR path and by the module constructor. */
const char *ast_cdr_disp2str(int disposition)
{
	return disposition == 8 ? "ANSWERED" : "OTHER";
}

const char *ast_channel_amaflags2string(int flags)
{
	return flags == 3 ? "DOCUMENTATION" : "OTHER";
}

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
unsigned long long ast_options;

#define NEVER_CALLED(name) int name(void) { return -1; }
NEVER_CALLED(__ast_cli_register_multiple)
NEVER_CALLED(ast_active_channels)
NEVER_CALLED(ast_category_browse_filtered)
NEVER_CALLED(ast_category_first)
NEVER_CALLED(ast_category_get_name)
NEVER_CALLED(ast_cdr_backend_suspend)
NEVER_CALLED(ast_cdr_backend_unsuspend)
NEVER_CALLED(ast_cdr_register)
NEVER_CALLED(ast_cdr_unregister)
NEVER_CALLED(ast_cel_backend_register)
NEVER_CALLED(ast_cel_backend_unregister)
NEVER_CALLED(ast_cel_fill_record)
NEVER_CALLED(ast_cli)
NEVER_CALLED(ast_cli_unregister_multiple)
NEVER_CALLED(ast_config_destroy)
NEVER_CALLED(ast_config_load2)
NEVER_CALLED(ast_eid_to_str)
NEVER_CALLED(ast_get_version)
NEVER_CALLED(ast_localtime)
NEVER_CALLED(ast_log)
NEVER_CALLED(ast_shutting_down)
NEVER_CALLED(ast_var_name)
NEVER_CALLED(ast_var_value)
NEVER_CALLED(cdr_kafka_load)
NEVER_CALLED(cdr_kafka_reload)
NEVER_CALLED(cdr_kafka_unload)
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
NEVER_CALLED(__ast_pthread_mutex_lock)
NEVER_CALLED(__ast_pthread_mutex_unlock)
