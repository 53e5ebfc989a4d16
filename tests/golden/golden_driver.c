/*
 * golden_driver: scenarios of SMTP transactions through the engine, in the
 * style of Postfix's smtpd_check.in / smtpd_check.ref: a file of facts and
 * stages in, one line per stage with the verdict and the log lines the
 * engine wrote out, compared with a reference file by run_golden.py. No
 * Postfix, no sockets: the engine as both front ends call it
 * (engine_stage), over a real store.
 *
 * Usage: golden_driver FILE --sqlite DIR | --redis PORT
 *
 * FILE, one directive a line ("#" starts a comment):
 *   scenario NAME          a fresh engine and store for what follows
 *   config JSON            the config of this scenario (one line); without
 *                          a "store" member the driver's store is used
 *   front milter|policy    (default milter)
 *   listener full|trap|sender   the policy listener's role (default full)
 *   connect IP [helo=NAME] [sasl=NAME]   a new SMTP session
 *   mail SENDER            MAIL FROM ("<>": the null sender); the milter
 *                          starts a transaction, the policy a new instance
 *   rcpt RECIPIENT         RCPT TO
 *   eom                    end of message (milter only)
 *   instance ID            the policy's instance for what follows
 * Output: the directive, then "  => ACTION [REPLY]" and "  log: LINE" per
 * log line. GOLDEN_UNUSED_PORT in a config is replaced by the value of
 * the environment variable of that name (a port nothing listens on), and
 * that value in a log line by the name again.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "log.h"

#define LINE_MAX_LEN 8192

typedef struct driver {
	const char *sqlite_dir; /* or */
	const char *redis_port;
	unsigned nscenario;
	engine *eng;
	engine_snapshot *snap;
	engine_msg msg; /* the milter's transaction; snap NULL outside one */
	decide_front front;
	policy_role role;
	char client[64], helo[256], sasl[256], sender[1024], instance[64], qid[16];
	unsigned ninstance, nqid;
	const char *config; /* the scenario's config line, owned by the caller */
} driver;

/* A log line, with the unused port (which differs from run to run) written as its name. */
static void sink(int level, const char *msg, void *ctx)
{
	const char *port = getenv("GOLDEN_UNUSED_PORT");
	const char *at = port && *port ? strstr(msg, port) : NULL;

	(void)level, (void)ctx;
	if (at)
		printf("  log: %.*sGOLDEN_UNUSED_PORT%s\n", (int)(at - msg), msg, at + strlen(port));
	else
		printf("  log: %s\n", msg);
}

static void end_message(driver *d)
{
	if (d->msg.snap)
		engine_msg_end(&d->msg);
}

static void stop_engine(driver *d)
{
	end_message(d);
	if (d->snap)
		engine_release(d->snap);
	engine_free(d->eng);
	d->snap = NULL;
	d->eng = NULL;
}

static void replace_port(char *text)
{
	const char *port = getenv("GOLDEN_UNUSED_PORT");
	char *at = strstr(text, "\"GOLDEN_UNUSED_PORT\"");

	if (at && port) {
		size_t taken = strlen("\"GOLDEN_UNUSED_PORT\""), plen = strlen(port);
		memmove(at + plen, at + taken, strlen(at + taken) + 1);
		memcpy(at, port, plen);
	}
}

/* The scenario's engine: its config in a file, the driver's store unless the config names one. */
static int start_engine(driver *d)
{
	char path[512], db[600], port[64], prefix[64], err[4096];
	const char *over[4];
	size_t nover = 0;
	FILE *f;
	bool own_store = d->config && strstr(d->config, "\"store\"");

	snprintf(path, sizeof(path), "%s/golden%u.json", d->sqlite_dir ? d->sqlite_dir : "/tmp",
	         d->nscenario);
	if (!(f = fopen(path, "w")))
		return -1;
	fprintf(f, "%s\n", d->config ? d->config : "{}");
	fclose(f);
	if (!own_store && d->sqlite_dir) {
		snprintf(db, sizeof(db), "store.sqlite.path=%s/golden%u.db", d->sqlite_dir, d->nscenario);
		over[nover++] = db;
	} else if (!own_store) {
		snprintf(port, sizeof(port), "store.redis.port=%s", d->redis_port);
		snprintf(prefix, sizeof(prefix), "store.redis.prefix=golden%u:", d->nscenario);
		over[nover++] = "store.backend=redis";
		over[nover++] = port;
		over[nover++] = prefix;
	}
	config *cfg = config_load(path, over, nover, err, sizeof(err));
	remove(path);
	if (!cfg) {
		printf("  config error: %s\n", err);
		return -1;
	}
	if (!(d->eng = engine_new(cfg, err, sizeof(err))) ||
	    engine_open_store(d->eng, err, sizeof(err)) < 0) {
		printf("  store error: %s\n", err);
		return -1;
	}
	d->snap = engine_acquire(d->eng);
	return 0;
}

static void print_verdict(const check_verdict *v)
{
	printf("  => %s", decide_action_name(v->action));
	if (v->reply.code[0] || v->reply.text[0])
		printf(" %s%s%s%s%s", v->reply.code, v->reply.xcode[0] ? " " : "", v->reply.xcode,
		       v->reply.text[0] ? " " : "", v->reply.text);
	printf("\n");
}

static decide_facts facts_of(driver *d, const char *rcpt)
{
	return (decide_facts){.front = d->front,
	                      .client_address = d->client[0] ? d->client : NULL,
	                      .helo = d->helo[0] ? d->helo : NULL,
	                      .sender = d->sender,
	                      .sasl_username = d->sasl[0] ? d->sasl : NULL,
	                      .recipient = rcpt,
	                      .queue_id = d->qid};
}

/* One policy request as policy_server.c makes it: a message's state by instance. */
static void policy_request(driver *d, check_stage stage, const char *rcpt)
{
	decide_facts f = facts_of(d, rcpt);
	engine_msg m;

	engine_msg_begin(&m, d->snap);
	engine_msg_recall(&m, d->instance);
	check_verdict v = engine_stage(&m, stage, policy_role_checks(d->role), &f);
	engine_msg_remember(&m, d->instance);
	engine_msg_end(&m);
	print_verdict(&v);
}

static void do_mail(driver *d, const char *arg)
{
	snprintf(d->sender, sizeof(d->sender), "%s", strcmp(arg, "<>") == 0 ? "" : arg);
	snprintf(d->qid, sizeof(d->qid), "Q%04u", ++d->nqid);
	if (d->front == DECIDE_FRONT_POLICY) {
		snprintf(d->instance, sizeof(d->instance), "golden.%u", ++d->ninstance);
		policy_request(d, CHECK_STAGE_MAIL, NULL);
		return;
	}
	end_message(d);
	engine_msg_begin(&d->msg, d->snap);
	decide_facts f = facts_of(d, NULL);
	check_verdict v = engine_stage(&d->msg, CHECK_STAGE_MAIL, CHECKS_EVERY, &f);
	print_verdict(&v);
	if (v.action != DECIDE_CONTINUE)
		end_message(d);
}

static void do_rcpt(driver *d, const char *arg)
{
	if (d->front == DECIDE_FRONT_POLICY) {
		policy_request(d, CHECK_STAGE_RCPT, arg);
		return;
	}
	if (!d->msg.snap) {
		printf("  => (no transaction)\n");
		return;
	}
	decide_facts f = facts_of(d, arg);
	check_verdict v = engine_stage(&d->msg, CHECK_STAGE_RCPT, CHECKS_EVERY, &f);
	print_verdict(&v);
}

static void do_eom(driver *d)
{
	if (d->front == DECIDE_FRONT_POLICY || !d->msg.snap) {
		printf("  => (no transaction)\n");
		return;
	}
	decide_facts f = facts_of(d, NULL);
	check_verdict v = engine_stage(&d->msg, CHECK_STAGE_EOM, CHECKS_EVERY, &f);
	print_verdict(&v);
	end_message(d);
}

static void do_connect(driver *d, char *arg)
{
	char *tok = strtok(arg, " ");

	end_message(d);
	d->helo[0] = d->sasl[0] = '\0';
	snprintf(d->client, sizeof(d->client), "%s", tok ? tok : "");
	while ((tok = strtok(NULL, " "))) {
		if (strncmp(tok, "helo=", 5) == 0)
			snprintf(d->helo, sizeof(d->helo), "%s", tok + 5);
		else if (strncmp(tok, "sasl=", 5) == 0)
			snprintf(d->sasl, sizeof(d->sasl), "%s", tok + 5);
	}
}

/* One directive; -1 stops the run (the output says why). */
static int directive(driver *d, char *line, char **config_line)
{
	char *arg = strchr(line, ' ');

	if (arg)
		*arg++ = '\0';
	else
		arg = line + strlen(line);
	if (strcmp(line, "scenario") == 0) {
		stop_engine(d);
		d->nscenario++;
		free(*config_line);
		*config_line = NULL;
		d->config = NULL;
		d->front = DECIDE_FRONT_MILTER;
		d->role = POLICY_ROLE_FULL;
		d->client[0] = d->sender[0] = d->instance[0] = '\0';
		return 0;
	}
	if (strcmp(line, "config") == 0) {
		stop_engine(d);
		free(*config_line);
		*config_line = strdup(arg);
		if (*config_line)
			replace_port(*config_line);
		d->config = *config_line;
		return 0;
	}
	if (strcmp(line, "front") == 0) {
		end_message(d);
		d->front = strcmp(arg, "policy") == 0 ? DECIDE_FRONT_POLICY : DECIDE_FRONT_MILTER;
		return 0;
	}
	if (strcmp(line, "listener") == 0) {
		d->role = strcmp(arg, "trap") == 0     ? POLICY_ROLE_TRAP
		          : strcmp(arg, "sender") == 0 ? POLICY_ROLE_SENDER
		                                       : POLICY_ROLE_FULL;
		return 0;
	}
	if (strcmp(line, "instance") == 0) {
		snprintf(d->instance, sizeof(d->instance), "%s", arg);
		return 0;
	}
	if (strcmp(line, "connect") == 0) {
		do_connect(d, arg);
		return 0;
	}
	if (!d->eng && start_engine(d) < 0)
		return -1;
	if (strcmp(line, "mail") == 0)
		do_mail(d, arg);
	else if (strcmp(line, "rcpt") == 0)
		do_rcpt(d, arg);
	else if (strcmp(line, "eom") == 0)
		do_eom(d);
	else {
		printf("  unknown directive %s\n", line);
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	driver d = {.front = DECIDE_FRONT_MILTER, .role = POLICY_ROLE_FULL};
	char line[LINE_MAX_LEN], *config_line = NULL;
	int rc = 0;
	FILE *in;

	if (argc != 4 || (strcmp(argv[2], "--sqlite") != 0 && strcmp(argv[2], "--redis") != 0)) {
		fprintf(stderr, "usage: golden_driver FILE --sqlite DIR | --redis PORT\n");
		return 2;
	}
	if (strcmp(argv[2], "--sqlite") == 0)
		d.sqlite_dir = argv[3];
	else
		d.redis_port = argv[3];
	if (!(in = fopen(argv[1], "r"))) {
		perror(argv[1]);
		return 2;
	}
	log_set_sink(sink, NULL);
	while (rc == 0 && fgets(line, sizeof(line), in)) {
		line[strcspn(line, "\n")] = '\0';
		if (line[0] == '\0' || line[0] == '#') {
			printf("%s\n", line);
			continue;
		}
		printf("%s\n", line);
		rc = directive(&d, line, &config_line);
	}
	stop_engine(&d);
	free(config_line);
	fclose(in);
	log_set_sink(NULL, NULL);
	return rc == 0 ? 0 : 1;
}
