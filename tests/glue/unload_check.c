/*
 * Runs the glue's unload_module against the stand-ins of unload_stubs.c, which behave as
 * Asterisk's CDR backend list does: `unload_check SHUTTING_DOWN ACTIVE_CDRS CHANNELS`
 * registers the CEL backend, unloads, and prints every call made, the log lines and the
 * result. tests/glue_unload.rs compiles and runs it.
 */
#include "../../src/glue.c"

#include <stdio.h>
#include <stdlib.h>

extern int stub_shutting_down;
extern int stub_active_cdrs;
extern int stub_active_channels;

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: unload_check SHUTTING_DOWN ACTIVE_CDRS CHANNELS\n");
		return 2;
	}
	stub_shutting_down = atoi(argv[1]);
	stub_active_cdrs = atoi(argv[2]);
	stub_active_channels = atoi(argv[3]);
	host_cel_register();
	printf("result=%d\n", unload_module());
	return 0;
}
