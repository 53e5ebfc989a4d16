/*
 * ctl_stats: counts by type and by window, a small table of traps (linear
 * probing on the trap's FNV-1a hash) and a top-N of keys kept sorted by
 * insertion (see ctl_stats.h).
 */
#include "ctl/ctl_stats.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/hash.h"
#include "log.h"

enum { W_MINUTE, W_HOUR, W_DAY, NWINDOWS };
static const int64_t window_seconds[NWINDOWS] = {60, 3600, 86400};
static const char *const window_names[NWINDOWS] = {"minute", "hour", "24 hours"};
enum { NTYPES = KEY_TYPE_HELO + 1 };

typedef struct trap_count {
	char trap[STORE_FIELD_MAX]; /* "" : a free slot */
	uint64_t hits;
} trap_count;

typedef struct key_count {
	char key[STORE_KEY_MAX];
	uint64_t hits;
} key_count;

struct ctl_stats {
	int64_t now;
	uint64_t entries, by_type[NTYPES];
	uint64_t made[NWINDOWS], hit[NWINDOWS];
	uint64_t other_trap_hits;
	trap_count *traps; /* CTL_STATS_MAX_TRAPS slots */
	size_t ntraps;
	key_count top[CTL_STATS_TOP];
	size_t ntop;
};

ctl_stats *ctl_stats_new(int64_t now)
{
	ctl_stats *s = calloc(1, sizeof(*s));
	if (s && !(s->traps = calloc(CTL_STATS_MAX_TRAPS, sizeof(*s->traps)))) {
		free(s);
		return NULL;
	}
	if (s)
		s->now = now;
	return s;
}

void ctl_stats_free(ctl_stats *s)
{
	if (!s)
		return;
	free(s->traps);
	free(s);
}

/* The trap's slot, made if there is room; NULL when the table is full. */
static trap_count *trap_slot(ctl_stats *s, const char *trap)
{
	size_t i = (size_t)(hash_fnv1a(HASH_FNV1A_INIT, trap, strlen(trap)) % CTL_STATS_MAX_TRAPS);
	for (size_t n = 0; n < CTL_STATS_MAX_TRAPS; n++, i = (i + 1) % CTL_STATS_MAX_TRAPS) {
		if (strcmp(s->traps[i].trap, trap) == 0)
			return &s->traps[i];
		if (s->traps[i].trap[0] == '\0') {
			if (s->ntraps >= CTL_STATS_MAX_TRAPS * 3 / 4)
				return NULL; /* keep probes short */
			snprintf(s->traps[i].trap, sizeof(s->traps[i].trap), "%s", trap);
			s->ntraps++;
			return &s->traps[i];
		}
	}
	return NULL;
}

/* Keep the CTL_STATS_TOP most-hit keys, most first (ties: the first met stays ahead). */
static void top_add(key_count *top, size_t *ntop, const char *key, uint64_t hits)
{
	size_t at = *ntop;
	while (at > 0 && top[at - 1].hits < hits)
		at--;
	if (at >= CTL_STATS_TOP)
		return;
	size_t n = *ntop < CTL_STATS_TOP ? *ntop : CTL_STATS_TOP - 1;
	memmove(&top[at + 1], &top[at], (n - at) * sizeof(*top));
	snprintf(top[at].key, sizeof(top[at].key), "%s", key);
	top[at].hits = hits;
	if (*ntop < CTL_STATS_TOP)
		(*ntop)++;
}

int ctl_stats_add(ctl_stats *s, const store_entry *e)
{
	key_type t = key_type_of(e->key);

	s->entries++;
	if ((int)t >= 0 && (int)t < NTYPES)
		s->by_type[t]++;
	for (int w = 0; w < NWINDOWS; w++) {
		s->made[w] += e->first_seen > s->now - window_seconds[w];
		s->hit[w] += e->last_seen > s->now - window_seconds[w];
	}
	if (e->last_seen <= s->now - window_seconds[W_DAY])
		return 0;
	if (e->hits > 0) /* an entry added by hand has none */
		top_add(s->top, &s->ntop, e->key, e->hits);
	if (e->trap[0]) {
		trap_count *tc = trap_slot(s, e->trap);
		if (tc)
			tc->hits += e->hits;
		else
			s->other_trap_hits += e->hits;
	}
	return 0;
}

static int by_hits(const void *a, const void *b)
{
	const trap_count *x = a, *y = b;
	if (x->hits != y->hits)
		return x->hits < y->hits ? 1 : -1;
	return strcmp(x->trap, y->trap);
}

static void print_traps(const ctl_stats *s, FILE *out)
{
	trap_count *sorted = malloc(CTL_STATS_MAX_TRAPS * sizeof(*sorted));
	size_t n = 0;
	char text[STORE_FIELD_MAX];

	if (!sorted)
		return;
	for (size_t i = 0; i < CTL_STATS_MAX_TRAPS; i++)
		if (s->traps[i].trap[0])
			sorted[n++] = s->traps[i];
	qsort(sorted, n, sizeof(*sorted), by_hits);
	fprintf(out, "\ntraps with the most hits (entries hit in the last 24 hours, all their hits):\n");
	for (size_t i = 0; i < n && i < CTL_STATS_TOP; i++)
		fprintf(out, "  %10llu  %s\n", (unsigned long long)sorted[i].hits,
		        log_safe(sorted[i].trap, text, sizeof(text)));
	if (s->other_trap_hits)
		fprintf(out, "  %10llu  (other traps)\n", (unsigned long long)s->other_trap_hits);
	if (n == 0 && !s->other_trap_hits)
		fprintf(out, "  none\n");
	free(sorted);
}

void ctl_stats_print(const ctl_stats *s, FILE *out)
{
	char text[STORE_KEY_MAX];

	fprintf(out, "entries in force: %llu\n", (unsigned long long)s->entries);
	for (int t = 0; t < NTYPES; t++)
		fprintf(out, "  %-16s %llu\n", key_type_name((key_type)t), (unsigned long long)s->by_type[t]);
	fprintf(out, "\n%-20s %10s %10s\n", "in the last", "new", "hit");
	for (int w = 0; w < NWINDOWS; w++)
		fprintf(out, "  %-18s %10llu %10llu\n", window_names[w], (unsigned long long)s->made[w],
		        (unsigned long long)s->hit[w]);
	print_traps(s, out);
	fprintf(out, "\nmost-hit keys (entries hit in the last 24 hours, all their hits):\n");
	for (size_t i = 0; i < s->ntop; i++)
		fprintf(out, "  %10llu  %s\n", (unsigned long long)s->top[i].hits,
		        log_safe(s->top[i].key, text, sizeof(text)));
	if (s->ntop == 0)
		fprintf(out, "  none\n");
}

/* A sample line worth showing: not a comment, not a histogram bucket, not 0. */
static bool worth_showing(const char *line, size_t len)
{
	const char *space = memchr(line, ' ', len);
	const char *brace = memchr(line, '{', len);
	const char *name_end = brace && brace < space ? brace : space;

	if (len == 0 || line[0] == '#' || !space)
		return false;
	if (name_end - line >= 7 && memcmp(name_end - 7, "_bucket", 7) == 0)
		return false;
	return !(line + len - space == 2 && space[1] == '0');
}

/*
 * The lines are made safe for a terminal like the store's keys: whatever
 * answers on metrics.listen wrote them (another process can hold the port
 * while spamtrapd is down).
 */
void ctl_stats_print_daemon(const char *exposition, FILE *out)
{
	size_t shown = 0;
	char raw[1024], text[1024];

	fprintf(out, "\ndaemon counters since it started (all others are 0):\n");
	for (const char *line = exposition; *line;) {
		const char *eol = strchr(line, '\n');
		size_t len = eol ? (size_t)(eol - line) : strlen(line);
		if (worth_showing(line, len)) {
			snprintf(raw, sizeof(raw), "%.*s", (int)len, line);
			fprintf(out, "  %s\n", log_safe(raw, text, sizeof(text)));
			shown++;
		}
		line += len + (eol ? 1 : 0);
	}
	if (shown == 0)
		fprintf(out, "  none\n");
}

/* "NAME{LABELS} TOTAL MINUTE HOUR": the three numbers from the right (a label value may hold blanks). */
static bool rates_line(char *line, const char **name, unsigned long long v[3])
{
	for (int k = 2; k >= 0; k--) {
		char *space = strrchr(line, ' ');
		char *end;
		if (!space || space[1] < '0' || space[1] > '9')
			return false;
		v[k] = strtoull(space + 1, &end, 10);
		if (*end)
			return false;
		*space = '\0';
	}
	*name = line;
	return line[0] != '\0' && line[0] != '#';
}

static void print_rate(FILE *out, unsigned long long n, double seconds)
{
	fprintf(out, " %10llu %9.3g", n, seconds > 0 ? (double)n / seconds : 0.0);
}

bool ctl_stats_print_rates(const char *text, FILE *out)
{
	double minute = -1, hour = -1;
	size_t shown = 0;
	char raw[1024], safe[1024];
	const char *window = strstr(text, "# window minute ");

	if (!window || sscanf(window, "# window minute %lf hour %lf", &minute, &hour) != 2)
		return false;
	fprintf(out,
	        "\ndaemon counters: total since it started, and the increase and rate per second over\n"
	        "the last minute (%.0f s) and the last hour (%.0f s%s); all others are 0:\n",
	        minute, hour, hour < 3600 ? ", since it started" : "");
	fprintf(out, "  %12s %10s %9s %10s %9s  %s\n", "total", "minute", "/s", "hour", "/s", "counter");
	for (const char *line = text; *line;) {
		const char *eol = strchr(line, '\n');
		size_t len = eol ? (size_t)(eol - line) : strlen(line);
		const char *name;
		unsigned long long v[3];

		snprintf(raw, sizeof(raw), "%.*s", (int)len, line);
		line += len + (eol ? 1 : 0);
		if (len >= sizeof(raw) || !rates_line(raw, &name, v) || v[0] == 0)
			continue;
		fprintf(out, "  %12llu", v[0]);
		print_rate(out, v[1], minute);
		print_rate(out, v[2], hour);
		/* Whatever answers on metrics.listen wrote it: keep control bytes off the terminal. */
		fprintf(out, "  %s\n", log_safe(name, safe, sizeof(safe)));
		shown++;
	}
	if (shown == 0)
		fprintf(out, "  none\n");
	return true;
}
