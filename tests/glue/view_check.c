/*
 * Builds the glue's view of a CDR from a `struct ast_cdr` laid out by the headers being
 * built against, without Asterisk: glue.c is included whole, Asterisk's functions are
 * stubbed in stubs.c, and the Rust entry point prints what it received.
 * tests/glue_view.rs compiles and runs it; fields that move between releases (tenantid,
 * peertenantid, userfield, sequence) must still arrive with the right values.
 */
#include "../../src/glue.c"

#include <stdio.h>

static void show(const char *name, const char *value)
{
	printf("%s=%s\n", name, value ? value : "(absent)");
}

int cdr_kafka_log_cdr(const struct cdrk_cdr *view)
{
	show("clid", view->clid);
	show("src", view->src);
	show("dst", view->dst);
	show("dcontext", view->dcontext);
	show("channel", view->channel);
	show("dstchannel", view->dstchannel);
	show("lastapp", view->lastapp);
	show("lastdata", view->lastdata);
	show("disposition", view->disposition);
	show("amaflags", view->amaflags);
	show("accountcode", view->accountcode);
	show("peeraccount", view->peeraccount);
	show("uniqueid", view->uniqueid);
	show("linkedid", view->linkedid);
	show("tenantid", view->tenantid);
	show("peertenantid", view->peertenantid);
	show("userfield", view->userfield);
	printf("duration=%lld\nbillsec=%lld\nsequence=%d\nvariables=%s\n",
		(long long) view->duration, (long long) view->billsec, view->sequence,
		view->variables ? "some" : "none");
	return 0;
}

int main(void)
{
	static struct ast_cdr cdr;

	ast_copy_string(cdr.clid, "\"Alice\" <100>", sizeof(cdr.clid));
	ast_copy_string(cdr.src, "100", sizeof(cdr.src));
	ast_copy_string(cdr.dst, "200", sizeof(cdr.dst));
	ast_copy_string(cdr.dcontext, "default", sizeof(cdr.dcontext));
	ast_copy_string(cdr.channel, "PJSIP/100-00000001", sizeof(cdr.channel));
	ast_copy_string(cdr.dstchannel, "PJSIP/200-00000002", sizeof(cdr.dstchannel));
	ast_copy_string(cdr.lastapp, "Dial", sizeof(cdr.lastapp));
	ast_copy_string(cdr.lastdata, "PJSIP/200,30", sizeof(cdr.lastdata));
	ast_copy_string(cdr.accountcode, "acct-1", sizeof(cdr.accountcode));
	ast_copy_string(cdr.peeraccount, "acct-2", sizeof(cdr.peeraccount));
	ast_copy_string(cdr.uniqueid, "1700000000.1", sizeof(cdr.uniqueid));
	ast_copy_string(cdr.linkedid, "1700000000.0", sizeof(cdr.linkedid));
#ifdef CDRK_HAVE_CDR_TENANTID
	ast_copy_string(cdr.tenantid, "tenant-a", sizeof(cdr.tenantid));
	ast_copy_string(cdr.peertenantid, "tenant-b", sizeof(cdr.peertenantid));
#endif
	ast_copy_string(cdr.userfield, "campaign=42", sizeof(cdr.userfield));
	cdr.duration = 135;
	cdr.billsec = 130;
	cdr.disposition = AST_CDR_ANSWERED;
	cdr.amaflags = AST_AMA_DOCUMENTATION;
	cdr.sequence = 7;
	return cdr_log(&cdr);
}
