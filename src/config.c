/*
 * config: spamtrapd.json into an immutable, reference-counted snapshot.
 *
 * Offers config_load (a file plus "-o key=value" overrides in, a snapshot
 * out), config_ref/config_unref and config_parse_duration. One table,
 * `schema` below, lists every key with its type, default, bounds and where
 * its value goes; parsing, defaults and error messages all come from it,
 * and docs/spamtrapd.json.5.md describes the same keys for administrators.
 *
 * Errors: every problem found goes to the caller's buffer, one a line,
 * sorted by position: "FILE:LINE:COLUMN: dotted.key: message"; a value
 * given with -o is named "-o dotted.key" instead; a bad line of a trap or
 * whitelist file "LISTFILE:LINE: traps.files: message". Unknown keys are
 * errors, because a typo must not silently switch protection off.
 *
 * Warnings (config.warnings) do not stop the load: a file spamtrapd trusts
 * -- the config file, traps.files, whitelist.files -- that someone other
 * than root and the service user may change, because it, or a folder on
 * its path, is writable by everyone (a folder with the sticky bit, like
 * /tmp, is fine) or is owned by another user. Whoever can change these
 * files decides who is blocklisted or whitelisted, and the config names
 * the user spamtrapd runs as. Group write is left alone: sites give a team
 * of admins a group on purpose (docs/spamtrapd.json.5.md, FILES).
 *
 * jansson keeps no positions of values, so a small locator rescans the
 * (already valid) JSON text for the path of a bad value when it is reported.
 */
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <pwd.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "config.h"
#include "core/addr.h"
#include "core/checks/dnsbl.h"
#include "core/checks/greylist.h"
#include "core/checks/ratelimit.h"
#include "core/checks/spf.h"
#include "core/greywl.h"
#include "core/text.h"
#include "hook.h"

#define CONFIG_MAX_BYTES (8u << 20) /* a config file is small; refuse a mistaken multi-GB file */
#define LIST_LINE_MAX 4096          /* one line of a trap or whitelist file */
#define LIST_FILE_MAX_ERRORS 20     /* per list file: a wrong file must not flood the log */
#define CONFIG_MAX_ERRORS 50
#define CONFIG_MAX_WARNINGS 16
#define MSG_MAX 1024
#define KEY_TEXT_MAX 256

/* ---- paths into the JSON tree: "policy.listen[1].role" ---- */

#define JPATH_MAX 8 /* the schema is at most four levels deep */

typedef struct jpath {
	size_t n;
	struct {
		const char *key; /* NULL: an array element */
		size_t len;
		size_t idx;
	} c[JPATH_MAX];
} jpath;

static void jpath_push_key(jpath *p, const char *key, size_t len)
{
	assert(p->n < JPATH_MAX);
	p->c[p->n].key = key;
	p->c[p->n].len = len;
	p->c[p->n].idx = 0;
	p->n++;
}

static void jpath_push_index(jpath *p, size_t idx)
{
	assert(p->n < JPATH_MAX);
	p->c[p->n].key = NULL;
	p->c[p->n].len = 0;
	p->c[p->n].idx = idx;
	p->n++;
}

static void jpath_pop(jpath *p)
{
	p->n--;
}

/* Components point into dotted, which must outlive p. */
static void jpath_from_dotted(jpath *p, const char *dotted)
{
	p->n = 0;
	for (;;) {
		const char *dot = strchr(dotted, '.');
		jpath_push_key(p, dotted, dot != NULL ? (size_t)(dot - dotted) : strlen(dotted));
		if (dot == NULL)
			return;
		dotted = dot + 1;
	}
}

/* Key names come from the file: control characters become '?' so an error stays one line. */
static const char *jpath_format(const jpath *p, char *buf, size_t buflen)
{
	size_t o = 0;

	for (size_t i = 0; i < p->n && o + 1 < buflen; i++) {
		if (p->c[i].key == NULL) {
			int n = snprintf(buf + o, buflen - o, "[%zu]", p->c[i].idx);
			o = n < 0 || (size_t)n >= buflen - o ? buflen - 1 : o + (size_t)n;
			continue;
		}
		if (i > 0)
			buf[o++] = '.';
		for (size_t j = 0; j < p->c[i].len && o + 1 < buflen; j++) {
			unsigned char ch = (unsigned char)p->c[i].key[j];
			buf[o++] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
		}
	}
	buf[o < buflen ? o : buflen - 1] = '\0';
	return buf;
}

static json_t *tree_get(json_t *root, const jpath *p)
{
	json_t *v = root;

	for (size_t i = 0; v != NULL && i < p->n; i++)
		v = p->c[i].key != NULL ? json_object_getn(v, p->c[i].key, p->c[i].len)
		                        : json_array_get(v, p->c[i].idx);
	return v;
}

/* ---- the locator: where in the text is the key or element at a path? ---- */

static size_t skip_ws(const char *t, size_t len, size_t i)
{
	while (i < len && (t[i] == ' ' || t[i] == '\t' || t[i] == '\n' || t[i] == '\r'))
		i++;
	return i;
}

/* t[i] is the opening quote; returns the offset just past the closing one. */
static size_t skip_string(const char *t, size_t len, size_t i)
{
	for (i++; i < len && t[i] != '"'; i++)
		if (t[i] == '\\')
			i++;
	return i < len ? i + 1 : len;
}

static size_t skip_value(const char *t, size_t len, size_t i)
{
	size_t depth = 0;

	if (i < len && t[i] == '"')
		return skip_string(t, len, i);
	if (i < len && t[i] != '{' && t[i] != '[') {
		while (i < len && t[i] != '\0' && strchr(",]} \t\r\n", t[i]) == NULL)
			i++;
		return i;
	}
	while (i < len) {
		if (t[i] == '"') {
			i = skip_string(t, len, i);
			continue;
		}
		if (t[i] == '{' || t[i] == '[')
			depth++;
		else if ((t[i] == '}' || t[i] == ']') && --depth == 0)
			return i + 1;
		i++;
	}
	return len;
}

/* The string token t[start..end) against a decoded key; jansson decodes escapes. */
static bool token_equals(const char *t, size_t start, size_t end, const char *key, size_t keylen)
{
	size_t n = end - start - 2;
	bool eq;

	if (memchr(t + start + 1, '\\', n) == NULL)
		return n == keylen && memcmp(t + start + 1, key, keylen) == 0;
	json_t *s = json_loadb(t + start, end - start, JSON_DECODE_ANY, NULL);
	eq = s != NULL && json_string_length(s) == keylen && memcmp(json_string_value(s), key, keylen) == 0;
	json_decref(s);
	return eq;
}

/* Offset of the member key in the object at t[i], or SIZE_MAX. */
static size_t find_member(const char *t, size_t len, size_t i, const char *key, size_t keylen)
{
	if (i >= len || t[i] != '{')
		return SIZE_MAX;
	i = skip_ws(t, len, i + 1);
	while (i < len && t[i] == '"') {
		size_t end = skip_string(t, len, i);
		if (token_equals(t, i, end, key, keylen))
			return i;
		i = skip_ws(t, len, skip_ws(t, len, end) + 1); /* past ':' */
		i = skip_ws(t, len, skip_value(t, len, i));
		if (i >= len || t[i] != ',')
			break;
		i = skip_ws(t, len, i + 1);
	}
	return SIZE_MAX;
}

static size_t find_element(const char *t, size_t len, size_t i, size_t idx)
{
	if (i >= len || t[i] != '[')
		return SIZE_MAX;
	i = skip_ws(t, len, i + 1);
	for (size_t k = 0; i < len && t[i] != ']'; k++) {
		if (k == idx)
			return i;
		i = skip_ws(t, len, skip_value(t, len, i));
		if (i >= len || t[i] != ',')
			break;
		i = skip_ws(t, len, i + 1);
	}
	return SIZE_MAX;
}

/* Offset of the key (object member) or the element (array) p names, or SIZE_MAX. */
static size_t locate(const char *t, size_t len, const jpath *p)
{
	size_t i = skip_ws(t, len, 0), at = SIZE_MAX;

	for (size_t k = 0; k < p->n; k++) {
		if (p->c[k].key != NULL) {
			at = find_member(t, len, i, p->c[k].key, p->c[k].len);
			if (at == SIZE_MAX)
				return SIZE_MAX;
			i = skip_ws(t, len, skip_ws(t, len, skip_string(t, len, at)) + 1);
		} else {
			at = i = find_element(t, len, i, p->c[k].idx);
			if (at == SIZE_MAX)
				return SIZE_MAX;
		}
	}
	return at;
}

/* Columns count characters (UTF-8 sequences), as jansson's own messages do. */
static void offset_to_line_col(const char *t, size_t off, int *line, int *col)
{
	*line = 1;
	*col = 1;
	for (size_t i = 0; i < off; i++) {
		if (t[i] == '\n') {
			(*line)++;
			*col = 1;
		} else if (((unsigned char)t[i] & 0xc0) != 0x80) {
			(*col)++;
		}
	}
}

/* ---- the loader: state of one config_load, and its error list ---- */

typedef struct config_box {
	config cfg; /* what callers see */
	atomic_uint refs;
	trapset *traps;                /* owned; cfg.decide.traps points here */
	whitelist *wl;                 /* owned; cfg.decide.whitelist points here */
	greywl *greywl;                /* owned; the greylist check's conf points here */
	void *check_conf[CHECK_COUNT]; /* owned: each check's own conf (check_def.conf_size), or NULL */
} config_box;

typedef struct load_error {
	int line, col; /* 0: no position in the file (sorted first) */
	size_t seq;
	char *text;
} load_error;

typedef struct loader {
	const char *path;
	char *text; /* the file as read, for the locator */
	size_t textlen;
	char **override_keys; /* dotted keys set by -o */
	size_t noverride;
	bool in_default;  /* the value at hand is a built-in default */
	const jpath *cur; /* the list element being applied, for list-file errors */
	config_box *box;
	config *cfg;
	bool wl_subdomains;
	load_error *errors;
	size_t nerrors, errcap;
	bool lost; /* an error could not be recorded (out of memory) */
	bool more; /* errors past CONFIG_MAX_ERRORS were dropped */
} loader;

static void ld_add(loader *ld, int line, int col, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Past CONFIG_MAX_ERRORS errors, later ones are only counted: the list stays readable and locating stays
 * cheap. */
static bool ld_full(loader *ld)
{
	if (ld->nerrors < CONFIG_MAX_ERRORS)
		return false;
	ld->more = true;
	return true;
}

static void ld_add(loader *ld, int line, int col, const char *fmt, ...)
{
	va_list ap;
	char *text = NULL;

	if (ld_full(ld))
		return;
	if (ld->nerrors == ld->errcap) {
		size_t cap = ld->errcap ? ld->errcap * 2 : 16;
		load_error *e = realloc(ld->errors, cap * sizeof *e);
		if (e == NULL) {
			ld->lost = true;
			return;
		}
		ld->errors = e;
		ld->errcap = cap;
	}
	va_start(ap, fmt);
	if (vasprintf(&text, fmt, ap) < 0) {
		ld->lost = true;
		text = NULL;
	}
	va_end(ap);
	for (char *c = text; c != NULL && *c != '\0'; c++)
		if ((unsigned char)*c < 0x20 || *c == 0x7f)
			*c = '?'; /* values quoted from the file must not split the message */
	if (text != NULL) {
		ld->errors[ld->nerrors] = (load_error){line, col, ld->nerrors, text};
		ld->nerrors++;
	}
}

/* The -o key that set the value at key (or a section around it), or NULL. */
static const char *override_covering(const loader *ld, const char *key)
{
	for (size_t i = ld->noverride; i-- > 0;) {
		size_t n = strlen(ld->override_keys[i]);
		if (strncmp(key, ld->override_keys[i], n) == 0 && strchr(".[", key[n]) != NULL)
			return ld->override_keys[i]; /* strchr also matches key[n] == '\0' */
	}
	return NULL;
}

static bool ld_position(const loader *ld, const jpath *p, int *line, int *col)
{
	char key[KEY_TEXT_MAX];
	size_t off;

	*line = *col = 0;
	if (p == NULL || ld->in_default || override_covering(ld, jpath_format(p, key, sizeof key)) != NULL)
		return false;
	off = locate(ld->text, ld->textlen, p);
	if (off == SIZE_MAX)
		return false;
	offset_to_line_col(ld->text, off, line, col);
	return true;
}

static void ld_error(loader *ld, const jpath *p, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* "FILE:LINE:COL: key: message", or "-o key: ..." for a value from an override. */
static void ld_error(loader *ld, const jpath *p, const char *fmt, ...)
{
	char key[KEY_TEXT_MAX], msg[MSG_MAX];
	const char *ov;
	int line, col;
	va_list ap;

	if (ld_full(ld))
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	jpath_format(p, key, sizeof key);
	ov = override_covering(ld, key);
	if (ov != NULL && strcmp(ov, key) == 0)
		ld_add(ld, 0, 0, "-o %s: %s", key, msg);
	else if (ov != NULL)
		ld_add(ld, 0, 0, "-o %s: %s: %s", ov, key, msg);
	else if (ld_position(ld, p, &line, &col))
		ld_add(ld, line, col, "%s:%d:%d: %s: %s", ld->path, line, col, key, msg);
	else
		ld_add(ld, 0, 0, "%s: %s%s%s%s", ld->path, key, key[0] ? ": " : "", msg,
		       ld->in_default ? " (built-in default)" : "");
}

static int error_cmp(const void *a, const void *b)
{
	const load_error *x = a, *y = b;

	if (x->line != y->line)
		return x->line < y->line ? -1 : 1;
	if (x->col != y->col)
		return x->col < y->col ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static void write_errors(loader *ld, char *err, size_t errlen)
{
	size_t o = 0;

	if (err == NULL || errlen == 0)
		return;
	err[0] = '\0';
	if (ld->nerrors > 1)
		qsort(ld->errors, ld->nerrors, sizeof *ld->errors, error_cmp);
	for (size_t i = 0; i < ld->nerrors; i++) {
		int n = snprintf(err + o, errlen - o, "%s%s", i > 0 ? "\n" : "", ld->errors[i].text);
		if (n < 0 || (size_t)n >= errlen - o)
			return;
		o += (size_t)n;
	}
	if (ld->lost)
		o +=
		    (size_t)snprintf(err + o, errlen - o, "%s%s: out of memory", o > 0 ? "\n" : "", ld->path);
	if (ld->more && o < errlen)
		snprintf(err + o, errlen - o, "\n%s: more errors not shown", ld->path);
}

static void loader_clear(loader *ld)
{
	for (size_t i = 0; i < ld->nerrors; i++)
		free(ld->errors[i].text);
	free(ld->errors);
	for (size_t i = 0; i < ld->noverride; i++)
		free(ld->override_keys[i]);
	free(ld->override_keys);
	free(ld->text);
}

/* ---- the schema ---- */

typedef enum {
	T_STRING,
	T_INT,
	T_BOOL,
	T_DURATION,
	T_ENUM,
	T_LIST,
	T_LISTENERS,
	T_RATE_RULES,
	T_EXPORTS,
	T_MAP
} key_type;

enum {
	K_NULLABLE = 1 << 0, /* null is a value: "not set" */
	K_NONEMPTY = 1 << 1, /* strings and lists */
};

/* A parsed scalar: strings point into the JSON tree. */
typedef struct value {
	bool null;
	int64_t i; /* T_INT, T_BOOL, T_DURATION; the index of the name for T_ENUM */
	const char *s;
} value;

#define SET_REPORTED (-2) /* a set function that reported its errors itself */

/* Checks and stores one value (one element of a T_LIST): 0, -1 with err, or SET_REPORTED. */
typedef int (*set_fn)(loader *ld, const value *v, char *err, size_t errlen);

typedef struct key_def {
	const char *path;
	key_type type;
	const char *def; /* the default, as JSON text */
	unsigned flags;
	int64_t min, max;         /* T_INT, T_DURATION; T_STRING: max is a length limit when set */
	const char *const *names; /* T_ENUM, in the order of the C enum */
	size_t off, size;         /* the field of struct config, when set is NULL */
	set_fn set;
	int owner; /* 0: a field of struct config; i + 1: of check i's own conf (check_def.keys) */
} key_def;

static bool parse_name(const char *const *names, const char *s, int64_t *idx)
{
	for (size_t i = 0; names[i] != NULL; i++) {
		if (strcmp(names[i], s) == 0) {
			*idx = (int64_t)i;
			return true;
		}
	}
	return false;
}

static void names_join(const char *const *names, char *buf, size_t buflen)
{
	size_t o = 0;

	buf[0] = '\0';
	for (size_t i = 0; names[i] != NULL && o < buflen; i++) {
		int n = snprintf(buf + o, buflen - o, "%s%s", i > 0 ? ", " : "", names[i]);
		o = n < 0 ? buflen : o + (size_t)n;
	}
}

static void format_duration(int64_t s, char *buf, size_t buflen)
{
	static const struct {
		int64_t seconds;
		char unit;
	} units[] = {{86400, 'd'}, {3600, 'h'}, {60, 'm'}};

	for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
		if (s > 0 && s % units[i].seconds == 0) {
			snprintf(buf, buflen, "%lld%c", (long long)(s / units[i].seconds), units[i].unit);
			return;
		}
	}
	snprintf(buf, buflen, "%llds", (long long)s);
}

static int check_bounds(const key_def *k, int64_t n, char *err, size_t errlen)
{
	char lo[32], hi[32];

	if (n >= k->min && n <= k->max)
		return 0;
	if (k->type == T_DURATION) {
		format_duration(k->min, lo, sizeof lo);
		format_duration(k->max, hi, sizeof hi);
	} else {
		snprintf(lo, sizeof lo, "%lld", (long long)k->min);
		snprintf(hi, sizeof hi, "%lld", (long long)k->max);
	}
	snprintf(err, errlen, "must be between %s and %s", lo, hi);
	return -1;
}

static int parse_string(const key_def *k, const json_t *j, value *v, char *err, size_t errlen)
{
	size_t max = k->max > 0 ? (size_t)k->max : 4096;

	if (!json_is_string(j)) {
		snprintf(err, errlen, "expected a string%s", k->flags & K_NULLABLE ? " or null" : "");
		return -1;
	}
	v->s = json_string_value(j);
	if ((k->flags & K_NONEMPTY) && v->s[0] == '\0') {
		snprintf(err, errlen, "must not be empty");
		return -1;
	}
	if (json_string_length(j) > max) {
		snprintf(err, errlen, "is too long (at most %zu bytes)", max);
		return -1;
	}
	return 0;
}

static int parse_duration_value(const key_def *k, const json_t *j, value *v, char *err, size_t errlen)
{
	if (json_is_integer(j) && json_integer_value(j) >= 0) {
		v->i = json_integer_value(j);
	} else if (!json_is_string(j) || !config_parse_duration(json_string_value(j), &v->i)) {
		snprintf(err, errlen,
		         "expected a duration: seconds, or a number with s, m, h or d (\"30s\", \"24h\")");
		return -1;
	}
	return check_bounds(k, v->i, err, errlen);
}

static int parse_scalar(const key_def *k, const json_t *j, value *v, char *err, size_t errlen)
{
	char names[256];

	switch (k->type) {
	case T_STRING:
		return parse_string(k, j, v, err, errlen);
	case T_INT:
		if (!json_is_integer(j)) {
			snprintf(err, errlen, "expected an integer");
			return -1;
		}
		v->i = json_integer_value(j);
		return check_bounds(k, v->i, err, errlen);
	case T_BOOL:
		if (!json_is_boolean(j)) {
			snprintf(err, errlen, "expected true or false");
			return -1;
		}
		v->i = json_is_true(j);
		return 0;
	case T_DURATION:
		return parse_duration_value(k, j, v, err, errlen);
	case T_ENUM:
		if (json_is_string(j) && parse_name(k->names, json_string_value(j), &v->i))
			return 0;
		names_join(k->names, names, sizeof names);
		snprintf(err, errlen, "expected one of %s", names);
		return -1;
	default:
		abort(); /* lists are not scalars */
	}
}

/* Integers of every width the config struct uses: bool, int/unsigned/enum, int64_t/size_t. */
static void store_int(void *field, size_t size, int64_t n)
{
	bool b = n != 0;
	int32_t i32 = (int32_t)n;

	switch (size) {
	case sizeof b:
		memcpy(field, &b, sizeof b);
		break;
	case sizeof i32:
		memcpy(field, &i32, sizeof i32);
		break;
	case sizeof n:
		memcpy(field, &n, sizeof n);
		break;
	default:
		abort(); /* a schema row with a field of an unexpected width */
	}
}

/* One element of a check's CHECK_KEY_LIST (or its null) into its check_strlist. */
static int strlist_add(char *field, size_t size, const value *v, char *err, size_t errlen)
{
	check_strlist l;
	char **grown;

	if (size != sizeof l)
		abort(); /* a check_key row of type LIST on a field that is no check_strlist */
	memcpy(&l, field, sizeof l);
	if (v->null) {
		l.null = true;
	} else {
		if (!(grown = realloc(l.v, (l.n + 1) * sizeof(*l.v))) || !(grown[l.n] = strdup(v->s))) {
			if (grown)
				l.v = grown;
			memcpy(field, &l, sizeof l);
			snprintf(err, errlen, "out of memory");
			return -1;
		}
		l.v = grown;
		l.n++;
	}
	memcpy(field, &l, sizeof l);
	return 0;
}

static int store_field(loader *ld, const key_def *k, const value *v, char *err, size_t errlen)
{
	char *field = (k->owner ? (char *)ld->box->check_conf[k->owner - 1] : (char *)ld->cfg) + k->off;
	char *s = NULL;

	if (k->type == T_LIST || k->type == T_MAP)
		return strlist_add(field, k->size, v, err, errlen);
	if (k->type != T_STRING) {
		store_int(field, k->size, v->i);
		return 0;
	}
	assert(k->size == sizeof s);
	if (!v->null && (s = strdup(v->s)) == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	memcpy(field, &s, sizeof s);
	return 0;
}

/* ---- set functions: values that need checking or compiling beyond their type ---- */

static int out_of_memory(char *err, size_t errlen)
{
	snprintf(err, errlen, "out of memory");
	return -1;
}

static int dup_into(char **dst, const char *s, char *err, size_t errlen)
{
	*dst = strdup(s);
	return *dst != NULL ? 0 : out_of_memory(err, errlen);
}

/* "1".."65535", exactly len characters. */
static bool parse_port(const char *s, size_t len, unsigned *port)
{
	unsigned n = 0;

	if (len == 0 || len > 5)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (!isdigit((unsigned char)s[i]))
			return false;
		n = n * 10 + (unsigned)(s[i] - '0');
	}
	*port = n;
	return n >= 1 && n <= 65535;
}

static const char *after_prefix(const char *s, const char *prefix)
{
	size_t n = strlen(prefix);
	return strncmp(s, prefix, n) == 0 ? s + n : NULL;
}

/* libmilter socket specs (smfi_setconn): unix:PATH, local:PATH, inet:PORT[@HOST], inet6:PORT[@HOST]. */
static int set_milter_listen(loader *ld, const value *v, char *err, size_t errlen)
{
	const char *rest, *at;
	unsigned port;
	bool ok;

	if (v->null)
		return 0;
	if ((rest = after_prefix(v->s, "unix:")) != NULL || (rest = after_prefix(v->s, "local:")) != NULL) {
		ok = rest[0] != '\0';
	} else if ((rest = after_prefix(v->s, "inet:")) != NULL ||
	           (rest = after_prefix(v->s, "inet6:")) != NULL) {
		at = strchr(rest, '@');
		ok = parse_port(rest, at != NULL ? (size_t)(at - rest) : strlen(rest), &port) &&
		     (at == NULL || at[1] != '\0');
	} else {
		ok = false;
	}
	if (!ok) {
		snprintf(err, errlen, "expected unix:PATH, inet:PORT@HOST or inet6:PORT@HOST");
		return -1;
	}
	return dup_into(&ld->cfg->milter.listen, v->s, err, errlen);
}

/* A unix socket mode: "0660" (3 or 4 octal digits, not 0), or null (0: left as created). */
static int parse_socket_mode(const value *v, unsigned *mode, char *err, size_t errlen)
{
	size_t n;
	unsigned long m;

	if (v->null) {
		*mode = 0;
		return 0;
	}
	n = strlen(v->s);
	m = strtoul(v->s, NULL, 8);
	if (n < 3 || n > 4 || strspn(v->s, "01234567") != n || m == 0) {
		snprintf(err, errlen, "expected an octal mode such as \"0660\"");
		return -1;
	}
	*mode = (unsigned)m;
	return 0;
}

static int set_milter_socket_mode(loader *ld, const value *v, char *err, size_t errlen)
{
	return parse_socket_mode(v, &ld->cfg->milter.socket_mode, err, errlen);
}

static int set_policy_socket_mode(loader *ld, const value *v, char *err, size_t errlen)
{
	return parse_socket_mode(v, &ld->cfg->policy.socket_mode, err, errlen);
}

static int set_delimiter(loader *ld, const value *v, char *err, size_t errlen)
{
	for (const char *s = v->s; *s != '\0'; s++) {
		if (*s == '@' || isspace((unsigned char)*s) || iscntrl((unsigned char)*s)) {
			snprintf(err, errlen, "must not contain '@', blanks or control characters");
			return -1;
		}
	}
	return dup_into(&ld->cfg->recipient_delimiter, v->s, err, errlen);
}

/* Made at first use, after traps.recipient_delimiter (the schema lists that first). */
static trapset *ld_traps(loader *ld)
{
	const char *delim = ld->cfg->recipient_delimiter;

	if (ld->box->traps == NULL)
		ld->box->traps = trapset_new(delim != NULL ? delim : "");
	return ld->box->traps;
}

/* Made at first use, after whitelist.include_subdomains (the schema lists that first). */
static whitelist *ld_whitelist(loader *ld)
{
	if (ld->box->wl == NULL)
		ld->box->wl = whitelist_new(ld->wl_subdomains);
	return ld->box->wl;
}

static int set_trap_address(loader *ld, const value *v, char *err, size_t errlen)
{
	trapset *t = ld_traps(ld);
	return t != NULL ? trapset_add_address(t, v->s, err, errlen) : out_of_memory(err, errlen);
}

static int set_trap_domain(loader *ld, const value *v, char *err, size_t errlen)
{
	trapset *t = ld_traps(ld);
	return t != NULL ? trapset_add_domain(t, v->s, err, errlen) : out_of_memory(err, errlen);
}

static int set_trap_pattern(loader *ld, const value *v, char *err, size_t errlen)
{
	trapset *t = ld_traps(ld);
	return t != NULL ? trapset_add_pattern(t, v->s, err, errlen) : out_of_memory(err, errlen);
}

static int add_trap_line(loader *ld, const char *line, char *err, size_t errlen)
{
	trapset *t = ld_traps(ld);
	return t != NULL ? trapset_add_line(t, line, err, errlen) : out_of_memory(err, errlen);
}

static int set_wl_subdomains(loader *ld, const value *v, char *err, size_t errlen)
{
	(void)err;
	(void)errlen;
	ld->wl_subdomains = v->i != 0;
	return 0;
}

static int set_wl_domain(loader *ld, const value *v, char *err, size_t errlen)
{
	whitelist *wl = ld_whitelist(ld);
	return wl != NULL ? whitelist_add_domain(wl, v->s, err, errlen) : out_of_memory(err, errlen);
}

static int set_wl_address(loader *ld, const value *v, char *err, size_t errlen)
{
	whitelist *wl = ld_whitelist(ld);
	return wl != NULL ? whitelist_add_address(wl, v->s, err, errlen) : out_of_memory(err, errlen);
}

static int set_wl_network(loader *ld, const value *v, char *err, size_t errlen)
{
	whitelist *wl = ld_whitelist(ld);
	return wl != NULL ? whitelist_add_network(wl, v->s, err, errlen) : out_of_memory(err, errlen);
}

static int add_wl_line(loader *ld, const char *line, char *err, size_t errlen)
{
	whitelist *wl = ld_whitelist(ld);
	return wl != NULL ? whitelist_add_line(wl, line, err, errlen) : out_of_memory(err, errlen);
}

/* ---- warnings: files others may change ---- */

static void ld_warn(loader *ld, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A warning on the snapshot; one that cannot be kept (out of memory, too many) is dropped. */
static void ld_warn(loader *ld, const char *fmt, ...)
{
	config *cfg = ld->cfg;
	char *text = NULL, **w;
	va_list ap;
	int n;

	if (cfg == NULL || cfg->nwarnings == CONFIG_MAX_WARNINGS)
		return;
	va_start(ap, fmt);
	n = vasprintf(&text, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	w = realloc(cfg->warnings, (cfg->nwarnings + 1) * sizeof *w);
	if (w == NULL) {
		free(text);
		return;
	}
	cfg->warnings = w;
	cfg->warnings[cfg->nwarnings++] = text;
}

/* The user spamtrapd serves as: `user`, or the one loading the config when unset. */
static bool service_uid(const config *cfg, uid_t *uid)
{
	struct passwd pw, *found = NULL;
	char buf[1024];

	if (cfg->user == NULL) {
		*uid = geteuid();
		return true;
	}
	if (getpwnam_r(cfg->user, &pw, buf, sizeof buf, &found) != 0 || found == NULL)
		return false;
	*uid = found->pw_uid;
	return true;
}

static void user_text(uid_t uid, char *out, size_t outlen)
{
	struct passwd pw, *found = NULL;
	char buf[1024];

	if (getpwuid_r(uid, &pw, buf, sizeof buf, &found) == 0 && found != NULL)
		snprintf(out, outlen, "user %s", found->pw_name);
	else
		snprintf(out, outlen, "uid %u", (unsigned)uid);
}

/*
 * One warning when someone but root and the service user may change path
 * (what: "config file", "traps.files"): st is of path itself, or of the
 * folder dir on its way.
 */
static bool warn_untrusted(loader *ld, const char *what, const char *path, const char *dir,
                           const struct stat *st, const uid_t *service)
{
	char where[PATH_MAX + 32] = "", owner[96];
	unsigned mode = (unsigned)st->st_mode & 07777;

	if (dir != NULL)
		snprintf(where, sizeof where, ": its folder %s", dir);
	if (st->st_uid != 0 && (service == NULL || st->st_uid != *service)) {
		user_text(st->st_uid, owner, sizeof owner);
		ld_warn(ld, "%s %s%s is owned by %s, neither root nor the user spamtrapd runs as (mode %04o)",
		        what, path, where, owner, mode);
		return true;
	}
	if ((st->st_mode & S_IWOTH) && !(dir != NULL && (st->st_mode & S_ISVTX))) {
		ld_warn(ld, "%s %s%s is writable by everyone (mode %04o)", what, path, where, mode);
		return true;
	}
	return false;
}

/* Check path (named by its real path) and every folder up to /: the owner of any of them may replace it. */
static void check_trust(loader *ld, const char *what, const char *path)
{
	char *real = realpath(path, NULL), *dir = real != NULL ? strdup(real) : NULL, *slash;
	struct stat st;
	uid_t uid;
	const uid_t *service = service_uid(ld->cfg, &uid) ? &uid : NULL;

	if (dir != NULL && !(stat(real, &st) == 0 && warn_untrusted(ld, what, real, NULL, &st, service))) {
		while ((slash = strrchr(dir, '/')) != NULL) {
			slash[slash == dir] = '\0'; /* "/a/b" -> "/a", "/a" -> "/" */
			if ((stat(dir, &st) == 0 && warn_untrusted(ld, what, real, dir, &st, service)) ||
			    slash == dir)
				break;
		}
	}
	free(dir);
	free(real);
}

/* Is host (of inet:PORT@HOST) this machine's loopback? Names other than localhost may be anything. */
static bool loopback_host(const char *host)
{
	static const uint8_t v6_loopback[16] = {[15] = 1};
	addr_ip ip;

	if (strcasecmp(host, "localhost") == 0)
		return true;
	if (!addr_ip_parse(host, &ip))
		return false;
	return ip.version == 4 ? ip.bytes[0] == 127 : memcmp(ip.bytes, v6_loopback, 16) == 0;
}

static bool has_unix_policy_listener(const config *cfg)
{
	for (size_t i = 0; i < cfg->policy.nlisten; i++)
		if (strncmp(cfg->policy.listen[i].address, "unix:", 5) == 0)
			return true;
	return false;
}

/*
 * Listeners others can reach with nothing in between: policy.allow guards
 * TCP policy listeners, but the milter protocol has no such list, and a
 * unix socket anyone may write to lets every local user in. Whoever
 * reaches a front end can blocklist any sender.
 */
static void check_exposure(loader *ld)
{
	const config *cfg = ld->cfg;
	const char *spec = cfg->milter.listen, *rest = NULL, *at;

	if (spec != NULL &&
	    ((rest = after_prefix(spec, "inet:")) != NULL || (rest = after_prefix(spec, "inet6:")))) {
		at = strchr(rest, '@');
		if (at == NULL || !loopback_host(at + 1))
			ld_warn(
			    ld,
			    "milter.listen %s can be reached from other hosts, and policy.allow does not "
			    "apply to the milter: listen on 127.0.0.1 or a unix socket, or firewall the port",
			    spec);
	} else if (spec != NULL && (cfg->milter.socket_mode & S_IWOTH)) {
		ld_warn(ld, "milter.socket_mode %04o lets every local user connect to the milter",
		        cfg->milter.socket_mode);
	}
	if (has_unix_policy_listener(cfg) && (cfg->policy.socket_mode & S_IWOTH))
		ld_warn(ld, "policy.socket_mode %04o lets every local user connect to the policy service",
		        cfg->policy.socket_mode);
}

/* A relative list file is found beside the config file, wherever spamtrapd was started. */
static char *resolve_path(const loader *ld, const char *name)
{
	const char *slash = strrchr(ld->path, '/');
	char *path = NULL;

	if (name[0] == '/' || slash == NULL)
		return strdup(name);
	if (asprintf(&path, "%.*s/%s", (int)(slash - ld->path), ld->path, name) < 0)
		return NULL;
	return path;
}

/* Strips the line ending and surrounding blanks; NULL for blank lines and comments. */
static char *list_line(char *line)
{
	size_t n;
	char *start = line + (text_trim(line, &n) - line);

	start[n] = '\0';
	return n == 0 || *start == '#' ? NULL : start;
}

typedef int (*line_fn)(loader *ld, const char *line, char *err, size_t errlen);

static void list_file_error(loader *ld, const char *path, size_t lineno, const char *key, const char *msg)
{
	int line, col;

	if (ld_full(ld))
		return;
	ld_position(ld, ld->cur, &line, &col); /* sort it with the element naming the file */
	ld_add(ld, line, col, "%s:%zu: %s: %s", path, lineno, key, msg);
}

/* Reads one entry a line; each bad line is reported as "LISTFILE:LINE: key: message". */
static int read_list_lines(loader *ld, FILE *f, const char *path, const char *key, line_fn add)
{
	char *buf = NULL, *line, msg[MSG_MAX];
	size_t cap = 0, lineno = 0, bad = 0;
	ssize_t n;

	while (bad < LIST_FILE_MAX_ERRORS && (n = getline(&buf, &cap, f)) >= 0) {
		lineno++;
		if ((size_t)n > LIST_LINE_MAX || strlen(buf) != (size_t)n) {
			snprintf(msg, sizeof msg, "%s",
			         (size_t)n > LIST_LINE_MAX ? "line too long" : "NUL byte in line");
		} else if ((line = list_line(buf)) == NULL || add(ld, line, msg, sizeof msg) == 0) {
			continue;
		}
		list_file_error(ld, path, lineno, key, msg);
		bad++;
	}
	if (bad == LIST_FILE_MAX_ERRORS)
		list_file_error(ld, path, lineno, key, "too many errors, stopped reading");
	else if (ferror(f))
		list_file_error(ld, path, lineno + 1, key, strerror(errno));
	free(buf);
	return bad > 0 || ferror(f) ? SET_REPORTED : 0;
}

static int read_list_file(loader *ld, const char *name, const char *key, line_fn add, char *err,
                          size_t errlen)
{
	char *path = resolve_path(ld, name);
	FILE *f;
	int rc;

	if (path == NULL)
		return out_of_memory(err, errlen);
	f = fopen(path, "re");
	if (f == NULL) {
		snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
		free(path);
		return -1;
	}
	check_trust(ld, key, path);
	rc = read_list_lines(ld, f, path, key, add);
	fclose(f);
	free(path);
	return rc;
}

static int set_trap_file(loader *ld, const value *v, char *err, size_t errlen)
{
	return read_list_file(ld, v->s, "traps.files", add_trap_line, err, errlen);
}

static int set_wl_file(loader *ld, const value *v, char *err, size_t errlen)
{
	return read_list_file(ld, v->s, "whitelist.files", add_wl_line, err, errlen);
}

/* ---- greylist.clients, recipients and their files: postgrey's syntax (core/greywl.h) ---- */

/* A greylist whitelist file is read whole: postgrey's files are small, this is a sanity bound. */
#define GREYWL_FILE_MAX (16u << 20)

static greywl *ld_greywl(loader *ld)
{
	if (ld->box->greywl == NULL)
		ld->box->greywl = greywl_new();
	return ld->box->greywl;
}

/* greywl's "SOURCE: message" without the source: the loader names the key. */
static int greywl_entry_result(int rc, const char *source, char *err)
{
	size_t n = strlen(source);

	if (rc == 0)
		return 0;
	if (strncmp(err, source, n) == 0 && err[n] == ':')
		memmove(err, err + n + 1 + (err[n + 1] == ' '),
		        strlen(err + n + 1 + (err[n + 1] == ' ')) + 1);
	return -1;
}

static int set_grey_client(loader *ld, const value *v, char *err, size_t errlen)
{
	greywl *wl = ld_greywl(ld);

	if (wl == NULL)
		return out_of_memory(err, errlen);
	return greywl_entry_result(greywl_add_client(wl, v->s, "greylist.clients", err, errlen),
	                           "greylist.clients", err);
}

static int set_grey_recipient(loader *ld, const value *v, char *err, size_t errlen)
{
	greywl *wl = ld_greywl(ld);

	if (wl == NULL)
		return out_of_memory(err, errlen);
	return greywl_entry_result(greywl_add_recipient(wl, v->s, "greylist.recipients", err, errlen),
	                           "greylist.recipients", err);
}

/* The whole of a list file, NUL-terminated, into *text (the caller frees it); 0 or -1 with err. */
static int read_whole_file(loader *ld, const char *path, const char *key, char **text, size_t *len, char *err,
                           size_t errlen)
{
	FILE *f = fopen(path, "re");
	char *buf = NULL;
	size_t n = 0, cap = 0;

	if (f == NULL) {
		snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
		return -1;
	}
	check_trust(ld, key, path);
	for (;;) {
		if (cap - n < 4096) {
			char *grown =
			    cap + 65536 <= GREYWL_FILE_MAX + 65536 ? realloc(buf, cap + 65536) : NULL;

			if (grown == NULL) {
				snprintf(err, errlen, "%s: %s", path,
				         cap ? "file too large" : "out of memory");
				break;
			}
			buf = grown;
			cap += 65536;
		}
		size_t got = fread(buf + n, 1, cap - n - 1, f);

		n += got;
		if (got == 0)
			break;
	}
	if (ferror(f) && err[0] == '\0')
		snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
	fclose(f);
	if (err[0] != '\0') {
		free(buf);
		return -1;
	}
	buf[n] = '\0';
	*text = buf;
	*len = n;
	return 0;
}

static int set_grey_file(loader *ld, const value *v, bool clients, char *err, size_t errlen)
{
	const char *key = clients ? "greylist.client_files" : "greylist.recipient_files";
	char *path = resolve_path(ld, v->s), *text = NULL;
	greywl *wl = ld_greywl(ld);
	size_t len = 0;
	int rc;

	err[0] = '\0';
	if (path == NULL || wl == NULL) {
		free(path);
		return out_of_memory(err, errlen);
	}
	rc = read_whole_file(ld, path, key, &text, &len, err, errlen);
	if (rc == 0)
		rc = clients ? greywl_load_clients(wl, text, len, path, err, errlen)
		             : greywl_load_recipients(wl, text, len, path, err, errlen);
	free(text);
	free(path);
	return rc;
}

static int set_grey_client_file(loader *ld, const value *v, char *err, size_t errlen)
{
	return set_grey_file(ld, v, true, err, errlen);
}

static int set_grey_recipient_file(loader *ld, const value *v, char *err, size_t errlen)
{
	return set_grey_file(ld, v, false, err, errlen);
}

static int set_allow(loader *ld, const value *v, char *err, size_t errlen)
{
	netset **allow = &ld->cfg->policy.allow;

	if (*allow == NULL && (*allow = netset_new()) == NULL)
		return out_of_memory(err, errlen);
	return netset_add_text(*allow, v->s, err, errlen);
}

static int set_metrics_allow(loader *ld, const value *v, char *err, size_t errlen)
{
	netset **allow = &ld->cfg->metrics.allow;

	if (*allow == NULL && (*allow = netset_new()) == NULL)
		return out_of_memory(err, errlen);
	return netset_add_text(*allow, v->s, err, errlen);
}

/* store.redis.sentinels: "host:port" or "[ipv6]:port", each once. */
static int set_sentinel(loader *ld, const value *v, char *err, size_t errlen)
{
	store_config *st = &ld->cfg->store;
	char host[256];
	char **grown;
	int port;

	if (!store_redis_addr_split(v->s, host, sizeof host, &port)) {
		snprintf(err, errlen, "expected HOST:PORT or [IPV6]:PORT (port 1-65535)");
		return -1;
	}
	for (size_t i = 0; i < st->redis_nsentinels; i++) {
		if (strcmp(st->redis_sentinels[i], v->s) == 0) {
			snprintf(err, errlen, "%s is listed twice", v->s);
			return -1;
		}
	}
	grown = realloc(st->redis_sentinels, (st->redis_nsentinels + 1) * sizeof *grown);
	if (grown == NULL)
		return out_of_memory(err, errlen);
	st->redis_sentinels = grown;
	if (dup_into(&st->redis_sentinels[st->redis_nsentinels], v->s, err, errlen) < 0)
		return -1;
	st->redis_nsentinels++;
	return 0;
}

/* dns.forwarders: "ADDR" or "ADDR@PORT", as libunbound's ub_ctx_set_fwd takes them. */
static int set_forwarder(loader *ld, const value *v, char *err, size_t errlen)
{
	typeof(ld->cfg->dns) *d = &ld->cfg->dns;
	const char *at = strchr(v->s, '@');
	size_t n = at ? (size_t)(at - v->s) : strlen(v->s);
	char host[64], *end;
	addr_ip ip;
	char **grown;

	if (n >= sizeof host || (memcpy(host, v->s, n), host[n] = '\0', !addr_ip_parse(host, &ip))) {
		snprintf(err, errlen, "expected an IP address, optionally followed by @PORT");
		return -1;
	}
	if (at != NULL) {
		long port = strtol(at + 1, &end, 10);

		if (at[1] < '0' || at[1] > '9' || *end != '\0' || port < 1 || port > 65535) {
			snprintf(err, errlen, "expected @PORT (1-65535) after the address");
			return -1;
		}
	}
	if (d->nforwarders >= CONFIG_DNS_MAX_FORWARDERS) {
		snprintf(err, errlen, "at most %d forwarders", CONFIG_DNS_MAX_FORWARDERS);
		return -1;
	}
	grown = realloc(d->forwarders, (d->nforwarders + 1) * sizeof *grown);
	if (grown == NULL)
		return out_of_memory(err, errlen);
	d->forwarders = grown;
	if (dup_into(&d->forwarders[d->nforwarders], v->s, err, errlen) < 0)
		return -1;
	d->nforwarders++;
	return 0;
}

/* The placeholders of hooks.on_block, in the order of CONFIG_BLOCK_HOOK_* (config.h). */
const char *const config_block_hook_names[] = {"key",  "type",   "ttl",      "reason",
                                               "trap", "client", "queue_id", NULL};

/*
 * An argument is plain text or exactly one known placeholder: the runner
 * substitutes whole arguments only (src/hook.c), so that a value a stranger
 * wrote (a sender domain's key) is never part of a script line.
 */
static bool whole_placeholder(const char *arg)
{
	size_t n = strlen(arg);

	if (strstr(arg, "%{") == NULL)
		return true;
	if (n < 4 || strncmp(arg, "%{", 2) != 0 || arg[n - 1] != '}')
		return false;
	for (size_t j = 0; config_block_hook_names[j]; j++)
		if (strlen(config_block_hook_names[j]) == n - 3 &&
		    strncmp(arg + 2, config_block_hook_names[j], n - 3) == 0)
			return true;
	return false;
}

/* hooks.on_block: the program by its absolute path (no shell, no PATH), then its arguments. */
static int set_on_block(loader *ld, const value *v, char *err, size_t errlen)
{
	typeof(ld->cfg->hooks) *h = &ld->cfg->hooks;
	char **grown;

	if (h->non_block == 0 && v->s[0] != '/') {
		snprintf(err, errlen, "the program must be an absolute path, not \"%s\" (no shell, no PATH)",
		         v->s);
		return -1;
	}
	if (h->non_block == 0 && strstr(v->s, "%{")) {
		snprintf(err, errlen, "the program \"%s\" holds a placeholder: it must be fixed", v->s);
		return -1;
	}
	if (!whole_placeholder(v->s)) {
		snprintf(err, errlen,
		         "\"%s\": a placeholder is a whole argument, one of %%{key}, %%{type}, %%{ttl}, "
		         "%%{reason}, %%{trap}, %%{client}, %%{queue_id} (pass it to a script as \"$1\")",
		         v->s);
		return -1;
	}
	if (h->non_block >= HOOK_ARGS_MAX) {
		snprintf(err, errlen, "at most %d arguments", HOOK_ARGS_MAX);
		return -1;
	}
	grown = realloc(h->on_block, (h->non_block + 1) * sizeof *grown);
	if (grown == NULL)
		return out_of_memory(err, errlen);
	h->on_block = grown;
	if (dup_into(&h->on_block[h->non_block], v->s, err, errlen) < 0)
		return -1;
	h->non_block++;
	return 0;
}

/* In the order of the DECIDE_KEY_* bits. */
static const char *const blocklist_key_names[] = {"sender",        "client_address", "sasl_username",
                                                  "sender_domain", "helo_name",      NULL};

static int set_blocklist_key(loader *ld, const value *v, char *err, size_t errlen)
{
	char names[256];
	int64_t i;
	unsigned bit;

	if (!parse_name(blocklist_key_names, v->s, &i)) {
		names_join(blocklist_key_names, names, sizeof names);
		snprintf(err, errlen, "expected one of %s", names);
		return -1;
	}
	bit = 1u << i;
	if (ld->cfg->decide.keys & bit) {
		snprintf(err, errlen, "%s is listed twice", v->s);
		return -1;
	}
	ld->cfg->decide.keys |= bit;
	return 0;
}

static int set_reject(loader *ld, const value *v, char *err, size_t errlen)
{
	return smtp_reply_parse(v->s, &ld->cfg->decide.reject, err, errlen) ? 0 : -1;
}

static int set_facility(loader *ld, const value *v, char *err, size_t errlen)
{
	int f = log_facility_from_name(v->s);

	if (f < 0) {
		snprintf(err, errlen, "expected one of mail, daemon, user, local0 to local7");
		return -1;
	}
	ld->cfg->log.facility = f;
	return 0;
}

static int set_level(loader *ld, const value *v, char *err, size_t errlen)
{
	int level = log_level_from_name(v->s);

	if (level < 0) {
		snprintf(err, errlen, "expected one of debug, info, notice, warning, err");
		return -1;
	}
	ld->cfg->log.level = level;
	return 0;
}

/* ---- policy.listen: a list of {"address", "role"} objects ---- */

static const char *const role_names[] = {"trap", "sender", "full", NULL};

#define LISTENER_CANON_MAX 128

/*
 * Checks a policy listener address and writes a canonical form, so that
 * duplicates compare equal. TCP addresses go through addr_hostport_parse,
 * the parser policy_server.c binds with, so what passes here binds there.
 */
static int listener_canon(const char *a, char *canon, size_t canonlen, char *err, size_t errlen)
{
	const size_t unix_max = sizeof(((struct sockaddr_un *)0)->sun_path) - 1;
	char text[ADDR_NET_STRLEN], why[128];
	addr_ip ip;
	addr_net host;
	uint16_t port;

	if (strncmp(a, "unix:", 5) == 0) {
		if (a[5] == '\0' || strlen(a + 5) > unix_max) {
			snprintf(err, errlen, "a unix socket path must have 1 to %zu characters", unix_max);
			return -1;
		}
		snprintf(canon, canonlen, "%s", a);
		return 0;
	}
	if (!addr_hostport_parse(a, &ip, &port, why, sizeof why)) {
		snprintf(err, errlen, "expected IPV4:PORT, [IPV6]:PORT or unix:PATH (%s)", why);
		return -1;
	}
	host = addr_net_of(&ip, 128);
	addr_net_format(&host, text, sizeof text);
	snprintf(canon, canonlen, ip.version == 6 ? "[%s]:%u" : "%s:%u", text, (unsigned)port);
	return 0;
}

/* metrics.listen: the same forms as a policy listener, bound by the same parser. */
static int set_metrics_listen(loader *ld, const value *v, char *err, size_t errlen)
{
	char canon[LISTENER_CANON_MAX];

	if (v->null)
		return 0;
	if (listener_canon(v->s, canon, sizeof canon, err, errlen) < 0)
		return -1;
	return dup_into(&ld->cfg->metrics.listen, v->s, err, errlen);
}

static bool key_is(const char *key, size_t keylen, const char *name)
{
	return keylen == strlen(name) && memcmp(key, name, keylen) == 0;
}

static int listener_member(loader *ld, const char *key, size_t keylen, const json_t *val, jpath *p,
                           const char **address, int64_t *role)
{
	char names[64];

	if (key_is(key, keylen, "address")) {
		if (json_is_string(val)) {
			*address = json_string_value(val);
			return 0;
		}
		ld_error(ld, p, "expected a string");
	} else if (key_is(key, keylen, "role")) {
		if (json_is_string(val) && parse_name(role_names, json_string_value(val), role))
			return 0;
		names_join(role_names, names, sizeof names);
		ld_error(ld, p, "expected one of %s", names);
	} else {
		ld_error(ld, p, "unknown key (a listener has \"address\" and \"role\")");
	}
	return -1;
}

/* One listener at p; the role defaults to full. Returns 0 or -1 (reported). */
static int parse_listener(loader *ld, const json_t *obj, jpath *p, config_listener *l, char *canon)
{
	const char *key, *address = NULL;
	char msg[MSG_MAX];
	int64_t role = POLICY_ROLE_FULL;
	size_t keylen;
	json_t *val;
	int bad = 0;

	if (!json_is_object(obj)) {
		ld_error(ld, p,
		         "expected an object such as {\"address\": \"127.0.0.1:10666\", \"role\": \"trap\"}");
		return -1;
	}
	json_object_keylen_foreach((json_t *)obj, key, keylen, val)
	{
		jpath_push_key(p, key, keylen);
		bad |= listener_member(ld, key, keylen, val, p, &address, &role);
		jpath_pop(p);
	}
	if (address == NULL) {
		if (json_object_get(obj, "address") == NULL)
			ld_error(ld, p, "missing \"address\"");
		return -1;
	}
	jpath_push_key(p, "address", 7);
	if (listener_canon(address, canon, LISTENER_CANON_MAX, msg, sizeof msg) < 0) {
		ld_error(ld, p, "%s", msg);
		bad = -1;
	}
	jpath_pop(p);
	if (bad)
		return -1;
	l->role = (policy_role)role;
	l->checks = policy_role_checks(l->role);
	l->address = strdup(address);
	if (l->address == NULL)
		ld_error(ld, p, "out of memory");
	return l->address != NULL ? 0 : -1;
}

/* A listener taken so far: its canonical address and its index in the file. */
typedef struct listener_seen {
	char canon[LISTENER_CANON_MAX];
	size_t idx;
} listener_seen;

static const listener_seen *find_seen(const listener_seen *seen, size_t n, const char *canon)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(seen[i].canon, canon) == 0)
			return &seen[i];
	return NULL;
}

/* Two listeners on one address would fail at bind time, after the config was accepted. */
static void take_listener(loader *ld, const json_t *elem, jpath *p, listener_seen *seen)
{
	config *cfg = ld->cfg;
	config_listener *l = &cfg->policy.listen[cfg->policy.nlisten];
	listener_seen *mine = &seen[cfg->policy.nlisten];
	const listener_seen *dup;

	mine->idx = p->c[p->n - 1].idx;
	if (parse_listener(ld, elem, p, l, mine->canon) < 0)
		return;
	dup = find_seen(seen, cfg->policy.nlisten, mine->canon);
	if (dup == NULL) {
		cfg->policy.nlisten++;
		return;
	}
	ld_error(ld, p, "duplicate listener %s (as policy.listen[%zu])", l->address, dup->idx);
	free(l->address);
	l->address = NULL;
}

static void apply_listeners(loader *ld, const json_t *v, jpath *p)
{
	config *cfg = ld->cfg;
	size_t n = json_array_size(v);
	listener_seen *seen;

	if (json_is_null(v))
		return; /* no policy front end */
	if (!json_is_array(v)) {
		ld_error(ld, p, "expected a list of {\"address\": ..., \"role\": ...} objects, or null");
		return;
	}
	cfg->policy.listen = calloc(n + 1, sizeof *cfg->policy.listen);
	seen = calloc(n + 1, sizeof *seen);
	if (cfg->policy.listen == NULL || seen == NULL) {
		ld_error(ld, p, "out of memory");
		free(seen);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		jpath_push_index(p, i);
		take_listener(ld, json_array_get(v, i), p, seen);
		jpath_pop(p);
	}
	free(seen);
}

/* ---- ratelimit.rules: a list of rule objects (core/checks/ratelimit.h) ---- */

#define RL_DEFER_REPLY "450 4.7.1 Rate limit exceeded, try again later"
#define RL_REJECT_REPLY "550 5.7.1 Rate limit exceeded"
/* The store's bound on a bucket (store.h STORE_TTL_MS_MAX): it empties within a century. */
#define RL_BUCKET_MS_MAX ((int64_t)100 * 365 * 86400 * 1000)

/* "100/1h": a count of 1 to STORE_COUNTER_UNITS_MAX, a slash, a duration of 1s to 7d. */
static bool parse_rate(const char *s, uint64_t *count, int64_t *per)
{
	const char *slash = strchr(s, '/');
	uint64_t n = 0;

	if (slash == NULL || slash == s)
		return false;
	for (const char *p = s; p < slash; p++) {
		if (!isdigit((unsigned char)*p) || n > 1000000000)
			return false;
		n = n * 10 + (uint64_t)(*p - '0');
	}
	if (n < 1 || n > 1000000000 || !config_parse_duration(slash + 1, per) || *per < 1 ||
	    *per > (int64_t)7 * 86400)
		return false;
	*count = n;
	return true;
}

/* An int member within [lo, hi]. */
static bool rule_int(const json_t *val, int64_t lo, int64_t hi, int64_t *out)
{
	if (!json_is_integer(val) || json_integer_value(val) < lo || json_integer_value(val) > hi)
		return false;
	*out = json_integer_value(val);
	return true;
}

static bool rule_enum(const json_t *val, const char *const *names, int *out)
{
	int64_t i;

	if (!json_is_string(val) || !parse_name(names, json_string_value(val), &i))
		return false;
	*out = (int)i;
	return true;
}

/* One member of a rule: 0, or -1 with the error in msg. */
static int rule_member(const char *key, size_t keylen, const json_t *val, ratelimit_rule *r,
                       const char **reply, bool *burst_set, char *msg, size_t msglen)
{
	char names[96];
	int64_t n;
	int e;

	if (key_is(key, keylen, "name")) {
		if (json_is_string(val) && ratelimit_name_ok(json_string_value(val))) {
			snprintf(r->name, sizeof(r->name), "%s", json_string_value(val));
			return 0;
		}
		snprintf(msg, msglen, "expected a name of 1 to %d characters of [a-z0-9_-]",
		         RATELIMIT_NAME_MAX - 1);
	} else if (key_is(key, keylen, "key") || key_is(key, keylen, "unit") ||
	           key_is(key, keylen, "action")) {
		const char *const *list = key[0] == 'k'   ? ratelimit_key_names
		                          : key[0] == 'u' ? ratelimit_unit_names
		                                          : ratelimit_action_names;

		if (rule_enum(val, list, &e)) {
			if (key[0] == 'k')
				r->key = (ratelimit_key)e;
			else if (key[0] == 'u')
				r->unit = (ratelimit_unit)e;
			else
				r->action = (ratelimit_action)e;
			return 0;
		}
		names_join(list, names, sizeof names);
		snprintf(msg, msglen, "expected one of %s", names);
	} else if (key_is(key, keylen, "rate")) {
		if (json_is_string(val) && parse_rate(json_string_value(val), &r->count, &r->per))
			return 0;
		snprintf(msg, msglen,
		         "expected \"COUNT/DURATION\" such as \"100/1h\" (1 to 1000000000 per 1s to 7d)");
	} else if (key_is(key, keylen, "burst")) {
		if (rule_int(val, 1, 1000000000, &n)) {
			r->burst = (uint64_t)n;
			*burst_set = true;
			return 0;
		}
		snprintf(msg, msglen, "expected an integer from 1 to 1000000000");
	} else if (key_is(key, keylen, "reply")) {
		if (json_is_string(val)) {
			*reply = json_string_value(val);
			return 0;
		}
		snprintf(msg, msglen, "expected a string such as \"%s\"", RL_DEFER_REPLY);
	} else if (key_is(key, keylen, "unauthenticated")) {
		if (json_is_boolean(val)) {
			r->unauthenticated = json_is_true(val);
			return 0;
		}
		snprintf(msg, msglen, "expected true or false");
	} else if (key_is(key, keylen, "ipv4_prefix") || key_is(key, keylen, "ipv6_prefix")) {
		bool v4 = key[3] == '4';

		if (rule_int(val, v4 ? 8 : 16, v4 ? 32 : 128, &n)) {
			*(v4 ? &r->ipv4_prefix : &r->ipv6_prefix) = (int)n;
			return 0;
		}
		snprintf(msg, msglen, "expected an integer from %d to %d", v4 ? 8 : 16, v4 ? 32 : 128);
	} else {
		snprintf(
		    msg, msglen,
		    "unknown key (a rule has name, key, rate, burst, unit, action, reply, unauthenticated, "
		    "ipv4_prefix, ipv6_prefix)");
	}
	return -1;
}

/* What single members cannot say: required members, the reply against the action, key-only members. */
static void rule_finish(loader *ld, const json_t *obj, jpath *p, ratelimit_rule *r, const char *reply,
                        bool burst_set, int *bad)
{
	static const char *const required[] = {"name", "key", "rate"};
	char why[256];

	for (size_t i = 0; i < sizeof required / sizeof required[0]; i++)
		if (json_object_get(obj, required[i]) == NULL) {
			ld_error(ld, p, "missing \"%s\"", required[i]);
			*bad = -1;
		}
	if (*bad)
		return;
	if (!burst_set)
		r->burst = r->count;
	/*
	 * An account's rule caps what a stolen password sends: by message, one
	 * message to a thousand recipients would count once.
	 */
	if (json_object_get(obj, "unit") == NULL && r->key == RATELIMIT_KEY_SASL_USERNAME)
		r->unit = RATELIMIT_UNIT_RECIPIENT;
	/* The store's bound: a bucket takes at most a century to empty. */
	if ((r->burst + 1) > (uint64_t)(RL_BUCKET_MS_MAX / ratelimit_emission_ms(r))) {
		jpath_push_key(p, "burst", 5);
		ld_error(ld, p, "too large for the rate");
		jpath_pop(p);
		*bad = -1;
	}
	if (r->unauthenticated && r->key != RATELIMIT_KEY_SENDER) {
		jpath_push_key(p, "unauthenticated", 15);
		ld_error(ld, p, "only a rule with key sender has it");
		jpath_pop(p);
		*bad = -1;
	}
	if ((json_object_get(obj, "ipv4_prefix") || json_object_get(obj, "ipv6_prefix")) &&
	    r->key != RATELIMIT_KEY_CLIENT_ADDRESS) {
		ld_error(ld, p, "ipv4_prefix and ipv6_prefix are for a rule with key client_address");
		*bad = -1;
	}
	if (reply == NULL)
		reply = r->action == RATELIMIT_ACTION_REJECT ? RL_REJECT_REPLY : RL_DEFER_REPLY;
	jpath_push_key(p, "reply", 5);
	if (!smtp_reply_parse(reply, &r->reply, why, sizeof why)) {
		ld_error(ld, p, "%s", why);
		*bad = -1;
	} else if (r->reply.code[0] != (r->action == RATELIMIT_ACTION_REJECT ? '5' : '4')) {
		ld_error(ld, p, "action %s needs a %s reply, not %s", ratelimit_action_names[r->action],
		         r->action == RATELIMIT_ACTION_REJECT ? "5xx" : "4xx", r->reply.code);
		*bad = -1;
	}
	jpath_pop(p);
}

/* One rule at p into *r; 0 or -1 (reported). */
static int parse_rule(loader *ld, const json_t *obj, jpath *p, ratelimit_rule *r)
{
	const char *key, *reply = NULL;
	char msg[MSG_MAX];
	bool burst_set = false;
	size_t keylen;
	json_t *val;
	int bad = 0;

	if (!json_is_object(obj)) {
		ld_error(ld, p,
		         "expected an object such as {\"name\": \"per-account\", \"key\": \"sasl_username\", "
		         "\"rate\": \"100/1h\"}");
		return -1;
	}
	*r = (ratelimit_rule){.ipv4_prefix = 32, .ipv6_prefix = 64};
	json_object_keylen_foreach((json_t *)obj, key, keylen, val)
	{
		jpath_push_key(p, key, keylen);
		if (rule_member(key, keylen, val, r, &reply, &burst_set, msg, sizeof msg) < 0) {
			ld_error(ld, p, "%s", msg);
			bad = -1;
		}
		jpath_pop(p);
	}
	rule_finish(ld, obj, p, r, reply, burst_set, &bad);
	return bad;
}

static void apply_rate_rules(loader *ld, const json_t *v, jpath *p)
{
	ratelimit_conf *rc = ld->box->check_conf[CHECK_ID_RATELIMIT];

	if (!json_is_array(v)) {
		ld_error(ld, p, "expected a list of rule objects");
		return;
	}
	if (json_array_size(v) > RATELIMIT_RULES_MAX) {
		ld_error(ld, p, "at most %d rules", RATELIMIT_RULES_MAX);
		return;
	}
	for (size_t i = 0; i < json_array_size(v) && rc; i++) {
		ratelimit_rule *r = &rc->rules[rc->nrules];

		jpath_push_index(p, i);
		if (parse_rule(ld, json_array_get(v, i), p, r) == 0) {
			bool dup = false;

			for (size_t j = 0; j < rc->nrules; j++)
				dup |= strcmp(rc->rules[j].name, r->name) == 0;
			if (dup)
				ld_error(ld, p, "duplicate rule name \"%s\"", r->name);
			else
				rc->nrules++;
		}
		jpath_pop(p);
	}
}

/* ---- exports: files the daemon keeps current (src/exporter.c) ---- */

/* The longest exports[].interval: the file is also refreshed at least hourly. */
#define EXPORT_INTERVAL_MAX 3600

/* An absolute path whose directory exists now: a typo is an error at start-up, not a silent export. */
static int export_path_ok(const char *path, char *msg, size_t msglen)
{
	const char *slash = strrchr(path, '/');
	char dir[PATH_MAX];
	struct stat sb;
	int failed;

	if (path[0] != '/' || slash[1] == '\0' || strlen(path) >= sizeof(dir)) {
		snprintf(msg, msglen, "expected the absolute path of a file");
		return -1;
	}
	snprintf(dir, sizeof(dir), "%.*s", slash == path ? 1 : (int)(slash - path), path);
	failed = stat(dir, &sb) != 0 ? errno : 0;
	if (failed || !S_ISDIR(sb.st_mode)) {
		snprintf(msg, msglen, "directory %.300s: %s", dir,
		         failed ? strerror(failed) : "not a directory");
		return -1;
	}
	return 0;
}

/* exports[i].keys: a list of names into EXPORT_KEY_* bits. */
static int export_keys_member(const json_t *val, config_export *e, char *msg, size_t msglen)
{
	char list[256] = "", why[200];
	size_t o = 0;

	if (!json_is_array(val) || json_array_size(val) == 0) {
		snprintf(msg, msglen, "expected a list such as [\"client\"]");
		return -1;
	}
	for (size_t i = 0; i < json_array_size(val); i++) {
		const char *name = json_string_value(json_array_get(val, i));
		int n;

		if (!name || strchr(name, ',')) {
			snprintf(msg, msglen,
			         "expected a list of key kinds (sender, domain, client, sasl, helo)");
			return -1;
		}
		n = snprintf(list + o, sizeof(list) - o, "%s%s", o ? "," : "", name);
		if (n < 0 || (size_t)n >= sizeof(list) - o) {
			snprintf(msg, msglen, "too long");
			return -1;
		}
		o += (size_t)n;
	}
	if (!export_keys_parse(list, &e->keys, why, sizeof(why))) {
		snprintf(msg, msglen, "%s", why);
		return -1;
	}
	return 0;
}

/* One member of an export: 0, or -1 with the error in msg. */
static int export_member(const char *key, size_t keylen, const json_t *val, config_export *e, char *msg,
                         size_t msglen)
{
	const char *s = json_string_value(val);

	if (key_is(key, keylen, "format")) {
		if (s && export_format_parse(s, &e->format))
			return 0;
		snprintf(msg, msglen, "expected one of nft, ipset, pf, postfix, cidr, rbldnsd");
	} else if (key_is(key, keylen, "path")) {
		if (!s) {
			snprintf(msg, msglen, "expected the absolute path of a file");
			return -1;
		}
		if (export_path_ok(s, msg, msglen) < 0)
			return -1;
		free(e->path);
		return dup_into(&e->path, s, msg, msglen);
	} else if (key_is(key, keylen, "interval")) {
		if (s && config_parse_duration(s, &e->interval) && e->interval >= 1 &&
		    e->interval <= EXPORT_INTERVAL_MAX)
			return 0;
		snprintf(msg, msglen, "expected a duration from 1s to 1h, such as \"10s\"");
	} else if (key_is(key, keylen, "keys")) {
		return export_keys_member(val, e, msg, msglen);
	} else {
		snprintf(msg, msglen, "unknown key (format, path, interval, keys)");
	}
	return -1;
}

/* One export at p into *e (keys defaulted from its format); 0 or -1 (reported). */
static int parse_export(loader *ld, const json_t *obj, jpath *p, config_export *e)
{
	const char *key;
	char msg[MSG_MAX];
	size_t keylen;
	json_t *val;
	int bad = 0;

	if (!json_is_object(obj)) {
		ld_error(ld, p,
		         "expected an object such as {\"format\": \"nft\", \"path\": "
		         "\"/var/lib/spamtrapd/exports/blocklist.nft\", \"interval\": \"10s\"}");
		return -1;
	}
	*e = (config_export){.interval = 10};
	if (!json_is_string(json_object_get(obj, "format")) ||
	    !export_format_parse(json_string_value(json_object_get(obj, "format")), &e->format))
		e->format = EXPORT_NFT; /* reported below, or missing */
	e->keys = export_keys_default(e->format);
	json_object_keylen_foreach((json_t *)obj, key, keylen, val)
	{
		jpath_push_key(p, key, keylen);
		if (export_member(key, keylen, val, e, msg, sizeof msg) < 0) {
			ld_error(ld, p, "%s", msg);
			bad = -1;
		}
		jpath_pop(p);
	}
	if (!json_object_get(obj, "format") || !json_object_get(obj, "path")) {
		ld_error(ld, p, "missing \"%s\"", json_object_get(obj, "format") ? "path" : "format");
		bad = -1;
	} else if (!bad && (e->keys & ~export_keys_allowed(e->format))) {
		ld_error(ld, p, "format %s holds %s only", export_format_name(e->format),
		         e->format == EXPORT_RBLDNSD ? "client and domain keys" : "client keys");
		bad = -1;
	}
	return bad;
}

static void apply_exports(loader *ld, const json_t *v, jpath *p)
{
	config *cfg = ld->cfg;
	size_t n = json_array_size(v);

	if (!json_is_array(v)) {
		ld_error(ld, p,
		         "expected a list of {\"format\": ..., \"path\": ..., \"interval\": ...} objects");
		return;
	}
	if (n > CONFIG_EXPORTS_MAX) {
		ld_error(ld, p, "at most %d exports", CONFIG_EXPORTS_MAX);
		return;
	}
	if (n == 0 || !(cfg->exports = calloc(n, sizeof *cfg->exports))) {
		if (n)
			ld_error(ld, p, "out of memory");
		return;
	}
	for (size_t i = 0; i < n; i++) {
		config_export *e = &cfg->exports[cfg->nexports];

		jpath_push_index(p, i);
		if (parse_export(ld, json_array_get(v, i), p, e) < 0) {
			free(e->path);
		} else {
			bool dup = false;

			for (size_t j = 0; j < cfg->nexports; j++)
				dup |= strcmp(cfg->exports[j].path, e->path) == 0;
			if (dup) {
				ld_error(ld, p, "path %s is another export's too", e->path);
				free(e->path);
			} else {
				cfg->nexports++;
			}
		}
		jpath_pop(p);
	}
}

/* ---- the table ---- */

static const char *const mode_names[] = {"enforce", "dry-run", NULL};
static const char *const check_mode_names[] = {"off", "shadow", "enforce", NULL}; /* check_mode order */
static const char *const on_error_names[] = {"accept", "tempfail", NULL};
static const char *const backend_names[] = {"sqlite", "redis", NULL};
static const char *const action_names[] = {"discard", "reject", "accept", NULL};
static const char *const on_mixed_names[] = {"deliver-others", "discard-all", NULL};
static const char *const null_sender_names[] = {"ignore", "client", NULL};
static const char *const sender_requires_names[] = {"any", "spf-pass", NULL}; /* sender_requires_policy */
static const char *const target_names[] = {"syslog", "stderr", NULL};

#define J(...) #__VA_ARGS__ /* a default written as JSON */
#define AT(member) .off = offsetof(config, member), .size = sizeof(((config *)0)->member)
#define DAYS(n) ((int64_t)(n)*86400)

/*
 * Every key of spamtrapd.json (SPEC.md "Config", docs/spamtrapd.json.5.md).
 * Order matters only where a set function uses an earlier key:
 * traps.recipient_delimiter before the traps, whitelist.include_subdomains
 * before the whitelist entries.
 */
static const key_def schema[] = {
    {"user", T_STRING, J(null), K_NULLABLE | K_NONEMPTY, .max = 64, AT(user)},
    {"mode", T_ENUM, J("enforce"), .names = mode_names, AT(decide.dry_run)},

    {"milter.listen", T_STRING, J(null), K_NULLABLE, .set = set_milter_listen},
    {"milter.socket_owner", T_STRING, J(null), K_NULLABLE | K_NONEMPTY, .max = 64, AT(milter.socket_owner)},
    {"milter.socket_group", T_STRING, J(null), K_NULLABLE | K_NONEMPTY, .max = 64, AT(milter.socket_group)},
    {"milter.socket_mode", T_STRING, J(null), K_NULLABLE, .set = set_milter_socket_mode},
    {"milter.timeout", T_DURATION, J("7210s"), .min = 1, .max = 86400, AT(milter.timeout)},

    {"policy.listen", T_LISTENERS, J([
	     {"address" : "127.0.0.1:10666", "role" : "trap"},
	     {"address" : "127.0.0.1:10667", "role" : "sender"}
     ]),
     .flags = K_NULLABLE},
    {"policy.allow", T_LIST, J([ "127.0.0.0/8", "::1" ]), .set = set_allow},
    {"policy.max_connections", T_INT, J(1000), .min = 1, .max = 100000, AT(policy.max_connections)},
    {"policy.idle_timeout", T_DURATION, J("330s"), .min = 1, .max = 86400, AT(policy.idle_timeout)},
    {"policy.max_line", T_INT, J(4096), .min = 256, .max = 65536, AT(policy.max_line)},
    {"policy.max_attributes", T_INT, J(64), .min = 8, .max = 1024, AT(policy.max_attributes)},
    {"policy.threads", T_INT, J(0), .min = 0, .max = 64, AT(policy.threads)},
    {"policy.socket_owner", T_STRING, J(null), K_NULLABLE | K_NONEMPTY, .max = 64, AT(policy.socket_owner)},
    {"policy.socket_group", T_STRING, J(null), K_NULLABLE | K_NONEMPTY, .max = 64, AT(policy.socket_group)},
    {"policy.socket_mode", T_STRING, J("0660"), K_NULLABLE, .set = set_policy_socket_mode},

    {"store.backend", T_ENUM, J("sqlite"), .names = backend_names, AT(store.backend)},
    {"store.sqlite.path", T_STRING, J("/var/lib/spamtrapd/spamtrapd.db"), K_NONEMPTY, AT(store.sqlite_path)},
    {"store.redis.host", T_STRING, J("127.0.0.1"), K_NONEMPTY, .max = 255, AT(store.redis_host)},
    {"store.redis.port", T_INT, J(6379), .min = 1, .max = 65535, AT(store.redis_port)},
    {"store.redis.socket", T_STRING, J(null), K_NULLABLE | K_NONEMPTY, AT(store.redis_socket)},
    {"store.redis.db", T_INT, J(0), .min = 0, .max = INT32_MAX, AT(store.redis_db)},
    {"store.redis.password", T_STRING, J(null), K_NULLABLE | K_NONEMPTY, AT(store.redis_password)},
    {"store.redis.prefix", T_STRING, J("spamtrapd:"), .max = 64, AT(store.redis_prefix)},
    {"store.redis.connect_timeout", T_INT, J(1000), .min = 1, .max = 600000,
     AT(store.redis_connect_timeout_ms)},
    {"store.redis.command_timeout", T_INT, J(500), .min = 1, .max = 600000,
     AT(store.redis_command_timeout_ms)},
    {"store.redis.local_view", T_BOOL, J(true), AT(store.redis_local_view)},
    {"store.redis.local_view_keys", T_INT, J(2000000), .min = 1000, .max = 100000000,
     AT(store.redis_local_view_keys)},
    {"store.redis.sentinels", T_LIST, J([]), .set = set_sentinel},
    {"store.redis.sentinel_master", T_STRING, J("mymaster"), K_NONEMPTY, .max = 128,
     AT(store.redis_sentinel_master)},
    {"store.on_error", T_ENUM, J("accept"), .names = on_error_names, AT(decide.on_error_tempfail)},
    {"store.purge_interval", T_DURATION, J("10m"), .min = 1, .max = DAYS(7), AT(purge_interval)},

    {"traps.recipient_delimiter", T_STRING, J("+"), .max = 16, .set = set_delimiter},
    {"traps.addresses", T_LIST, J([]), .set = set_trap_address},
    {"traps.domains", T_LIST, J([]), .set = set_trap_domain},
    {"traps.patterns", T_LIST, J([]), .set = set_trap_pattern},
    {"traps.files", T_LIST, J([]), .set = set_trap_file},
    {"traps.action", T_ENUM, J("discard"), .names = action_names, AT(decide.action)},
    {"traps.on_mixed", T_ENUM, J("deliver-others"), .names = on_mixed_names, AT(decide.on_mixed)},
    /* Bounces come from innocent servers (backscatter): by default they record nothing. */
    {"traps.null_sender", T_ENUM, J("ignore"), .names = null_sender_names, AT(decide.null_sender)},

    {"blocklist.keys", T_LIST, J([ "sender", "client_address" ]), K_NONEMPTY, .set = set_blocklist_key},
    {"blocklist.ttl", T_DURATION, J("24h"), .min = 1, .max = CONFIG_TTL_MAX, AT(decide.ttl)},
    /* Shorter prefixes would let one trap hit block a large part of the Internet. */
    {"blocklist.ipv4_prefix", T_INT, J(32), .min = 8, .max = 32, AT(decide.ipv4_prefix)},
    {"blocklist.ipv6_prefix", T_INT, J(64), .min = 16, .max = 128, AT(decide.ipv6_prefix)},
    /* One forged sender must not list a whole domain (docs/security.md). */
    {"blocklist.sender_domain_min_networks", T_INT, J(3), .min = 1, .max = 1000,
     AT(decide.domain_min_networks)},
    /* Who may be blocklisted by a forged MAIL FROM (docs/spf.md). */
    {"blocklist.sender_requires", T_ENUM, J("any"), .names = sender_requires_names,
     AT(decide.sender_requires)},
    {"blocklist.reject", T_STRING, J("550 5.7.1 Sender is blocklisted after mail to a spamtrap"), K_NONEMPTY,
     .max = 500, .set = set_reject},

    {"whitelist.include_subdomains", T_BOOL, J(false), .set = set_wl_subdomains},
    {"whitelist.domains", T_LIST, J([]), .set = set_wl_domain},
    {"whitelist.addresses", T_LIST, J([]), .set = set_wl_address},
    {"whitelist.networks", T_LIST, J([]), .set = set_wl_network},
    {"whitelist.files", T_LIST, J([]), .set = set_wl_file},

    /* The greylist's whitelists; its other keys are the check's own (core/checks/greylist.c). */
    {"greylist.clients", T_LIST, J([]), .set = set_grey_client},
    {"greylist.recipients", T_LIST, J([]), .set = set_grey_recipient},
    {"greylist.client_files", T_LIST, J([]), .set = set_grey_client_file},
    {"greylist.recipient_files", T_LIST, J([]), .set = set_grey_recipient_file},

    /* The ratelimit's rules; its other keys are the check's own (core/checks/ratelimit.c). */
    {"ratelimit.rules", T_RATE_RULES, J([]), .flags = 0},

    /* The DNS checks' resolver (src/dns/, docs/spamtrapd.json.5.md "dns"). */
    {"dns.forwarders", T_LIST, J([]), .set = set_forwarder},
    {"dns.timeout", T_DURATION, J("3s"), .min = 1, .max = 60, AT(dns.timeout)},
    {"dns.max_inflight", T_INT, J(1000), .min = 1, .max = 100000, AT(dns.max_inflight)},
    {"dns.cache_size", T_INT, J(8), .min = 1, .max = 1024, AT(dns.cache_size)},

    /* The Prometheus endpoint, off by default (docs/metrics.md). */
    {"metrics.listen", T_STRING, J(null), K_NULLABLE, .set = set_metrics_listen},
    {"metrics.allow", T_LIST, J([ "127.0.0.0/8", "::1" ]), .set = set_metrics_allow},
    {"metrics.entries_refresh", T_DURATION, J("1m"), .min = 1, .max = DAYS(1), AT(metrics.entries_refresh)},

    /* Programs run for new blocklist entries (docs/spamtrapd.json.5.md "hooks"). */
    {"hooks.on_block", T_LIST, J([]), .set = set_on_block},
    {"hooks.timeout", T_DURATION, J("10s"), .min = 1, .max = 3600, AT(hooks.timeout)},
    /* Files the daemon keeps current (docs/spamtrapd.json.5.md "exports"). */
    {"exports", T_EXPORTS, J([]), .flags = 0},

    {"log.target", T_ENUM, J("syslog"), .names = target_names, AT(log.target)},
    {"log.facility", T_STRING, J("mail"), .set = set_facility},
    {"log.level", T_STRING, J("info"), .set = set_level},
};

#define NSCHEMA (sizeof schema / sizeof schema[0])

/*
 * The checks' own keys (core/check.h), after the table above: SECTION.mode
 * for each check that has a mode, then the keys each check declares. Made
 * once from checks_all[]; a check brings its config section with it.
 */
static struct {
	pthread_once_t once;
	key_def *keys;
	size_t n;
	char paths[CHECK_COUNT * 16][96];
} section_keys = {.once = PTHREAD_ONCE_INIT};

static const key_type check_key_types[] = {
    [CHECK_KEY_INT] = T_INT,       [CHECK_KEY_DURATION] = T_DURATION, [CHECK_KEY_BOOL] = T_BOOL,
    [CHECK_KEY_STRING] = T_STRING, [CHECK_KEY_ENUM] = T_ENUM,         [CHECK_KEY_LIST] = T_LIST,
    [CHECK_KEY_MAP] = T_MAP,
};

static const char *const check_mode_defaults[] = {
    [CHECK_MODE_OFF] = "\"off\"", [CHECK_MODE_SHADOW] = "\"shadow\"", [CHECK_MODE_ENFORCE] = "\"enforce\""};

static const char *check_key_path(size_t n, const char *section, const char *name)
{
	snprintf(section_keys.paths[n], sizeof(section_keys.paths[n]), "%s.%s", section, name);
	return section_keys.paths[n];
}

static void make_check_keys(void)
{
	size_t room = sizeof(section_keys.paths) / sizeof(section_keys.paths[0]), n = 0;

	section_keys.keys = calloc(room, sizeof(*section_keys.keys));
	if (!section_keys.keys)
		return;
	for (int i = 0; i < CHECK_COUNT; i++) {
		const check_def *d = checks_all[i];

		if (!d->no_mode && n < room) {
			section_keys.keys[n] = (key_def){.path = check_key_path(n, d->name, "mode"),
			                                 .type = T_ENUM,
			                                 .def = check_mode_defaults[d->default_mode],
			                                 .names = check_mode_names,
			                                 AT(modes[i])};
			n++;
		}
		for (size_t j = 0; j < d->nkeys && n < room; j++, n++) {
			const check_key *ck = &d->keys[j];

			section_keys.keys[n] = (key_def){.path = check_key_path(n, d->name, ck->name),
			                                 .type = check_key_types[ck->type],
			                                 .def = ck->def,
			                                 .flags = ck->nullable ? K_NULLABLE : 0,
			                                 .min = ck->min,
			                                 .max = ck->max,
			                                 .names = ck->names,
			                                 .off = ck->off,
			                                 .size = ck->size,
			                                 .owner = i + 1};
		}
	}
	section_keys.n = n;
}

/* Every key: the table above, then the checks' own. */
static size_t nkeys_all(void)
{
	pthread_once(&section_keys.once, make_check_keys);
	return NSCHEMA + section_keys.n;
}

static const key_def *key_at(size_t i)
{
	return i < NSCHEMA ? &schema[i] : &section_keys.keys[i - NSCHEMA];
}

typedef enum { SCHEMA_NONE, SCHEMA_LEAF, SCHEMA_SECTION } schema_kind;

static schema_kind schema_find(const char *dotted, const key_def **leaf)
{
	size_t n = strlen(dotted);
	schema_kind kind = SCHEMA_NONE;

	for (size_t i = 0, all = nkeys_all(); i < all; i++) {
		const key_def *k = key_at(i);

		if (strncmp(k->path, dotted, n) != 0)
			continue;
		if (k->path[n] == '\0') {
			if (leaf != NULL)
				*leaf = k;
			return SCHEMA_LEAF;
		}
		if (k->path[n] == '.')
			kind = SCHEMA_SECTION;
	}
	return kind;
}

/* ---- applying the schema to the tree ---- */

static void call_set(loader *ld, const key_def *k, const value *v, const jpath *p)
{
	char msg[MSG_MAX] = "";
	int rc;

	ld->cur = p;
	rc = k->set != NULL ? k->set(ld, v, msg, sizeof msg) : store_field(ld, k, v, msg, sizeof msg);
	ld->cur = NULL;
	if (rc == -1)
		ld_error(ld, p, "%s", msg[0] ? msg : "invalid value");
}

static void apply_list(loader *ld, const key_def *k, const json_t *j, jpath *p)
{
	if (!json_is_array(j)) {
		ld_error(ld, p, "expected a list of strings");
		return;
	}
	if ((k->flags & K_NONEMPTY) && json_array_size(j) == 0) {
		ld_error(ld, p, "must not be empty");
		return;
	}
	for (size_t i = 0; i < json_array_size(j); i++) {
		const json_t *e = json_array_get(j, i);
		value v = {.s = json_string_value(e)};

		jpath_push_index(p, i);
		if (!json_is_string(e))
			ld_error(ld, p, "expected a string");
		else
			call_set(ld, k, &v, p);
		jpath_pop(p);
	}
}

/* A CHECK_KEY_MAP: each member's name, then its value, into the check_strlist (check.h). */
static void apply_map(loader *ld, const key_def *k, const json_t *j, jpath *p)
{
	const char *key;
	size_t keylen;
	json_t *e;

	if (!json_is_object(j)) {
		ld_error(ld, p, "expected an object of strings");
		return;
	}
	json_object_keylen_foreach((json_t *)j, key, keylen, e)
	{
		value name = {.s = key}, v = {.s = json_string_value(e)};

		jpath_push_key(p, key, keylen);
		if (!json_is_string(e) || memchr(key, '\0', keylen) != NULL) {
			ld_error(ld, p, "expected a string");
		} else {
			call_set(ld, k, &name, p);
			call_set(ld, k, &v, p);
		}
		jpath_pop(p);
	}
}

static void apply_value(loader *ld, const key_def *k, const json_t *j, jpath *p)
{
	char msg[MSG_MAX];
	value v = {0};

	if (k->type == T_LISTENERS) {
		apply_listeners(ld, j, p);
	} else if (k->type == T_RATE_RULES) {
		apply_rate_rules(ld, j, p);
	} else if (k->type == T_EXPORTS) {
		apply_exports(ld, j, p);
	} else if (k->type == T_MAP) {
		apply_map(ld, k, j, p);
	} else if (k->type == T_LIST && !(json_is_null(j) && (k->flags & K_NULLABLE))) {
		apply_list(ld, k, j, p);
	} else if (json_is_null(j) && (k->flags & K_NULLABLE)) {
		v.null = true;
		call_set(ld, k, &v, p);
	} else if (parse_scalar(k, j, &v, msg, sizeof msg) < 0) {
		ld_error(ld, p, "%s", msg);
	} else {
		call_set(ld, k, &v, p);
	}
}

/* The value in the tree, or the built-in default when the key is absent. */
static void apply_key(loader *ld, const key_def *k, json_t *root)
{
	jpath p;
	json_t *j, *def = NULL;

	jpath_from_dotted(&p, k->path);
	j = tree_get(root, &p);
	if (j == NULL) {
		j = def = json_loads(k->def, JSON_DECODE_ANY, NULL);
		ld->in_default = true;
	}
	if (j != NULL)
		apply_value(ld, k, j, &p);
	else
		ld_error(ld, &p, "cannot read the built-in default");
	ld->in_default = false;
	json_decref(def);
}

/* ---- unknown keys ---- */

/* Optimal string alignment distance: a swap of two neighbours ("mdoe") counts as one typo. */
static size_t edit_distance(const char *a, size_t alen, const char *b, size_t blen)
{
	unsigned char d[33][33];

	if (alen >= 33 || blen >= 33)
		return SIZE_MAX;
	for (size_t i = 0; i <= alen; i++)
		d[i][0] = (unsigned char)i;
	for (size_t j = 0; j <= blen; j++)
		d[0][j] = (unsigned char)j;
	for (size_t i = 1; i <= alen; i++) {
		for (size_t j = 1; j <= blen; j++) {
			unsigned best = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
			if (d[i - 1][j] + 1u < best)
				best = d[i - 1][j] + 1u;
			if (d[i][j - 1] + 1u < best)
				best = d[i][j - 1] + 1u;
			if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
			    d[i - 2][j - 2] + 1u < best)
				best = d[i - 2][j - 2] + 1u;
			d[i][j] = (unsigned char)best;
		}
	}
	return d[alen][blen];
}

/* A known key a typo or two away from name, as " (did you mean traps.domains?)", or "". */
static const char *suggest(const char *name, char *buf, size_t buflen)
{
	const char *dot = strrchr(name, '.'), *last = dot != NULL ? dot + 1 : name;
	size_t plen = (size_t)(last - name), lastlen = strlen(last);

	for (size_t i = 0, all = nkeys_all(); i < all; i++) {
		const char *cand = key_at(i)->path + plen;
		size_t clen;

		if (strncmp(key_at(i)->path, name, plen) != 0) /* also: path has plen characters */
			continue;
		clen = strcspn(cand, ".");
		if (edit_distance(last, lastlen, cand, clen) <= (clen <= 4 ? 1u : 2u)) {
			snprintf(buf, buflen, " (did you mean %.*s%.*s?)", (int)plen, name, (int)clen, cand);
			return buf;
		}
	}
	return "";
}

static void check_keys(loader *ld, json_t *obj, jpath *p)
{
	const char *key;
	size_t keylen;
	json_t *val;
	char name[KEY_TEXT_MAX], hint[KEY_TEXT_MAX + 32];

	json_object_keylen_foreach(obj, key, keylen, val)
	{
		schema_kind kind = SCHEMA_NONE;

		jpath_push_key(p, key, keylen);
		jpath_format(p, name, sizeof name);
		/* "traps.action" as one key would find traps/action in the schema. */
		if (memchr(key, '.', keylen) == NULL)
			kind = schema_find(name, NULL);
		if (kind == SCHEMA_NONE)
			ld_error(ld, p, "unknown key%s", suggest(name, hint, sizeof hint));
		else if (kind == SCHEMA_SECTION && !json_is_object(val))
			ld_error(ld, p, "expected an object");
		else if (kind == SCHEMA_SECTION)
			check_keys(ld, val, p);
		jpath_pop(p);
	}
}

/* ---- overrides: "-o dotted.key=value" ---- */

/* JSON when it parses, else the text as a string; a string key keeps "-o x=123" a string. */
static json_t *override_value(const key_def *leaf, const char *text)
{
	json_t *v = json_loads(text, JSON_DECODE_ANY, NULL);

	if (v == NULL ||
	    (leaf != NULL && leaf->type == T_STRING && (json_is_number(v) || json_is_boolean(v)))) {
		json_decref(v);
		v = json_string(text);
	}
	return v;
}

/* Sets root[dotted] = v (stolen), making missing sections; -1 when a section in the way is not an object. */
static int tree_set(json_t *root, const char *dotted, json_t *v)
{
	json_t *obj = root, *child;
	const char *dot;

	while ((dot = strchr(dotted, '.')) != NULL) {
		child = json_object_getn(obj, dotted, (size_t)(dot - dotted));
		if (child == NULL) {
			child = json_object();
			if (child == NULL ||
			    json_object_setn_new(obj, dotted, (size_t)(dot - dotted), child) < 0)
				break;
		} else if (!json_is_object(child)) {
			break;
		}
		obj = child;
		dotted = dot + 1;
	}
	if (dot != NULL) {
		json_decref(v);
		return -1;
	}
	return json_object_set_new(obj, dotted, v);
}

static void apply_override(loader *ld, json_t *root, const char *arg)
{
	const char *eq = strchr(arg, '=');
	const key_def *leaf = NULL;
	char hint[KEY_TEXT_MAX + 32], *key;
	json_t *v;

	if (eq == NULL || eq == arg) {
		ld_add(ld, 0, 0, "-o %s: expected KEY=VALUE", arg);
		return;
	}
	key = strndup(arg, (size_t)(eq - arg));
	if (key == NULL) {
		ld->lost = true;
		return;
	}
	if (schema_find(key, &leaf) == SCHEMA_NONE) {
		ld_add(ld, 0, 0, "-o %s: unknown key%s", key, suggest(key, hint, sizeof hint));
		free(key);
	} else if ((v = override_value(leaf, eq + 1)) == NULL) {
		ld_add(ld, 0, 0, "-o %s: the value is not valid UTF-8", key);
		free(key);
	} else if (tree_set(root, key, v) < 0) {
		ld_add(ld, 0, 0, "-o %s: cannot be applied: %s has a non-object on the way", key, ld->path);
		free(key);
	} else {
		ld->override_keys[ld->noverride++] = key;
	}
}

/* ---- loading ---- */

static int read_text(loader *ld)
{
	FILE *f = fopen(ld->path, "re");
	size_t cap = 0, n;

	if (f == NULL) {
		ld_add(ld, 0, 0, "%s: cannot open: %s", ld->path, strerror(errno));
		return -1;
	}
	do {
		if (ld->textlen == cap) {
			char *t = cap < CONFIG_MAX_BYTES ? realloc(ld->text, cap + 65536) : NULL;
			if (t == NULL)
				break;
			ld->text = t;
			cap += 65536;
		}
		n = fread(ld->text + ld->textlen, 1, cap - ld->textlen, f);
		ld->textlen += n;
	} while (n > 0);
	if (ferror(f))
		ld_add(ld, 0, 0, "%s: cannot read: %s", ld->path, strerror(errno));
	else if (!feof(f))
		ld_add(ld, 0, 0, "%s: larger than %u bytes", ld->path, CONFIG_MAX_BYTES);
	fclose(f);
	return ld->nerrors > 0 ? -1 : 0;
}

static json_t *parse_text(loader *ld)
{
	json_error_t je;
	json_t *root = json_loadb(ld->text, ld->textlen, JSON_REJECT_DUPLICATES, &je);

	if (root == NULL && je.line > 0)
		ld_add(ld, je.line, je.column, "%s:%d:%d: %s", ld->path, je.line, je.column, je.text);
	else if (root == NULL)
		ld_add(ld, 0, 0, "%s: %s", ld->path, je.text);
	else if (!json_is_object(root))
		ld_add(ld, 0, 0, "%s: expected a JSON object { ... } at the top level", ld->path);
	if (root != NULL && !json_is_object(root)) {
		json_decref(root);
		root = NULL;
	}
	return root;
}

/* A check's own conf: what its compile made, and the strings of its keys. */
static void check_conf_free(const check_def *d, void *conf)
{
	if (!conf)
		return;
	if (d->conf_free)
		d->conf_free(conf);
	for (size_t j = 0; j < d->nkeys; j++) {
		char *s;
		check_strlist l;

		if (d->keys[j].type == CHECK_KEY_LIST || d->keys[j].type == CHECK_KEY_MAP) {
			memcpy(&l, (char *)conf + d->keys[j].off, sizeof(l));
			for (size_t i = 0; i < l.n; i++)
				free(l.v[i]);
			free(l.v);
		}
		if (d->keys[j].type != CHECK_KEY_STRING)
			continue;
		memcpy(&s, (char *)conf + d->keys[j].off, sizeof(s));
		free(s);
	}
	free(conf);
}

static void box_free(config_box *box)
{
	config *c = &box->cfg;

	free(c->path);
	free(c->user);
	free(c->recipient_delimiter);
	free(c->milter.listen);
	free(c->milter.socket_owner);
	free(c->milter.socket_group);
	for (size_t i = 0; i < c->policy.nlisten; i++)
		free(c->policy.listen[i].address);
	free(c->policy.listen);
	free(c->policy.socket_owner);
	free(c->policy.socket_group);
	netset_free(c->policy.allow);
	free(c->metrics.listen);
	netset_free(c->metrics.allow);
	store_config_clear(&c->store);
	for (size_t i = 0; i < c->dns.nforwarders; i++)
		free(c->dns.forwarders[i]);
	free(c->dns.forwarders);
	for (size_t i = 0; i < c->hooks.non_block; i++)
		free(c->hooks.on_block[i]);
	free(c->hooks.on_block);
	for (size_t i = 0; i < c->nexports; i++)
		free(c->exports[i].path);
	free(c->exports);
	for (size_t i = 0; i < c->nwarnings; i++)
		free(c->warnings[i]);
	free(c->warnings);
	trapset_free(box->traps);
	whitelist_free(box->wl);
	greywl_free(box->greywl);
	for (int i = 0; i < CHECK_COUNT; i++)
		check_conf_free(checks_all[i], box->check_conf[i]);
	free(box);
}

/*
 * The checks in SPEC.md's order with the modes in force: top-level
 * dry-run makes every enforcing check shadow. The whitelist has no mode
 * of its own: it only ever lets mail through.
 */
static void build_pipeline(config_box *box)
{
	config *cfg = &box->cfg;

	cfg->modes[CHECK_ID_WHITELIST] = CHECK_MODE_ENFORCE;
	cfg->pipeline.dry_run = cfg->decide.dry_run;
	for (int i = 0; i < CHECK_COUNT; i++) {
		check_mode mode = cfg->modes[i];

		/* The whitelist only ever lets mail through: shadowing it would judge whitelisted mail. */
		if (cfg->decide.dry_run && mode == CHECK_MODE_ENFORCE && !checks_all[i]->no_mode)
			mode = CHECK_MODE_SHADOW;
		cfg->pipeline.checks[i] =
		    (pipeline_check){.def = checks_all[i],
		                     .conf = box->check_conf[i] ? box->check_conf[i] : &cfg->decide,
		                     .mode = mode};
	}
}

/* What each check's compile says about its own section, as an error at the section. */
static void compile_checks(loader *ld)
{
	for (int i = 0; i < CHECK_COUNT; i++) {
		const check_def *d = checks_all[i];
		char err[512] = "", key[160];
		const key_def *leaf;
		size_t klen;
		jpath p;

		if (!d->compile || !ld->box->check_conf[i] ||
		    d->compile(ld->box->check_conf[i], err, sizeof(err)) == 0)
			continue;
		/* "reply: expected ..." names a key of the section: point there. */
		klen = strcspn(err, ":");
		snprintf(key, sizeof(key), "%s.%.*s", d->name, (int)klen, err);
		if (err[klen] == ':' && schema_find(key, &leaf) == SCHEMA_LEAF) {
			jpath_from_dotted(&p, key);
			ld_error(ld, &p, "%s", err + klen + 1 + (err[klen + 1] == ' '));
		} else {
			jpath_from_dotted(&p, d->name);
			ld_error(ld, &p, "%s", err[0] ? err : "invalid");
		}
	}
}

/* The greylist's conf points at what the config owns: its whitelists, traps.recipient_delimiter. */
static bool link_greylist(loader *ld)
{
	greylist_conf *gc = ld->box->check_conf[CHECK_ID_GREYLIST];

	if (gc == NULL)
		return true;
	if (ld_greywl(ld) == NULL) {
		ld->lost = true;
		return false;
	}
	gc->wl = ld->box->greywl;
	gc->recipient_delimiter = ld->cfg->recipient_delimiter ? ld->cfg->recipient_delimiter : "";
	return true;
}

/*
 * The spf check asks SPF only when something uses it (core/checks/spf.h):
 * it learns here what the blocklist and the greylist want. Those uses need
 * the check on: with spf off they would silently never see a pass.
 */
static void link_spf(loader *ld)
{
	config *cfg = ld->cfg;
	spfcheck_conf *sc = ld->box->check_conf[CHECK_ID_SPF];
	const greylist_conf *gc = ld->box->check_conf[CHECK_ID_GREYLIST];
	bool spf_on = cfg->modes[CHECK_ID_SPF] != CHECK_MODE_OFF;
	jpath p;

	if (sc == NULL)
		return;
	sc->policy = &cfg->decide;
	cfg->decide.spf_timeout_ms = spf_on ? sc->timeout * 1000 : 0;
	sc->grey_spf_key = gc && gc->spf_key && cfg->modes[CHECK_ID_GREYLIST] != CHECK_MODE_OFF;
	if (cfg->decide.sender_requires == SENDER_REQUIRES_SPF_PASS && !spf_on) {
		jpath_from_dotted(&p, "blocklist.sender_requires");
		ld_error(ld, &p,
		         "\"spf-pass\" needs the spf check (spf.mode enforce or shadow): without it "
		         "no unauthenticated sender would ever be blocklisted");
	}
	if (gc && gc->spf_key && !spf_on) {
		jpath_from_dotted(&p, "greylist.spf_key");
		ld_error(ld, &p, "true needs the spf check (spf.mode enforce or shadow)");
	}
}

/* cfg->dns.key: the dns section's settings that make a resolver, in one string. */
static void dns_key(config *cfg)
{
	char *buf = cfg->dns.key;
	size_t len = sizeof(cfg->dns.key);
	int o = snprintf(buf, len, "%u|%u|", cfg->dns.max_inflight, cfg->dns.cache_size);

	for (size_t i = 0; i < cfg->dns.nforwarders && o > 0 && (size_t)o < len; i++)
		o += snprintf(buf + o, len - (size_t)o, "%s,", cfg->dns.forwarders[i]);
}

/* The ratelimit's conf points at traps.recipient_delimiter (cut from sender keys). */
static void link_ratelimit(loader *ld)
{
	ratelimit_conf *rc = ld->box->check_conf[CHECK_ID_RATELIMIT];

	if (rc != NULL)
		rc->recipient_delimiter = ld->cfg->recipient_delimiter ? ld->cfg->recipient_delimiter : "";
}

/* dnsbl and greylist settings that do nothing together: a load succeeds, spamtrapd -t says so. */
static void warn_dnsbl_greylist(loader *ld)
{
	const config *cfg = ld->cfg;
	const dnsbl_conf *dc = ld->box->check_conf[CHECK_ID_DNSBL];
	const greylist_conf *gc = ld->box->check_conf[CHECK_ID_GREYLIST];
	check_mode dnsbl = cfg->modes[CHECK_ID_DNSBL], grey = cfg->modes[CHECK_ID_GREYLIST];

	if (!dc || !gc)
		return;
	if (dnsbl != CHECK_MODE_OFF && dc->nsites == 0)
		ld_warn(ld, "dnsbl.mode is %s but dnsbl.sites is empty: no client is ever listed",
		        check_mode_name(dnsbl));
	/*
	 * An allow list without a filter takes any answer in 127/8 for a
	 * listing, its own error codes too (dnswl.org answers 127.0.0.255 to a
	 * resolver over its quota): then every client is allowlisted, and its
	 * weight cancels the block lists' for everyone.
	 */
	for (size_t i = 0; dnsbl != CHECK_MODE_OFF && i < dc->nsites; i++)
		if (dc->site[i].weight < 0 && !dc->site[i].filtered)
			ld_warn(ld,
			        "dnsbl.sites[%zu]: %s has a negative weight and no filter: any answer, the "
			        "list's own error codes too, allowlists the client (write its codes, as "
			        "%s=127.0.[0..255].[1..3]*%d)",
			        i, dc->site[i].name, dc->site[i].name, dc->site[i].weight);
	if (dnsbl != CHECK_MODE_OFF && dc->action == DNSBL_ACTION_GREYLIST && grey == CHECK_MODE_OFF)
		ld_warn(ld,
		        "dnsbl.action is greylist but greylist.mode is off: listed clients are let through");
	if (grey == CHECK_MODE_OFF || gc->apply != GREYLIST_APPLY_LISTED)
		return;
	if (dnsbl != CHECK_MODE_ENFORCE)
		ld_warn(
		    ld,
		    "greylist.apply is listed but dnsbl.mode is %s: no client is listed, none is greylisted",
		    check_mode_name(dnsbl));
	else if (dc->action != DNSBL_ACTION_GREYLIST)
		ld_warn(
		    ld,
		    "greylist.apply is listed but dnsbl.action is %s: listed clients are refused before the "
		    "greylist, none is greylisted",
		    dc->action == DNSBL_ACTION_REJECT ? "reject" : "defer");
}

/* A TCP listener's address and port (policy.listen, metrics.listen forms); false for unix:PATH. */
static bool tcp_listener(const char *listen, addr_ip *ip, uint16_t *port)
{
	char why[128];

	return strncmp(listen, "unix:", 5) != 0 && addr_hostport_parse(listen, ip, port, why, sizeof why);
}

/* milter.listen inet:PORT[@IPV4] (no host: every IPv4 address); false for other forms and host names. */
static bool milter_tcp(const char *spec, addr_ip *ip, uint16_t *port)
{
	const char *rest = after_prefix(spec, "inet:"), *at;
	unsigned p;

	if (!rest)
		return false;
	at = strchr(rest, '@');
	if (!parse_port(rest, at ? (size_t)(at - rest) : strlen(rest), &p))
		return false;
	*port = (uint16_t)p;
	if (!at) {
		*ip = (addr_ip){.version = 4};
		return true;
	}
	return addr_ip_parse(at + 1, ip) && ip->version == 4;
}

static bool ip_is_any(const addr_ip *ip)
{
	for (size_t i = 0; i < (ip->version == 4 ? 4u : 16u); i++)
		if (ip->bytes[i])
			return false;
	return true;
}

/* Two TCP binds that cannot both succeed: one port and family, and one address or a wildcard. */
static bool binds_clash(const addr_ip *a, uint16_t pa, const addr_ip *b, uint16_t pb)
{
	return pa == pb && a->version == b->version &&
	       (ip_is_any(a) || ip_is_any(b) || memcmp(a->bytes, b->bytes, a->version == 4 ? 4 : 16) == 0);
}

/* Does milter.listen take what metrics.listen names (its unix path, or its TCP address)? */
static bool milter_clash(const char *milter, const char *metrics)
{
	const char *path = after_prefix(milter, "unix:");
	addr_ip a, b;
	uint16_t pa, pb;

	if (!path)
		path = after_prefix(milter, "local:");
	if (path)
		return strncmp(metrics, "unix:", 5) == 0 && strcmp(metrics + 5, path) == 0;
	return milter_tcp(milter, &a, &pa) && tcp_listener(metrics, &b, &pb) && binds_clash(&a, pa, &b, pb);
}

/*
 * metrics.listen on the address or unix path of another listener (or a
 * wildcard address on its port): the second bind fails at start, after
 * `spamtrapd -t` said yes (and a unix path would first be taken for a
 * stale socket of ours). Unix paths compare as written.
 */
static void check_metrics_listen(loader *ld)
{
	const config *cfg = ld->cfg;
	const char *mine = cfg->metrics.listen;
	addr_ip a, b;
	uint16_t pa, pb;
	jpath p;

	if (!mine)
		return;
	jpath_from_dotted(&p, "metrics.listen");
	bool tcp = tcp_listener(mine, &a, &pa);
	for (size_t i = 0; i < cfg->policy.nlisten; i++) {
		const char *theirs = cfg->policy.listen[i].address;
		bool clash = tcp ? tcp_listener(theirs, &b, &pb) && binds_clash(&a, pa, &b, pb)
		                 : strcmp(mine, theirs) == 0;
		if (clash) {
			ld_error(ld, &p,
			         "%s is also policy.listen[%zu] (%s): the metrics listener needs an address "
			         "of its own",
			         mine, i, theirs);
			return;
		}
	}
	if (cfg->milter.listen && milter_clash(cfg->milter.listen, mine))
		ld_error(ld, &p,
		         "%s is also milter.listen (%s): the metrics listener needs an address of its own",
		         mine, cfg->milter.listen);
}

/* The compiled sets exist even when empty: the request path never checks for NULL. */
static void finish(loader *ld)
{
	config *cfg = ld->cfg;

	if (ld_traps(ld) == NULL || ld_whitelist(ld) == NULL ||
	    (cfg->policy.allow == NULL && (cfg->policy.allow = netset_new()) == NULL) ||
	    (cfg->metrics.allow == NULL && (cfg->metrics.allow = netset_new()) == NULL)) {
		ld->lost = true;
		return;
	}
	cfg->decide.traps = ld->box->traps;
	cfg->decide.whitelist = ld->box->wl;
	check_metrics_listen(ld);
	link_ratelimit(ld);
	if (!link_greylist(ld))
		return;
	compile_checks(ld);
	build_pipeline(ld->box);
	link_spf(ld);
	dns_key(cfg);
	/* A shadow trap records its hits; an enforcing blocklist then refuses those senders for real. */
	if (cfg->modes[CHECK_ID_TRAPS] == CHECK_MODE_SHADOW &&
	    cfg->modes[CHECK_ID_BLOCKLIST] == CHECK_MODE_ENFORCE && !cfg->decide.dry_run)
		ld_warn(ld, "traps.mode is shadow but blocklist.mode is enforce: trap hits are still "
		            "recorded, and the "
		            "blocklist rejects those senders; use blocklist.mode shadow (or top-level mode "
		            "dry-run) to "
		            "try a trap list without effect");
	warn_dnsbl_greylist(ld);
	/* Trap hits are recorded in every mode, and an export hands them to a firewall that enforces. */
	if (cfg->nexports > 0 &&
	    (cfg->decide.dry_run || cfg->modes[CHECK_ID_BLOCKLIST] != CHECK_MODE_ENFORCE))
		ld_warn(ld,
		        "exports are written while %s: a firewall that loads them blocks for real the "
		        "clients spamtrapd only logs",
		        cfg->decide.dry_run ? "mode is dry-run" : "blocklist.mode is not enforce");
}

static config_box *build(loader *ld, json_t *root)
{
	config_box *box = calloc(1, sizeof *box);

	if (box == NULL || (box->cfg.path = strdup(ld->path)) == NULL) {
		free(box);
		ld->lost = true;
		return NULL;
	}
	atomic_init(&box->refs, 1);
	ld->box = box;
	ld->cfg = &box->cfg;
	for (int i = 0; i < CHECK_COUNT; i++)
		if (checks_all[i]->conf_size && !(box->check_conf[i] = calloc(1, checks_all[i]->conf_size)))
			ld->lost = true;
	for (size_t i = 0, all = nkeys_all(); i < all && !ld->lost; i++)
		if (key_at(i)->owner == 0 || box->check_conf[key_at(i)->owner - 1])
			apply_key(ld, key_at(i), root);
	if (section_keys.keys == NULL)
		ld->lost = true;
	finish(ld);
	check_trust(ld, "config file", ld->path);
	check_exposure(ld);
	return box;
}

config *config_load(const char *path, const char *const *overrides, size_t noverrides, char *err,
                    size_t errlen)
{
	loader ld = {.path = path != NULL ? path : "(no file)"};
	config_box *box = NULL;
	json_t *root = NULL;
	jpath p = {0};

	ld.override_keys = calloc(noverrides + 1, sizeof *ld.override_keys);
	if (ld.override_keys == NULL)
		ld.lost = true;
	else if (read_text(&ld) == 0 && (root = parse_text(&ld)) != NULL) {
		for (size_t i = 0; i < noverrides; i++)
			apply_override(&ld, root, overrides[i]);
		check_keys(&ld, root, &p);
		box = build(&ld, root);
	}
	json_decref(root);
	if (box != NULL && (ld.nerrors > 0 || ld.lost)) {
		box_free(box);
		box = NULL;
	}
	if (box == NULL && ld.nerrors == 0)
		ld.lost = true; /* never NULL without a reason */
	write_errors(&ld, err, errlen);
	loader_clear(&ld);
	return box != NULL ? &box->cfg : NULL;
}

static config_box *box_of(config *cfg)
{
	return (config_box *)((char *)cfg - offsetof(config_box, cfg));
}

config *config_ref(config *cfg)
{
	if (cfg != NULL)
		atomic_fetch_add_explicit(&box_of(cfg)->refs, 1, memory_order_relaxed);
	return cfg;
}

void config_unref(config *cfg)
{
	if (cfg != NULL && atomic_fetch_sub_explicit(&box_of(cfg)->refs, 1, memory_order_acq_rel) == 1)
		box_free(box_of(cfg));
}

bool config_parse_duration(const char *s, int64_t *seconds)
{
	static const char units[] = "smhd";
	static const int64_t unit_seconds[] = {1, 60, 3600, 86400};
	int64_t n = 0, unit = 1;
	const char *u;

	if (s == NULL || !isdigit((unsigned char)*s))
		return false;
	for (; isdigit((unsigned char)*s); s++) {
		if (n > (INT64_MAX - 9) / 10)
			return false;
		n = n * 10 + (*s - '0');
	}
	if (*s != '\0') {
		if ((u = strchr(units, *s)) == NULL || s[1] != '\0')
			return false;
		unit = unit_seconds[u - units];
	}
	if (n > INT64_MAX / unit)
		return false;
	*seconds = n * unit;
	return true;
}

unsigned policy_role_checks(policy_role role)
{
	switch (role) {
	case POLICY_ROLE_TRAP:
		return CHECKS_EVERY & ~CHECK_BIT(CHECK_ID_BLOCKLIST);
	case POLICY_ROLE_SENDER:
		return CHECK_BIT(CHECK_ID_BLOCKLIST);
	case POLICY_ROLE_FULL:
		break;
	}
	return CHECKS_EVERY;
}

dns_settings config_dns_settings(const config *cfg)
{
	return (dns_settings){.forwarders = (const char *const *)cfg->dns.forwarders,
	                      .nforwarders = cfg->dns.nforwarders,
	                      .max_inflight = cfg->dns.max_inflight,
	                      .cache_mib = cfg->dns.cache_size};
}

const char *policy_role_name(policy_role role)
{
	return role >= POLICY_ROLE_TRAP && role <= POLICY_ROLE_FULL ? role_names[role] : "unknown";
}
