/*
 * store_redis: the blocklist in Redis, shared by every MX host of a site.
 *
 * Layout: one hash per entry at PREFIX "bl:" KEY (PREFIX is
 * store.redis.prefix) with the fields of field_names[] below; Redis's own
 * expiry (EXPIREAT at the entry's expires) drops it, so purging is only
 * needed when clocks disagree. Lookups still compare expires with the
 * caller's now, so both backends answer alike. The network lengths
 * present are kept in one more hash, PREFIX "netlens" (see below). The
 * greylist's triplets and clients are hashes at PREFIX "grey:t:" and
 * PREFIX "grey:a:" (greylist_lua), on the server's clock. See
 * docs/redis.md.
 *
 * Round trips: a lookup is one Lua script (EVALSHA, EVAL when the server
 * lost it) that reads the network lengths, the expiry of each key that
 * may exist in the caller's order, and the fields of the first live one
 * only; a trap hit and a put are one script each that updates every key
 * atomically; foreach and purge walk the keys with SCAN, never KEYS.
 *
 * Failures: a pool of connections under a mutex and condition variable.
 * A connection that fails is dropped. A broken idle connection (the server
 * closed it) is replaced and the command retried once at once; any other
 * failure starts a growing back-off during which calls fail at once with
 * STORE_ERROR instead of hammering a dead server. Every wait is bounded by
 * the connect and command timeouts. SIGPIPE from writing to a closed
 * socket is kept away from the process while a command runs.
 *
 * Sentinel (store.redis.sentinels): every new connection first asks the
 * Sentinels in turn, starting with the one that answered last, for the
 * master's address (SENTINEL get-master-addr-by-name), connects there and
 * checks with ROLE that it is a master. A failed, READONLY or LOADING
 * connection is replaced, so the next attempt asks again. While the store
 * is in use the Sentinels are asked again at most once a second, because
 * after a failover the old master may go on taking writes until it is
 * demoted; when they name a new address, pooled connections to the old
 * one are replaced at their next use.
 */
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "core/key.h"
#include "log.h"
#include "store/redis_view.h"
#include "store/sqlite_hot.h"
#include "store/store_backend.h"

#define POOL_SIZE 8
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define SENTINEL_RECHECK_MS 1000
#define DEFAULT_TIMEOUT_MS 1000
#define SCAN_COUNT "1000"
#define FETCH_BATCH 256
#define SHA_LEN 40
#define PREFIX_MAX 200
#define KEYBUF (PREFIX_MAX + 3 + STORE_KEY_MAX)

/* Hash fields, in the order HMGET asks for them. */
enum {
	F_EXPIRES,
	F_FIRST,
	F_LAST,
	F_HITS,
	F_TRAP,
	F_SENDER,
	F_RCPT,
	F_CLIENT,
	F_HELO,
	F_QID,
	F_REASON,
	NFIELDS
};
static const char *const field_names[NFIELDS] = {"expires", "first",  "last", "hits", "trap",  "sender",
                                                 "rcpt",    "client", "helo", "qid",  "reason"};

/*
 * The network lengths present live in one hash at PREFIX "netlens", so
 * that a lookup can skip the client's network keys of lengths no entry
 * has (25 or more of them, nearly all absent). Its fields:
 *   "4/24", "6/48"  a network length some entry may have (its tag, see
 *                   net_tag()), with the value of "gen" when it was last
 *                   confirmed;
 *   "gen"           a counter a purge bumps when it starts a rebuild;
 *   "ok"            set when a rebuild has completed: only then does a
 *                   lookup trust the hash (an upgraded server, or one
 *                   that lost the hash, is probed in full until then).
 * Every write of a network key (record, put) stores its tag at the
 * current "gen", in the same script. A purge bumps "gen" to g, confirms
 * (to g) the tag of every live key its SCAN meets, and at the end drops
 * tags below g: a key written after the bump carries g or more, a key
 * present throughout the SCAN is met by it, so no length with an entry is
 * ever dropped, also with several purges at once. Redis expiry and DEL
 * leave a tag behind until the next purge: a wasted probe, never a missed
 * entry. The tags are computed here in C (store_net_key_len) and passed
 * to the scripts, one per key, "" for a key that is not a network.
 */

/*
 * KEYS: the netlens hash, then the N entries. ARGV: now, expires, trap,
 * sender, rcpt, client, helo, qid, reason, then the N tags, then the
 * change channel. A missing or expired entry starts over (first = now,
 * hits = 1); a live one counts the hit and keeps a longer expiry. Returns
 * the keys that started over as bits (KEYS[2] is bit 0): the new
 * listings, which it also PUBLISHes on the channel (every host's
 * exports, store_watch).
 */
static const char record_lua[] =
    "local now = tonumber(ARGV[1])\n"
    "local gen = redis.call('HGET', KEYS[1], 'gen') or '0'\n"
    "local created = 0\n"
    "for i = 2, #KEYS do\n"
    "  local k = KEYS[i]\n"
    "  local exp = tonumber(ARGV[2])\n"
    "  local old = tonumber(redis.call('HGET', k, 'expires'))\n"
    "  if old == nil or old <= now then\n"
    "    redis.call('DEL', k)\n"
    "    redis.call('HSET', k, 'first', ARGV[1], 'hits', 1)\n"
    "    created = created + 2 ^ (i - 2)\n"
    "  else\n"
    "    redis.call('HINCRBY', k, 'hits', 1)\n"
    "    if old > exp then exp = old end\n"
    "  end\n"
    "  redis.call('HSET', k, 'expires', string.format('%d', exp), 'last', ARGV[1], 'trap', ARGV[3],\n"
    "    'sender', ARGV[4], 'rcpt', ARGV[5], 'client', ARGV[6], 'helo', ARGV[7], 'qid', ARGV[8],\n"
    "    'reason', ARGV[9])\n"
    "  redis.call('EXPIREAT', k, string.format('%d', exp))\n"
    "  if ARGV[8 + i] ~= '' then redis.call('HSET', KEYS[1], ARGV[8 + i], gen) end\n"
    "end\n"
    "if created > 0 then redis.call('PUBLISH', ARGV[#ARGV], '1') end\n"
    "return created\n";

/*
 * KEYS: the entry, the netlens hash. ARGV: the entry's tag, expires, then
 * field, value pairs. Replaces the entry atomically.
 */
static const char put_lua[] =
    "redis.call('DEL', KEYS[1])\n"
    "redis.call('HSET', KEYS[1], unpack(ARGV, 3))\n"
    "redis.call('EXPIREAT', KEYS[1], ARGV[2])\n"
    "if ARGV[1] ~= '' then\n"
    "  redis.call('HSET', KEYS[2], ARGV[1], redis.call('HGET', KEYS[2], 'gen') or '0')\n"
    "end\n"
    "return 1\n";

/*
 * KEYS: the netlens hash, then the keys to try in order. ARGV: now, then
 * the tag of each key (ARGV[i] for KEYS[i]). Returns 0, or the position
 * (from 1) of the first key whose entry is live at now followed by its
 * fields in field_names[] order. A key whose tag the hash does not hold
 * is not read (when the hash is trusted).
 */
static const char lookup_lua[] =
    "local now = tonumber(ARGV[1])\n"
    "local names = redis.call('HKEYS', KEYS[1])\n"
    "local have = nil\n"
    "for _, f in ipairs(names) do\n"
    "  if f == 'ok' then have = {[''] = true} end\n"
    "end\n"
    "if have then\n"
    "  for _, f in ipairs(names) do have[f] = true end\n"
    "end\n"
    "for i = 2, #KEYS do\n"
    "  if not have or have[ARGV[i]] then\n"
    "    local e = tonumber(redis.call('HGET', KEYS[i], 'expires'))\n"
    "    if e ~= nil and e > now then\n"
    "      local r = redis.call('HMGET', KEYS[i], 'expires', 'first', 'last', 'hits', 'trap', 'sender',\n"
    "        'rcpt', 'client', 'helo', 'qid', 'reason')\n"
    "      table.insert(r, 1, i - 1)\n"
    "      return r\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return 0\n";

/*
 * KEYS: the netlens hash, then candidates from SCAN. ARGV: now, the
 * rebuild's gen, then the tag of each candidate (ARGV[i + 1] for
 * KEYS[i]). Deletes those expired at now and confirms the tag of the
 * others; returns how many it deleted.
 */
static const char purge_lua[] =
    "local now = tonumber(ARGV[1])\n"
    "local gen = tonumber(ARGV[2])\n"
    "local n = 0\n"
    "local seen = {}\n"
    "for i = 2, #KEYS do\n"
    "  local k = KEYS[i]\n"
    "  local e = redis.pcall('HGET', k, 'expires')\n"
    "  e = type(e) == 'string' and tonumber(e) or nil\n"
    "  if e ~= nil and e <= now then\n"
    "    redis.call('DEL', k)\n"
    "    n = n + 1\n"
    "  elseif e ~= nil and ARGV[i + 1] ~= '' and not seen[ARGV[i + 1]] then\n"
    "    local t = ARGV[i + 1]\n"
    "    seen[t] = true\n"
    "    local v = tonumber(redis.call('HGET', KEYS[1], t))\n"
    "    if v == nil or v < gen then redis.call('HSET', KEYS[1], t, ARGV[2]) end\n"
    "  end\n"
    "end\n"
    "return n\n";

/* KEYS: the netlens hash. ARGV: the rebuild's gen. The SCAN is done: drop lengths not confirmed since. */
static const char netlens_done_lua[] =
    "local gen = tonumber(ARGV[1])\n"
    "local all = redis.call('HGETALL', KEYS[1])\n"
    "for i = 1, #all, 2 do\n"
    "  local f = all[i]\n"
    "  if f ~= 'gen' and f ~= 'ok' and (tonumber(all[i + 1]) or 0) < gen then\n"
    "    redis.call('HDEL', KEYS[1], f)\n"
    "  end\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'ok', '1')\n"
    "return 1\n";

/*
 * A bucket's key lives this long past its TAT (ms): full again, it is as
 * good as absent, but a bucket in use does not expire between two
 * charges, which would drop every daemon's copy of it (the hot copies
 * below).
 */
#define HOT_KEEP_MS_TEXT "60000"
#define HOT_KEEP_MS 60000
/* The most members of a set a daemon keeps a copy of (the relay check's: max_networks + 256 at most). */
#define HOT_SET_MAX 1024
#define HOT_SET_READ_TEXT "1025" /* one more: a set with more is not kept */

/*
 * store_distinct_add: one sorted set per set at PREFIX "ds:" SET, each
 * member scored with its expiry. KEYS: the set. ARGV: now, expires,
 * member, limit (0: none), window in ms. now 0 (STORE_NOW_SERVER): the
 * server's clock (TIME, in seconds) and expires now + window, so that
 * hosts with skewed clocks count one window. Drops the members expired at
 * now, adds or refreshes member (never shortening it) unless it is new and
 * the set full, and keeps the key for a window after its last addition,
 * so that Redis deletes an idle set by itself. Returns the live members
 * counting this one (limit + 1: refused, not added). ARGV[6] "peek" only
 * reads: returns {members live at now, whether member is one (0 or 1)};
 * "load" returns now and the live members with their scores, for a copy;
 * "loadadd" is "load" when member is live (no write: the copy survives),
 * the add otherwise (a new member is decided here, atomically, as ever).
 */
static const char distinct_lua[] =
    "local nowtext, score = ARGV[1], ARGV[2]\n"
    "if ARGV[1] == '0' then\n"
    "  nowtext = redis.call('TIME')[1]\n"
    "  score = string.format('%d', tonumber(nowtext) + math.floor(tonumber(ARGV[5]) / 1000))\n"
    "end\n"
    "local now, exp = tonumber(nowtext), tonumber(score)\n"
    "local known = ARGV[6] == 'loadadd' and redis.call('ZSCORE', KEYS[1], ARGV[3])\n"
    "if ARGV[6] == 'load' or (known and tonumber(known) > now) then\n"
    "  local r = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. nowtext, '+inf', 'WITHSCORES', 'LIMIT', "
    "0, " HOT_SET_READ_TEXT ")\n"
    "  table.insert(r, 1, nowtext)\n"
    "  return r\n"
    "end\n"
    "if ARGV[6] == 'peek' then\n"
    "  local s = redis.call('ZSCORE', KEYS[1], ARGV[3])\n"
    "  local live = s and tonumber(s) > now\n"
    "  return {redis.call('ZCOUNT', KEYS[1], '(' .. nowtext, '+inf'), live and 1 or 0}\n"
    "end\n"
    "local limit = tonumber(ARGV[4])\n"
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', nowtext)\n"
    "local n = redis.call('ZCARD', KEYS[1])\n"
    "local old = redis.call('ZSCORE', KEYS[1], ARGV[3])\n"
    "if old then\n"
    "  if tonumber(old) < exp then redis.call('ZADD', KEYS[1], score, ARGV[3]) end\n"
    "elseif limit == 0 or n < limit then\n"
    "  redis.call('ZADD', KEYS[1], score, ARGV[3])\n"
    "  n = n + 1\n"
    "else\n"
    "  return n + 1\n"
    "end\n"
    "if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[5]) then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end\n"
    "return n\n";

/*
 * The upgrade of a 0.1.0 blocklist to typed keys (see migrate_batch()).
 * KEYS: pairs of an entry and its new key ("": drop the entry). ARGV: for
 * each pair, the sender the entry must have recorded to move ("": any).
 * An entry that meets another under the new key merges with it: the
 * later expiry with its fields and TTL, the hits added up, the earlier
 * first. Returns how many entries moved.
 */
static const char rekey_lua[] =
    "local function merge(src, dst)\n"
    "  if redis.call('EXISTS', dst) == 0 then\n"
    "    redis.call('RENAME', src, dst)\n"
    "    return\n"
    "  end\n"
    "  local s = redis.call('HMGET', src, 'expires', 'hits', 'first')\n"
    "  local d = redis.call('HMGET', dst, 'expires', 'hits', 'first')\n"
    "  local hits = (tonumber(s[2]) or 0) + (tonumber(d[2]) or 0)\n"
    "  local first = tonumber(d[3]) or tonumber(s[3]) or 0\n"
    "  if tonumber(s[3]) and tonumber(s[3]) < first then first = tonumber(s[3]) end\n"
    "  if (tonumber(s[1]) or 0) > (tonumber(d[1]) or 0) then\n"
    "    redis.call('RENAME', src, dst)\n"
    "  else\n"
    "    redis.call('DEL', src)\n"
    "  end\n"
    "  redis.call('HSET', dst, 'hits', string.format('%d', hits), 'first', string.format('%d', first))\n"
    "end\n"
    "local n = 0\n"
    "for i = 1, #KEYS, 2 do\n"
    "  local src, dst, need = KEYS[i], KEYS[i + 1], ARGV[(i + 1) / 2]\n"
    "  if redis.call('EXISTS', src) == 1 and (need == '' or redis.call('HGET', src, 'sender') == need) then\n"
    "    if dst == '' then redis.call('DEL', src) else merge(src, dst) end\n"
    "    n = n + 1\n"
    "  end\n"
    "end\n"
    "return n\n";

/*
 * The keyed records and buckets take the time from the server (TIME), not
 * from the caller as the blocklist and distinct sets do: a greylist or a
 * rate shared by several MX hosts must not depend on their clocks'
 * agreement. A script that calls TIME and then writes needs effects
 * replication; that is the default since Redis 5 and the only mode since
 * 7 (Debian 12 ships 7.0), so the scripts do not call
 * redis.replicate_commands().
 */
#define LUA_NOW_MS                                                                                           \
	"local t = redis.call('TIME')\n"                                                                     \
	"local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

/*
 * store_kv: a string at PREFIX "kv:" NS ":" KEY with a native expiry.
 * KEYS: the record. ARGV: op (get, put, new, del), value, ttl in ms.
 * Returns {found, old value, its expiry in ms (0: none)}.
 */
static const char kv_lua[] = LUA_NOW_MS "local old = redis.call('GET', KEYS[1])\n"
                                        "local exp = 0\n"
                                        "if old then\n"
                                        "  local pttl = redis.call('PTTL', KEYS[1])\n"
                                        "  if pttl > 0 then exp = now + pttl end\n"
                                        "end\n"
                                        "local op = ARGV[1]\n"
                                        "if op == 'put' or (op == 'new' and not old) then\n"
                                        "  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])\n"
                                        "elseif op == 'del' and old then\n"
                                        "  redis.call('DEL', KEYS[1])\n"
                                        "end\n"
                                        "if old then return {1, old, exp} end\n"
                                        "return {0, '', 0}\n";

/*
 * store_counter: GCRA, the bucket's TAT (ms) as a string at PREFIX "ctr:"
 * NS ":" KEY, expiring at the TAT (when the bucket is full again and as
 * good as absent). ARGV: emission interval ms, burst, cost, debt ("1":
 * charge past burst, query.h). Returns
 * {allowed, retry_after ms, remaining, TAT held}: the TAT stored after
 * the call, 0 when none is ahead of now (the hot copies' read: an empty
 * bucket is empty whatever Redis's clock says, which the copy's, a round
 * trip behind, must not see as a charge).
 */
static const char counter_lua[] = LUA_NOW_MS
    "local t = tonumber(ARGV[1])\n"
    "local tau = tonumber(ARGV[2]) * t\n"
    "local cost = tonumber(ARGV[3])\n"
    "local tat = tonumber(redis.call('GET', KEYS[1]) or 0)\n"
    "local held = tat\n"
    "if tat <= now then tat, held = now, 0 end\n"
    "local nxt = tat + cost * t\n"
    "if nxt - now > tau and not (ARGV[4] == '1' and cost > 0) then\n"
    "  return {0, nxt - tau - now, math.floor((tau - (tat - now)) / t), held}\n"
    "end\n"
    "if cost > 0 then\n"
    "  redis.call('SET', KEYS[1], string.format('%d', nxt), 'PX', nxt - now + " HOT_KEEP_MS_TEXT ")\n"
    "  held = nxt\n"
    "end\n"
    "return {1, 0, math.max(0, math.floor((tau - (nxt - now)) / t)), held}\n";

/*
 * store_greylist: greystep_run (src/core/greystep.c) line by line, in
 * Redis's clock; keep the two in step. A triplet is a hash at PREFIX
 * "grey:t:" KEY, a client's auto-whitelist record one at PREFIX "grey:a:"
 * KEY, fields first/count, last, exp (ms), each with a native expiry at
 * exp (PEXPIREAT): no purge, and a record past exp is never read as live.
 * KEYS: the triplet, then the client's record when there is one. ARGV:
 * delay, retry_window, max_age (ms), awl_count, the period of
 * auto-whitelist counting (ms). Returns {now, result (greystep_result),
 * remaining, waited, write_triplet, first, last, triplet expiry,
 * write_awl, count, last, awl expiry}.
 */
static const char greylist_lua[] = LUA_NOW_MS
    "local delay, window = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
    "local max_age, awl_count, period = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])\n"
    "local function ms(x) return string.format('%d', x) end\n"
    "local function live(k, f)\n"
    "  local r = redis.call('HMGET', k, f, 'last', 'exp')\n"
    "  if r[1] and r[2] and r[3] and tonumber(r[3]) > now then\n"
    "    return tonumber(r[1]), tonumber(r[2])\n"
    "  end\n"
    "  return nil, nil\n"
    "end\n"
    "local out = {now, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}\n"
    "local function awl_write(count)\n"
    "  out[9], out[10], out[11], out[12] = 1, count, now, now + max_age\n"
    "  if #KEYS == 2 then\n"
    "    redis.call('HSET', KEYS[2], 'count', ms(count), 'last', ms(now), 'exp', ms(now + max_age))\n"
    "    redis.call('PEXPIREAT', KEYS[2], ms(now + max_age))\n"
    "  end\n"
    "end\n"
    "local ac, al = nil, nil\n"
    "if awl_count > 0 and #KEYS == 2 then ac, al = live(KEYS[2], 'count') end\n"
    /* awl_pass() */
    "if ac and ac >= awl_count and awl_count > 0 then\n"
    "  out[2] = 4\n"
    "  if now >= al + period or al > now then awl_write(ac + 1) end\n"
    "  return out\n"
    "end\n"
    "local first, passed_before, present = now, false, false\n"
    "local tf, tl = live(KEYS[1], 'first')\n"
    "if tf then\n"
    "  present = true\n"
    "  first = tf\n"
    "  passed_before = tl - tf >= delay\n"
    "  if not passed_before and now - first > window then first = now end\n"
    "  if first > now then first = now end\n"
    "end\n"
    "local texp = first + window + 1\n"
    "if now - first >= delay then texp = now + max_age end\n"
    "out[5], out[6], out[7], out[8] = 1, first, now, texp\n"
    "redis.call('HSET', KEYS[1], 'first', ms(first), 'last', ms(now), 'exp', ms(texp))\n"
    "redis.call('PEXPIREAT', KEYS[1], ms(texp))\n"
    "if delay - (now - first) > 0 then\n"
    "  if present and first ~= now then out[2] = 1 else out[2] = 0 end\n"
    "  out[3] = delay - (now - first)\n"
    "  return out\n"
    "end\n"
    "if passed_before then\n"
    "  out[2] = 3\n"
    "  return out\n"
    "end\n"
    "out[2] = 2\n"
    "out[4] = now - first\n"
    /* awl_count_pass() */
    "if awl_count == 0 or (ac and now < al + period) then return out end\n"
    "awl_write((ac or 0) + 1)\n"
    "return out\n";
_Static_assert(GREYSTEP_DEFER_NEW == 0 && GREYSTEP_DEFER_EARLY == 1 && GREYSTEP_PASS_FIRST == 2 &&
                   GREYSTEP_PASS == 3 && GREYSTEP_PASS_AWL == 4,
               "greylist_lua returns greystep_result by number");

enum {
	SCRIPT_RECORD,
	SCRIPT_PUT,
	SCRIPT_LOOKUP,
	SCRIPT_PURGE,
	SCRIPT_NETLENS_DONE,
	SCRIPT_DISTINCT,
	SCRIPT_REKEY,
	SCRIPT_KV,
	SCRIPT_COUNTER,
	SCRIPT_GREYLIST,
	NSCRIPTS
};
static const char *const scripts[NSCRIPTS] = {record_lua,       put_lua,      lookup_lua, purge_lua,
                                              netlens_done_lua, distinct_lua, rekey_lua,  kv_lua,
                                              counter_lua,      greylist_lua};

typedef struct rconn {
	redisContext *ctx;
	char sha[NSCRIPTS][SHA_LEN + 1];
	bool busy;
	bool stale;   /* healthy socket, wrong server state: replace it */
	unsigned gen; /* master_gen when connected */
} rconn;

/* A Sentinel to ask for the master's address. */
typedef struct sentinel {
	char host[256];
	int port;
	char addr[300]; /* as configured, for messages */
} sentinel;

struct store_backend_impl {
	store_config cfg;
	char where[300]; /* "redis 127.0.0.1:6379" for messages */
	char *prefix;    /* cfg.redis_prefix "bl:" */
	size_t prefixlen;
	char *netlens;      /* cfg.redis_prefix "netlens": the network lengths present */
	char *pattern;      /* SCAN MATCH pattern: the prefix, glob-escaped, then "*" */
	char *grey_pattern; /* the same for the greylist's records: cfg.redis_prefix "grey:*" */
	char *version;      /* cfg.redis_prefix "version": the key layout (LAYOUT_VERSION) */
	char *channel;      /* cfg.redis_prefix "blocklist:changed": new and removed entries (store_watch) */
	struct timeval connect_tv, command_tv;
	int command_timeout_ms;
	bool guard_sigpipe;
	sentinel *sentinels; /* none: connect to cfg's host/port or socket */
	size_t nsentinels;

	pthread_mutex_t lock; /* guards the fields below and conns[].busy */
	pthread_cond_t freed;
	rconn conns[POOL_SIZE];
	bool down;           /* the last connection attempt or command failed */
	int64_t retry_at_ms; /* while down: no connection attempt before this (monotonic) */
	int backoff_ms;
	char down_reason[256];
	size_t sentinel_next;  /* the Sentinel that answered last: asked first */
	char master_host[256]; /* the master the Sentinels named last */
	int master_port;
	unsigned master_gen;               /* bumped when that address changes */
	int64_t recheck_at_ms;             /* ask the Sentinels again after this (monotonic) */
	bool upgrade_pending;              /* the layout upgrade has yet to run (see upgrade()) */
	atomic_uint_fast64_t script_trips; /* store_script_round_trips */

	/* The local view (store.redis.local_view; NULL: off), fed by a thread started by the first lookup. */
	redis_view *view;
	pthread_t view_thread;
	atomic_bool view_started, view_stop;
	atomic_int view_fd; /* the view's subscribed socket, -1 when none */
	int view_wake[2];   /* a pipe: written to stop the thread at once */
	/*
	 * The view thread's connection and its state: the thread holds it for
	 * everything it does on the connection; a lookup that finds a message
	 * waiting takes it if it is free and applies the message itself.
	 */
	pthread_mutex_t view_io;
	struct view_thread *view_vt;

	/*
	 * The daemon's copies of the buckets, the relay check's sets and its
	 * trip markers (store_write_behind; NULL: none), written behind by the
	 * view's thread on a connection of its own whose client tracking
	 * (NOLOOP, redirected to the view's) has Redis tell the view of every
	 * other writer's change: see "hot copies" below.
	 */
	sqlite_hot *hot;
	atomic_bool hot_tracked;          /* that connection tracks: the copies may answer */
	atomic_bool hot_no_mget;          /* the server refuses MGET (an ACL): the writes behind GET */
	_Atomic int64_t hot_offset_ms;    /* Redis's clock minus this host's (CLOCK_REALTIME) */
	_Atomic int64_t hot_skew_ms;      /* tests: the copies' clock this much further ahead */
	atomic_uint_fast64_t hot_answers; /* queries answered from the copies (tests, debug log) */
};

/* --- SIGPIPE ------------------------------------------------------------- */

/*
 * hiredis writes with write(2); a server that went away would kill the
 * process with SIGPIPE unless the program ignores it. Block it on this
 * thread while a command runs and swallow one that we raised.
 */
typedef struct pipe_guard {
	bool active;
	bool pending_before;
	sigset_t old;
} pipe_guard;

static void pipe_guard_begin(pipe_guard *g, bool active)
{
	sigset_t set, pending;

	g->active = active;
	if (!active)
		return;
	sigemptyset(&set);
	sigaddset(&set, SIGPIPE);
	sigpending(&pending);
	g->pending_before = sigismember(&pending, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &set, &g->old);
}

static void pipe_guard_end(pipe_guard *g)
{
	sigset_t set, pending;
	struct timespec zero = {0, 0};

	if (!g->active)
		return;
	sigemptyset(&set);
	sigaddset(&set, SIGPIPE);
	sigpending(&pending);
	if (!g->pending_before && sigismember(&pending, SIGPIPE))
		sigtimedwait(&set, NULL, &zero);
	pthread_sigmask(SIG_SETMASK, &g->old, NULL);
}

/* One backend call run on a pooled connection; see run(). */
typedef struct op op;
typedef store_status (*op_fn)(store_backend_impl *s, rconn *rc, op *o);
struct op {
	const char *what;
	op_fn fn;
	bool no_retry; /* set by fn once it has had effects a retry would repeat */
	const char *const *keys;
	size_t nkeys;
	int64_t now;
	const store_hit *hit;
	bool *created; /* record: nkeys long, or NULL */
	const store_entry *in;
	store_entry *out;
	uint64_t count;
	store_visit_fn visit;
	void *ctx;
	char gen[24];            /* purge: the netlens rebuild's gen */
	int64_t window;          /* distinct_add (keys: the set, the member) */
	query *q;                /* kv, counter, greylist */
	const char *pattern;     /* scan_all: NULL for the blocklist's s->pattern */
	store_grey_kind kind;    /* the greylist's admin calls */
	store_grey_record *grey; /* ... their record */
	store_grey_visit_fn grey_visit;
	uint64_t limit;
	bool peek, present;             /* distinct_add: only read; ... and the member is live */
	store_distinct_visit_fn dvisit; /* distinct_list */
	pipe_guard guard;
};

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct timeval ms_to_tv(int ms)
{
	struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};

	return tv;
}

/* --- replies ------------------------------------------------------------- */

static store_status io_error(const store_backend_impl *s, const redisContext *c, const char *what)
{
	return store_set_error("%s: %s: %s", s->where, what,
	                       c->err && c->errstr[0] ? c->errstr : "connection lost");
}

/*
 * Appending to the output buffer failed (out of memory). Earlier commands
 * may be queued already, so the connection is out of step: mark it failed
 * so that it is never reused.
 */
static store_status append_failed(const store_backend_impl *s, redisContext *c, const char *what)
{
	c->err = REDIS_ERR_OOM;
	return store_set_error("%s: %s: out of memory", s->where, what);
}

/* Next reply of the pipeline; STORE_ERROR when the connection failed. */
static store_status next_reply(const store_backend_impl *s, redisContext *c, redisReply **out,
                               const char *what)
{
	void *r = NULL;

	*out = NULL;
	if (redisGetReply(c, &r) != REDIS_OK || !r) {
		if (!c->err)
			c->err = REDIS_ERR_IO; /* keep the connection from being reused */
		return io_error(s, c, what);
	}
	*out = r;
	return STORE_OK;
}

/*
 * READONLY (we reached a replica: a failover moved the master), LOADING
 * and MASTERDOWN mean "this server, not now", not "a wrong setting".
 */
static bool transient_error(const redisReply *r)
{
	static const char *const transient[] = {"READONLY", "LOADING", "MASTERDOWN"};

	if (r->type != REDIS_REPLY_ERROR)
		return false;
	for (size_t i = 0; i < sizeof(transient) / sizeof(transient[0]); i++)
		if (strncmp(r->str, transient[i], strlen(transient[i])) == 0)
			return true;
	return false;
}

/* An error reply; after a transient one the connection is marked stale so that run() replaces it. */
static store_status reply_error(const store_backend_impl *s, rconn *rc, const redisReply *r, const char *what)
{
	if (transient_error(r))
		rc->stale = true;
	if (r->type == REDIS_REPLY_ERROR)
		return store_set_error("%s: %s: %.*s", s->where, what, (int)r->len, r->str);
	return store_set_error("%s: %s: unexpected reply type %d", s->where, what, r->type);
}

static bool reply_is_str(const redisReply *r)
{
	return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS);
}

static int64_t str_to_i64(const redisReply *r)
{
	return reply_is_str(r) ? strtoll(r->str, NULL, 10) : 0;
}

static void field_from_reply(char *dst, size_t cap, const redisReply *r)
{
	store_field_copy(dst, cap, reply_is_str(r) ? r->str : NULL, reply_is_str(r) ? r->len : 0);
}

/* The values of field_names[] (an HMGET answer) into e; false when the entry does not exist. */
static bool entry_from_fields(redisReply *const *f, size_t n, const char *key, store_entry *e)
{
	if (n != NFIELDS || !reply_is_str(f[F_EXPIRES]))
		return false;
	memset(e, 0, sizeof(*e));
	store_field_copy(e->key, sizeof(e->key), key, strlen(key));
	e->expires = str_to_i64(f[F_EXPIRES]);
	e->first_seen = str_to_i64(f[F_FIRST]);
	e->last_seen = str_to_i64(f[F_LAST]);
	e->hits = reply_is_str(f[F_HITS]) ? strtoull(f[F_HITS]->str, NULL, 10) : 0;
	field_from_reply(e->trap, sizeof(e->trap), f[F_TRAP]);
	field_from_reply(e->sender, sizeof(e->sender), f[F_SENDER]);
	field_from_reply(e->recipient, sizeof(e->recipient), f[F_RCPT]);
	field_from_reply(e->client, sizeof(e->client), f[F_CLIENT]);
	field_from_reply(e->helo, sizeof(e->helo), f[F_HELO]);
	field_from_reply(e->queue_id, sizeof(e->queue_id), f[F_QID]);
	field_from_reply(e->reason, sizeof(e->reason), f[F_REASON]);
	return true;
}

static bool entry_from_reply(const redisReply *r, const char *key, store_entry *e)
{
	return r->type == REDIS_REPLY_ARRAY && entry_from_fields(r->element, r->elements, key, e);
}

/* --- commands ------------------------------------------------------------ */

/* PREFIX "bl:" key into buf (prefixlen + STORE_KEY_MAX bytes); returns its length. */
static size_t full_key(const store_backend_impl *s, const char *key, char *buf)
{
	size_t len = strlen(key);

	memcpy(buf, s->prefix, s->prefixlen);
	memcpy(buf + s->prefixlen, key, len + 1);
	return s->prefixlen + len;
}

#define TAG_MAX 8 /* "6/128" */

/* The netlens tag of a key: "4/24", "6/48", or "" when it is not a network key; returns its length. */
static size_t net_tag(const char *key, char tag[TAG_MAX])
{
	int family, len = store_net_key_len(key, &family);
	char *p = tag;

	if (len >= 0) {
		*p++ = family == 6 ? '6' : '4';
		*p++ = '/';
		if (len >= 100)
			*p++ = (char)('0' + len / 100);
		if (len >= 10)
			*p++ = (char)('0' + len / 10 % 10);
		*p++ = (char)('0' + len % 10);
	}
	*p = '\0';
	return (size_t)(p - tag);
}

/* The tags of keys[] into tags[], pointed at by argv/argvlen. */
static void net_tags(const char *const *keys, size_t nkeys, char (*tags)[TAG_MAX], const char **argv,
                     size_t *argvlen)
{
	for (size_t i = 0; i < nkeys; i++) {
		argvlen[i] = net_tag(keys[i], tags[i]);
		argv[i] = tags[i];
	}
}

static int append_hmget(redisContext *c, const char *fullkey, size_t keylen)
{
	const char *argv[2 + NFIELDS];
	size_t argvlen[2 + NFIELDS];

	argv[0] = "HMGET";
	argvlen[0] = 5;
	argv[1] = fullkey;
	argvlen[1] = keylen;
	for (int i = 0; i < NFIELDS; i++) {
		argv[2 + i] = field_names[i];
		argvlen[2 + i] = strlen(field_names[i]);
	}
	return redisAppendCommandArgv(c, 2 + NFIELDS, argv, argvlen);
}

/* u in decimal at p (20 bytes are room for any), not terminated; returns the end. */
static char *u64_decimal(char *p, uint64_t u)
{
	char digits[20];
	int k = 0;

	do
		digits[k++] = (char)('0' + u % 10);
	while ((u /= 10) > 0);
	while (k > 0)
		*p++ = digits[--k];
	return p;
}

/* v in decimal at p (24 bytes are room for any), terminated; its length. snprintf's "%lld" without the
 * formatter. */
static size_t i64_text(char *p, int64_t v)
{
	char *end = p;

	if (v < 0)
		*end++ = '-';
	end = u64_decimal(end, v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v);
	*end = '\0';
	return (size_t)(end - p);
}

/* "*N\r\n" or "$N\r\n" at p; returns the end. */
static char *resp_header(char *p, char type, size_t n)
{
	*p++ = type;
	p = u64_decimal(p, n);
	*p++ = '\r';
	*p++ = '\n';
	return p;
}

/*
 * redisAppendCommandArgv without its printf-style formatter, which was
 * most of a lookup's client CPU with its 60 arguments: the request in
 * RESP, written directly.
 */
static int append_argv(redisContext *c, int argc, const char **argv, const size_t *argvlen)
{
	char stackbuf[4096], *buf = stackbuf, *p;
	size_t total = 24;
	int rc;

	for (int i = 0; i < argc; i++)
		total += argvlen[i] + 24;
	if (total > sizeof(stackbuf) && !(buf = malloc(total)))
		return REDIS_ERR;
	p = resp_header(buf, '*', (size_t)argc);
	for (int i = 0; i < argc; i++) {
		p = resp_header(p, '$', argvlen[i]);
		memcpy(p, argv[i], argvlen[i]);
		p += argvlen[i];
		*p++ = '\r';
		*p++ = '\n';
	}
	rc = redisAppendFormattedCommand(c, buf, (size_t)(p - buf));
	if (buf != stackbuf)
		free(buf);
	return rc;
}

/* A command of plain C strings, sent and answered in one round trip. */
static store_status command(const store_backend_impl *s, redisContext *c, redisReply **out, const char *what,
                            int argc, const char **argv)
{
	size_t argvlen[16];

	for (int i = 0; i < argc; i++)
		argvlen[i] = strlen(argv[i]);
	if (redisAppendCommandArgv(c, argc, argv, argvlen) != REDIS_OK)
		return append_failed(s, c, what);
	return next_reply(s, c, out, what);
}

/*
 * EVALSHA of a script with argv[0..1] left free for the command and the
 * script; falls back to EVAL when the server does not have it (a restart,
 * SCRIPT FLUSH, a failover).
 */
static store_status eval_script(store_backend_impl *s, rconn *rc, int script, int argc, const char **argv,
                                size_t *argvlen, redisReply **out, const char *what)
{
	store_status st;

	argv[0] = "EVALSHA";
	argv[1] = rc->sha[script];
	argvlen[0] = 7;
	argvlen[1] = strlen(rc->sha[script]);
	for (int attempt = 0; attempt < 2; attempt++) {
		atomic_fetch_add(&s->script_trips, 1);
		if (append_argv(rc->ctx, argc, argv, argvlen) != REDIS_OK)
			return append_failed(s, rc->ctx, what);
		st = next_reply(s, rc->ctx, out, what);
		if (st != STORE_OK || (*out)->type != REDIS_REPLY_ERROR ||
		    strncmp((*out)->str, "NOSCRIPT", 8) != 0)
			return st;
		freeReplyObject(*out);
		*out = NULL;
		argv[0] = "EVAL";
		argv[1] = scripts[script];
		argvlen[0] = 4;
		argvlen[1] = strlen(scripts[script]);
	}
	return store_set_error("%s: %s: script not accepted", s->where, what);
}

/* --- connections --------------------------------------------------------- */

static void drop(rconn *rc)
{
	if (rc->ctx)
		redisFree(rc->ctx);
	rc->ctx = NULL;
	rc->stale = false;
}

/* A host name or address as a Sentinel gives it: printable ASCII, no blanks (it goes into log lines). */
static bool plain_host(const redisReply *h)
{
	for (size_t i = 0; i < h->len; i++) {
		unsigned char ch = (unsigned char)h->str[i];

		if (ch <= ' ' || ch >= 0x7f)
			return false;
	}
	return h->len > 0;
}

/* The address in a SENTINEL get-master-addr-by-name reply; -1 with why. */
static int master_from_reply(const redisReply *r, char *host, size_t hostlen, int *port, char *why,
                             size_t whylen)
{
	const redisReply *h, *p;
	char *end;
	long n;

	if (r->type == REDIS_REPLY_NIL) {
		snprintf(why, whylen, "does not know the master");
		return -1;
	}
	if (r->type == REDIS_REPLY_ERROR) {
		snprintf(why, whylen, "%.*s", (int)r->len, r->str);
		return -1;
	}
	if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || !reply_is_str(r->element[0]) ||
	    !reply_is_str(r->element[1]) || !plain_host(r->element[0]) || r->element[0]->len >= hostlen) {
		snprintf(why, whylen, "unexpected answer");
		return -1;
	}
	h = r->element[0], p = r->element[1];
	n = strtol(p->str, &end, 10);
	if (p->len == 0 || *end != '\0' || n < 1 || n > 65535) {
		snprintf(why, whylen, "bad port in the answer");
		return -1;
	}
	memcpy(host, h->str, h->len);
	host[h->len] = '\0';
	*port = (int)n;
	return 0;
}

/* Ask one Sentinel where the master is; -1 with why. */
static int ask_sentinel(const store_backend_impl *s, const sentinel *sn, char *host, size_t hostlen,
                        int *port, char *why, size_t whylen)
{
	const char *argv[3] = {"SENTINEL", "get-master-addr-by-name", s->cfg.redis_sentinel_master};
	redisContext *c = redisConnectWithTimeout(sn->host, sn->port, s->connect_tv);
	redisReply *r = NULL;
	char msg[300];
	int rc = -1;

	if (!c || c->err)
		snprintf(why, whylen, "sentinel %s: cannot connect: %s", sn->addr,
		         c ? c->errstr : "out of memory");
	else if (redisSetTimeout(c, s->command_tv) != REDIS_OK || !(r = redisCommandArgv(c, 3, argv, NULL)))
		snprintf(why, whylen, "sentinel %s: %s", sn->addr, c->errstr[0] ? c->errstr : "no answer");
	else if ((rc = master_from_reply(r, host, hostlen, port, msg, sizeof(msg))) < 0)
		snprintf(why, whylen, "sentinel %s: %.200s", sn->addr, msg);
	if (r)
		freeReplyObject(r);
	if (c)
		redisFree(c);
	return rc;
}

/*
 * Remember the Sentinel that answered and the master it named; returns
 * the master's generation.
 */
static unsigned note_master(store_backend_impl *s, size_t k, const char *host, int port)
{
	unsigned gen;

	pthread_mutex_lock(&s->lock);
	s->sentinel_next = k;
	s->recheck_at_ms = now_ms() + SENTINEL_RECHECK_MS;
	if (s->master_port != port || strcmp(s->master_host, host) != 0) {
		snprintf(s->master_host, sizeof(s->master_host), "%s", host);
		s->master_port = port;
		s->master_gen++;
		/* A new master is worth a try at once, whatever the old one's back-off. */
		s->retry_at_ms = now_ms();
		s->backoff_ms = BACKOFF_MIN_MS;
	}
	gen = s->master_gen;
	pthread_mutex_unlock(&s->lock);
	return gen;
}

/* The master's address from the first Sentinel that names it, and its generation. */
static int find_master(store_backend_impl *s, char *host, size_t hostlen, int *port, unsigned *gen, char *err,
                       size_t errlen)
{
	char why[512] = "";
	size_t first;

	pthread_mutex_lock(&s->lock);
	first = s->sentinel_next;
	pthread_mutex_unlock(&s->lock);
	for (size_t i = 0; i < s->nsentinels; i++) {
		size_t k = (first + i) % s->nsentinels;

		if (ask_sentinel(s, &s->sentinels[k], host, hostlen, port, why, sizeof(why)) == 0) {
			*gen = note_master(s, k, host, *port);
			return 0;
		}
	}
	snprintf(err, errlen, "%s: no sentinel named the master (%zu asked; last: %s)", s->where,
	         s->nsentinels, why);
	return -1;
}

/*
 * Once a second at most, one thread asks the Sentinels again; a new
 * address makes acquire() replace connections to the old one. When no
 * Sentinel answers, the current master stays: its own failure will tell.
 */
static void recheck_master(store_backend_impl *s)
{
	char host[256], err[512];
	int64_t t = now_ms();
	unsigned gen;
	bool due;
	int port;

	if (s->nsentinels == 0)
		return;
	pthread_mutex_lock(&s->lock);
	due = s->master_gen > 0 && t >= s->recheck_at_ms;
	if (due)
		s->recheck_at_ms = t + SENTINEL_RECHECK_MS;
	pthread_mutex_unlock(&s->lock);
	if (due)
		find_master(s, host, sizeof(host), &port, &gen, err, sizeof(err));
}

static redisContext *dial(store_backend_impl *s, rconn *rc, char *err, size_t errlen)
{
	char host[256], to[300] = "";
	redisContext *c;
	int port;

	if (s->nsentinels > 0) {
		if (find_master(s, host, sizeof(host), &port, &rc->gen, err, errlen) < 0)
			return NULL;
		snprintf(to, sizeof(to), strchr(host, ':') ? " to [%s]:%d" : " to %s:%d", host, port);
		c = redisConnectWithTimeout(host, port, s->connect_tv);
	} else if (s->cfg.redis_socket && s->cfg.redis_socket[0]) {
		c = redisConnectUnixWithTimeout(s->cfg.redis_socket, s->connect_tv);
	} else {
		c = redisConnectWithTimeout(s->cfg.redis_host, s->cfg.redis_port, s->connect_tv);
	}
	if (!c) {
		snprintf(err, errlen, "%s: out of memory", s->where);
		return NULL;
	}
	if (c->err) {
		snprintf(err, errlen, "%s: cannot connect%s: %s", s->where, to, c->errstr);
		redisFree(c);
		return NULL;
	}
	if (redisSetTimeout(c, s->command_tv) != REDIS_OK) {
		snprintf(err, errlen, "%s: cannot set the command timeout: %s", s->where, c->errstr);
		redisFree(c);
		return NULL;
	}
	if (c->connection_type == REDIS_CONN_TCP)
		redisEnableKeepAlive(c);
	return c;
}

/* The commands a new connection sends first. */
typedef struct setup_cmds {
	const char *argv[3 + NSCRIPTS][3];
	int argc[3 + NSCRIPTS];
	int n;
	int role; /* index of ROLE, -1 when not sent */
	char db[16];
} setup_cmds;

static void setup_cmds_init(const store_backend_impl *s, setup_cmds *c)
{
	c->n = 0;
	c->role = -1;
	if (s->cfg.redis_password && s->cfg.redis_password[0]) {
		c->argv[c->n][0] = "AUTH", c->argv[c->n][1] = s->cfg.redis_password, c->argc[c->n++] = 2;
	}
	if (s->cfg.redis_db != 0) {
		snprintf(c->db, sizeof(c->db), "%d", s->cfg.redis_db);
		c->argv[c->n][0] = "SELECT", c->argv[c->n][1] = c->db, c->argc[c->n++] = 2;
	}
	if (s->nsentinels > 0) {
		/* A Sentinel's answer may be out of date: make sure this is the master. */
		c->role = c->n;
		c->argv[c->n][0] = "ROLE", c->argc[c->n++] = 1;
	}
	for (int i = 0; i < NSCRIPTS; i++) {
		c->argv[c->n][0] = "SCRIPT", c->argv[c->n][1] = "LOAD", c->argv[c->n][2] = scripts[i];
		c->argc[c->n++] = 3;
	}
}

static bool role_is_master(const redisReply *r)
{
	return r->type == REDIS_REPLY_ARRAY && r->elements > 0 && reply_is_str(r->element[0]) &&
	       strcmp(r->element[0]->str, "master") == 0;
}

/*
 * One answer to setup command i: 1 when it refuses a setting, -1 when the
 * server cannot serve now (not the master, loading), 0 when fine. The
 * SCRIPT LOADs (last) give the scripts' SHA1s.
 */
static int setup_reply(const store_backend_impl *s, rconn *rc, const setup_cmds *c, int i,
                       const redisReply *r, char *err, size_t errlen)
{
	int first_script = c->n - NSCRIPTS;

	if (r->type == REDIS_REPLY_ERROR) {
		/* Name the command, never its argument (the password). */
		snprintf(err, errlen, "%s: %s refused: %.*s", s->where, c->argv[i][0], (int)r->len, r->str);
		if (!transient_error(r))
			return 1;
		rc->stale = true;
		return -1;
	}
	if (i == c->role && !role_is_master(r)) {
		rc->stale = true;
		snprintf(err, errlen, "%s: the server the sentinels named is not a master (role %.16s)",
		         s->where,
		         r->type == REDIS_REPLY_ARRAY && r->elements > 0 && reply_is_str(r->element[0])
		             ? r->element[0]->str
		             : "unknown");
		return -1;
	}
	if (i >= first_script && r->type == REDIS_REPLY_STRING && r->len == SHA_LEN)
		memcpy(rc->sha[i - first_script], r->str, SHA_LEN + 1);
	return 0;
}

/* Read every answer to setup_cmds; the first problem decides the result (see setup_reply). */
static int setup_replies(const store_backend_impl *s, rconn *rc, const setup_cmds *c, char *err,
                         size_t errlen)
{
	int result = 0;

	for (int i = 0; i < c->n; i++) {
		redisReply *r;
		int one;

		if (next_reply(s, rc->ctx, &r, c->argv[i][0]) != STORE_OK) {
			snprintf(err, errlen, "%s", store_last_error());
			return -1;
		}
		one = setup_reply(s, rc, c, i, r, result ? NULL : err, result ? 0 : errlen);
		if (!result)
			result = one;
		freeReplyObject(r);
	}
	return result;
}

/*
 * AUTH, SELECT, ROLE (with Sentinels) and SCRIPT LOAD, pipelined. Returns
 * 1 when the server refused a setting (AUTH, SELECT: a configuration
 * error), -1 when the connection failed or the server cannot serve now,
 * 0 when ready.
 */
static int handshake(const store_backend_impl *s, rconn *rc, char *err, size_t errlen)
{
	setup_cmds c;

	setup_cmds_init(s, &c);
	for (int i = 0; i < c.n; i++) {
		size_t lens[3];

		for (int j = 0; j < c.argc[i]; j++)
			lens[j] = strlen(c.argv[i][j]);
		if (redisAppendCommandArgv(rc->ctx, c.argc[i], c.argv[i], lens) != REDIS_OK) {
			snprintf(err, errlen, "%s: out of memory", s->where);
			return -1;
		}
	}
	return setup_replies(s, rc, &c, err, errlen);
}

/* The Sentinel asked first named a server that is not the master (yet): ask the next one first. */
static void skip_sentinel(store_backend_impl *s)
{
	pthread_mutex_lock(&s->lock);
	s->sentinel_next = (s->sentinel_next + 1) % s->nsentinels;
	pthread_mutex_unlock(&s->lock);
}

/* Connect rc; 0 on success, 1 (server refused a setting) or -1 (no connection) with err. */
static int conn_connect(store_backend_impl *s, rconn *rc, char *err, size_t errlen)
{
	int result;

	rc->ctx = dial(s, rc, err, errlen);
	if (!rc->ctx)
		return -1;
	result = handshake(s, rc, err, errlen);
	if (result != 0 && rc->stale && s->nsentinels > 1)
		skip_sentinel(s);
	if (result != 0)
		drop(rc);
	return result;
}

/* After a failure: no new connection for a while, and a longer while each time. */
static void note_failure(store_backend_impl *s, const char *why)
{
	pthread_mutex_lock(&s->lock);
	s->down = true;
	s->retry_at_ms = now_ms() + s->backoff_ms;
	s->backoff_ms = s->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : s->backoff_ms * 2;
	snprintf(s->down_reason, sizeof(s->down_reason), "%.*s", (int)sizeof(s->down_reason) - 1, why);
	pthread_mutex_unlock(&s->lock);
}

/*
 * May this thread try to connect now? While the server is down, one
 * thread at a time may, once the back-off has passed: it claims the
 * attempt so that the others fail fast meanwhile.
 */
static bool may_connect(store_backend_impl *s)
{
	bool ok;
	int64_t t = now_ms();

	pthread_mutex_lock(&s->lock);
	ok = !s->down || t >= s->retry_at_ms;
	if (ok && s->down)
		s->retry_at_ms = t + s->backoff_ms;
	else
		store_set_error("%s (next attempt in %lld ms)", s->down_reason,
		                (long long)(s->retry_at_ms - t));
	pthread_mutex_unlock(&s->lock);
	return ok;
}

static void upgrade(store_backend_impl *s, rconn *rc); /* below: the upgrade to typed keys */

static int ensure_connected(store_backend_impl *s, rconn *rc)
{
	char err[512];

	if (rc->ctx)
		return 0;
	if (!may_connect(s))
		return -1;
	if (conn_connect(s, rc, err, sizeof(err)) != 0) {
		note_failure(s, err);
		store_set_error("%s", err);
		return -1;
	}
	pthread_mutex_lock(&s->lock);
	s->down = false;
	s->backoff_ms = BACKOFF_MIN_MS;
	pthread_mutex_unlock(&s->lock);
	upgrade(s, rc);
	return 0;
}

/* A free slot, marked busy; a connection to a master the Sentinels no longer name is dropped. */
static rconn *acquire(store_backend_impl *s)
{
	rconn *rc = NULL;
	bool outdated;

	pthread_mutex_lock(&s->lock);
	for (;;) {
		/* Prefer a connected slot, so that a few threads do not each open one. */
		for (int i = 0; i < POOL_SIZE && !rc; i++)
			if (!s->conns[i].busy && s->conns[i].ctx)
				rc = &s->conns[i];
		for (int i = 0; i < POOL_SIZE && !rc; i++)
			if (!s->conns[i].busy)
				rc = &s->conns[i];
		if (rc)
			break;
		pthread_cond_wait(&s->freed, &s->lock);
	}
	rc->busy = true;
	outdated = rc->ctx && rc->gen != s->master_gen;
	pthread_mutex_unlock(&s->lock);
	if (outdated)
		drop(rc);
	return rc;
}

static void release(store_backend_impl *s, rconn *rc)
{
	pthread_mutex_lock(&s->lock);
	rc->busy = false;
	pthread_cond_signal(&s->freed);
	pthread_mutex_unlock(&s->lock);
}

static bool timed_out(const store_backend_impl *s, const redisContext *c, int saved_errno, int64_t elapsed_ms)
{
#ifdef REDIS_ERR_TIMEOUT
	if (c->err == REDIS_ERR_TIMEOUT)
		return true;
#else
	(void)c;
#endif
	return saved_errno == EAGAIN || saved_errno == EWOULDBLOCK || elapsed_ms >= s->command_timeout_ms;
}

/*
 * Run o->fn on a pooled connection. A connection-level failure drops the
 * connection; when it was an old connection failing at once (closed by
 * the server while idle), a fresh one gets one more try.
 */
static store_status run(store_backend_impl *s, op *o)
{
	rconn *rc;
	store_status st = STORE_ERROR;

	pipe_guard_begin(&o->guard, s->guard_sigpipe);
	recheck_master(s);
	rc = acquire(s);
	for (int attempt = 0; attempt < 2; attempt++) {
		bool fresh = rc->ctx == NULL;
		int64_t start = now_ms();
		int saved_errno;

		if (ensure_connected(s, rc) < 0)
			break;
		errno = 0;
		st = o->fn(s, rc, o);
		saved_errno = errno;
		if (st != STORE_ERROR || (!rc->ctx->err && !rc->stale))
			break; /* done, or an error reply on a healthy connection */
		if (fresh || o->no_retry ||
		    (rc->ctx->err && timed_out(s, rc->ctx, saved_errno, now_ms() - start))) {
			note_failure(s, store_last_error());
			drop(rc);
			break;
		}
		drop(rc);
	}
	pipe_guard_end(&o->guard);
	release(s, rc);
	return st;
}

/* --- operations ---------------------------------------------------------- */

/*
 * PREFIX "bl:" before each of keys[], in one allocation that the caller
 * frees; argv[i], argvlen[i] point at each. NULL when out of memory.
 */
static char *full_keys(const store_backend_impl *s, const char *const *keys, size_t nkeys, const char **argv,
                       size_t *argvlen)
{
	size_t total = 1;
	char *buf, *p;

	for (size_t i = 0; i < nkeys; i++)
		total += s->prefixlen + strlen(keys[i]) + 1;
	if (!(buf = malloc(total)))
		return NULL;
	p = buf;
	for (size_t i = 0; i < nkeys; i++) {
		argv[i] = p;
		argvlen[i] = full_key(s, keys[i], p);
		p += argvlen[i] + 1;
	}
	return buf;
}

/* The lookup script's answer: 0, or the position of the key found and its fields. */
static store_status lookup_answer(const store_backend_impl *s, rconn *rc, op *o, const redisReply *r)
{
	const redisReply *pos;

	if (r->type == REDIS_REPLY_INTEGER && r->integer == 0)
		return STORE_NOTFOUND;
	if (r->type != REDIS_REPLY_ARRAY || r->elements != 1 + NFIELDS)
		return reply_error(s, rc, r, "lookup");
	pos = r->element[0];
	if (pos->type == REDIS_REPLY_INTEGER && pos->integer >= 1 && (size_t)pos->integer <= o->nkeys &&
	    entry_from_fields(r->element + 1, NFIELDS, o->keys[pos->integer - 1], o->out))
		return STORE_OK;
	return store_set_error("%s: lookup: unexpected answer", s->where);
}

#define LOOKUP_ARGC (5 + 2 * STORE_LOOKUP_MAX)

/* One script: EVALSHA sha N+1 netlens keys... now tags... */
static store_status op_lookup(store_backend_impl *s, rconn *rc, op *o)
{
	const char *argv[LOOKUP_ARGC];
	size_t argvlen[LOOKUP_ARGC], n = 4 + o->nkeys;
	char nkeys[24], now[24], tags[STORE_LOOKUP_MAX][TAG_MAX];
	char *keys = full_keys(s, o->keys, o->nkeys, argv + 4, argvlen + 4);
	redisReply *r = NULL;
	store_status st;

	if (!keys)
		return store_set_error("%s: lookup: out of memory", s->where);
	snprintf(nkeys, sizeof(nkeys), "%zu", o->nkeys + 1);
	snprintf(now, sizeof(now), "%lld", (long long)o->now);
	argv[2] = nkeys, argvlen[2] = strlen(nkeys);
	argv[3] = s->netlens, argvlen[3] = strlen(s->netlens);
	argv[n] = now, argvlen[n++] = strlen(now);
	net_tags(o->keys, o->nkeys, tags, argv + n, argvlen + n);
	n += o->nkeys;
	st = eval_script(s, rc, SCRIPT_LOOKUP, (int)n, argv, argvlen, &r, "lookup");
	if (st == STORE_OK)
		st = lookup_answer(s, rc, o, r);
	freeReplyObject(r);
	free(keys);
	return st;
}

#define RECORD_ARGS 9

/* ARGV of the record script before the tags: now, expires, the provenance capped as a store_entry holds it.
 */
static size_t record_values(const store_hit *h, char nums[2][24], const char **argv, size_t *argvlen)
{
	static const size_t caps[RECORD_ARGS] = {24,
	                                         24,
	                                         STORE_FIELD_CAP(trap),
	                                         STORE_FIELD_CAP(sender),
	                                         STORE_FIELD_CAP(recipient),
	                                         STORE_FIELD_CAP(client),
	                                         STORE_FIELD_CAP(helo),
	                                         STORE_FIELD_CAP(queue_id),
	                                         STORE_FIELD_CAP(reason)};
	const char *vals[RECORD_ARGS] = {nums[0],   nums[1], h->trap,     h->sender,          h->recipient,
	                                 h->client, h->helo, h->queue_id, store_hit_reason(h)};

	snprintf(nums[0], 24, "%lld", (long long)h->now);
	snprintf(nums[1], 24, "%lld", (long long)(h->now + h->ttl));
	for (int i = 0; i < RECORD_ARGS; i++) {
		argv[i] = vals[i] ? vals[i] : "";
		argvlen[i] = store_field_len(argv[i], caps[i]);
	}
	return RECORD_ARGS;
}

#define RECORD_ARGC (4 + 2 * STORE_RECORD_MAX + RECORD_ARGS + 1)

/* One script: EVALSHA sha N+1 netlens keys... values... tags... */
static store_status op_record(store_backend_impl *s, rconn *rc, op *o)
{
	const char *argv[RECORD_ARGC];
	size_t argvlen[RECORD_ARGC], n = 4 + o->nkeys;
	char nkeys[24], nums[2][24], tags[STORE_RECORD_MAX][TAG_MAX];
	char *keys = full_keys(s, o->keys, o->nkeys, argv + 4, argvlen + 4);
	redisReply *r = NULL;
	store_status st;

	if (!keys)
		return store_set_error("%s: record: out of memory", s->where);
	snprintf(nkeys, sizeof(nkeys), "%zu", o->nkeys + 1);
	argv[2] = nkeys, argvlen[2] = strlen(nkeys);
	argv[3] = s->netlens, argvlen[3] = strlen(s->netlens);
	n += record_values(o->hit, nums, argv + n, argvlen + n);
	net_tags(o->keys, o->nkeys, tags, argv + n, argvlen + n);
	n += o->nkeys;
	argv[n] = s->channel, argvlen[n++] = strlen(s->channel);
	st = eval_script(s, rc, SCRIPT_RECORD, (int)n, argv, argvlen, &r, "record");
	if (st == STORE_OK && r->type != REDIS_REPLY_INTEGER)
		st = reply_error(s, rc, r, "record");
	for (size_t i = 0; st == STORE_OK && o->created && i < o->nkeys; i++)
		o->created[i] = ((unsigned long long)r->integer >> i) & 1;
	freeReplyObject(r);
	free(keys);
	return st;
}

#define DISTINCT_KEY_MAX_S ((int64_t)100 * 365 * 86400)

/* One script: EVALSHA sha 1 PREFIX"ds:"set now expires member limit window-ms. */
static store_status op_distinct(store_backend_impl *s, rconn *rc, op *o)
{
	const char *argv[10];
	size_t argvlen[10];
	char key[KEYBUF], nums[4][24];
	redisReply *r = NULL;
	store_status st;
	int keylen =
	    snprintf(key, sizeof(key), "%sds:%s", s->cfg.redis_prefix ? s->cfg.redis_prefix : "", o->keys[0]);

	snprintf(nums[0], 24, "%lld", (long long)o->now);
	snprintf(nums[1], 24, "%lld", (long long)(o->now + o->window));
	snprintf(nums[2], 24, "%llu", (unsigned long long)o->limit);
	/* The key's expiry in ms; a window of over a century keeps it a century (PEXPIRE's range). */
	snprintf(nums[3], 24, "%lld",
	         (long long)(o->window < DISTINCT_KEY_MAX_S ? o->window : DISTINCT_KEY_MAX_S) * 1000);
	argv[2] = "1", argvlen[2] = 1;
	argv[3] = key, argvlen[3] = (size_t)keylen;
	argv[4] = nums[0], argvlen[4] = strlen(nums[0]);
	argv[5] = nums[1], argvlen[5] = strlen(nums[1]);
	argv[6] = o->keys[1], argvlen[6] = strlen(o->keys[1]);
	argv[7] = nums[2], argvlen[7] = strlen(nums[2]);
	argv[8] = nums[3], argvlen[8] = strlen(nums[3]);
	argv[9] = o->peek ? "peek" : "add", argvlen[9] = strlen(argv[9]);
	st = eval_script(s, rc, SCRIPT_DISTINCT, 10, argv, argvlen, &r, "distinct");
	if (st == STORE_OK && o->peek &&
	    (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || r->element[0]->type != REDIS_REPLY_INTEGER ||
	     r->element[1]->type != REDIS_REPLY_INTEGER)) {
		st = reply_error(s, rc, r, "distinct peek");
	} else if (st == STORE_OK && o->peek) {
		o->count = (uint64_t)r->element[0]->integer;
		o->present = r->element[1]->integer != 0;
	} else if (st == STORE_OK && r->type != REDIS_REPLY_INTEGER) {
		st = reply_error(s, rc, r, "distinct");
	} else if (st == STORE_OK) {
		o->count = (uint64_t)r->integer;
	}
	freeReplyObject(r);
	return st;
}

/* ZREVRANGEBYSCORE PREFIX"ds:"set +inf (now WITHSCORES: the live members, latest expiry first. */
static store_status op_distinct_list(store_backend_impl *s, rconn *rc, op *o)
{
	char key[KEYBUF], from[32];
	const char *argv[5] = {"ZREVRANGEBYSCORE", key, "+inf", from, "WITHSCORES"};
	redisReply *r;
	store_status st = STORE_OK;

	snprintf(key, sizeof(key), "%sds:%s", s->cfg.redis_prefix ? s->cfg.redis_prefix : "", o->keys[0]);
	snprintf(from, sizeof(from), "(%lld", (long long)o->now);
	if (command(s, rc->ctx, &r, "distinct list", 5, argv) != STORE_OK)
		return STORE_ERROR;
	if (r->type != REDIS_REPLY_ARRAY || r->elements % 2 != 0) {
		st = reply_error(s, rc, r, "distinct list");
		freeReplyObject(r);
		return st;
	}
	for (size_t i = 0; i + 1 < r->elements; i += 2) {
		const redisReply *m = r->element[i], *score = r->element[i + 1];

		if (m->type != REDIS_REPLY_STRING || score->type != REDIS_REPLY_STRING) {
			st = reply_error(s, rc, r, "distinct list");
			break;
		}
		if (o->dvisit(m->str, strtoll(score->str, NULL, 10), o->ctx) != 0)
			break;
	}
	freeReplyObject(r);
	return st;
}

static store_status op_distinct_clear(store_backend_impl *s, rconn *rc, op *o)
{
	char key[KEYBUF];
	const char *argv[2] = {"DEL", key};
	redisReply *r;
	store_status st;

	snprintf(key, sizeof(key), "%sds:%s", s->cfg.redis_prefix ? s->cfg.redis_prefix : "", o->keys[0]);
	if (command(s, rc->ctx, &r, "distinct clear", 2, argv) != STORE_OK)
		return STORE_ERROR;
	if (r->type != REDIS_REPLY_INTEGER)
		st = reply_error(s, rc, r, "distinct clear");
	else
		st = r->integer > 0 ? STORE_OK : STORE_NOTFOUND;
	freeReplyObject(r);
	return st;
}

/* A reply array of n elements whose element i is an integer. */
static bool reply_ints(const redisReply *r, size_t n, size_t i)
{
	return r->type == REDIS_REPLY_ARRAY && r->elements == n && r->element[i]->type == REDIS_REPLY_INTEGER;
}

/*
 * PREFIX kind ":" ns ":" key into buf, as snprintf would (the length it
 * needs; cut short and terminated when len is too small), without its
 * formatter: a write behind names every bucket it writes this way, and
 * snprintf was most of a bucket's cost there.
 */
static int ns_key(const store_backend_impl *s, char *buf, size_t len, const char *kind, const char *ns,
                  const char *key)
{
	const char *part[5] = {s->cfg.redis_prefix ? s->cfg.redis_prefix : "", kind, ":", ns, ":"};
	size_t at = 0;

	for (int i = 0; i < 6; i++) {
		const char *p = i < 5 ? part[i] : key;
		size_t n = strlen(p);

		if (at < len)
			memcpy(buf + at, p, at + n < len ? n : len - at);
		at += n;
	}
	if (len > 0)
		buf[at < len ? at : len - 1] = '\0';
	return at > INT_MAX ? INT_MAX : (int)at;
}

/*
 * The EVALSHA of one kv, counter or distinct query, argv[0..1] left to
 * eval_script or the pipeline: sha 1 PREFIX"kv:"ns":"key op value ttl-ms,
 * sha 1 PREFIX"ctr:"ns":"key emission-ms burst cost, or op_distinct's.
 */
typedef struct script_call {
	int script;
	int argc;
	const char *argv[10];
	size_t argvlen[10];
	char key[KEYBUF + QUERY_NS_MAX];
	char nums[4][24];
} script_call;

static void kv_call(const store_backend_impl *s, const query *q, script_call *c)
{
	static const char *const ops[] = {"get", "put", "new", "del"};
	const char *value = q->u.kv.value ? q->u.kv.value : "";
	int keylen = ns_key(s, c->key, sizeof(c->key), "kv", q->u.kv.ns, q->u.kv.key);

	c->script = SCRIPT_KV;
	c->argc = 7;
	snprintf(c->nums[0], 24, "%lld", (long long)q->u.kv.ttl_ms);
	c->argv[2] = "1", c->argvlen[2] = 1;
	c->argv[3] = c->key, c->argvlen[3] = (size_t)keylen;
	c->argv[4] = ops[q->u.kv.op], c->argvlen[4] = 3;
	c->argv[5] = value, c->argvlen[5] = strlen(value);
	c->argv[6] = c->nums[0], c->argvlen[6] = strlen(c->nums[0]);
}

static void counter_call(const store_backend_impl *s, const query *q, script_call *c)
{
	int keylen = ns_key(s, c->key, sizeof(c->key), "ctr", q->u.counter.ns, q->u.counter.key);

	c->script = SCRIPT_COUNTER;
	c->argc = 8;
	snprintf(c->nums[0], 24, "%lld", (long long)q->u.counter.emission_ms);
	snprintf(c->nums[1], 24, "%llu", (unsigned long long)q->u.counter.burst);
	snprintf(c->nums[2], 24, "%llu", (unsigned long long)q->u.counter.cost);
	c->argv[2] = "1", c->argvlen[2] = 1;
	c->argv[3] = c->key, c->argvlen[3] = (size_t)keylen;
	for (int i = 0; i < 3; i++)
		c->argv[4 + i] = c->nums[i], c->argvlen[4 + i] = strlen(c->nums[i]);
	c->argv[7] = q->u.counter.debt ? "1" : "0", c->argvlen[7] = 1;
}

/* A distinct set's peek or add (QUERY_DISTINCT_ADD), as op_distinct writes it. */
static void distinct_call(const store_backend_impl *s, const query *q, script_call *c)
{
	int64_t window = q->u.distinct.window;
	/* store_clock: now 0 has the script take Redis TIME (and the expiry from it), as op_distinct's
	 * callers. */
	int64_t now = q->u.distinct.store_clock ? STORE_NOW_SERVER : q->u.distinct.now;
	int keylen = snprintf(c->key, sizeof(c->key), "%sds:%s",
	                      s->cfg.redis_prefix ? s->cfg.redis_prefix : "", q->u.distinct.key);

	c->script = SCRIPT_DISTINCT;
	c->argc = 10;
	snprintf(c->nums[0], 24, "%lld", (long long)now);
	snprintf(c->nums[1], 24, "%lld", (long long)(now + window));
	snprintf(c->nums[2], 24, "%llu", (unsigned long long)q->u.distinct.limit);
	snprintf(c->nums[3], 24, "%lld",
	         (long long)(window < DISTINCT_KEY_MAX_S ? window : DISTINCT_KEY_MAX_S) * 1000);
	c->argv[2] = "1", c->argvlen[2] = 1;
	c->argv[3] = c->key,
	c->argvlen[3] = keylen > 0 && (size_t)keylen < sizeof(c->key) ? (size_t)keylen : 0;
	c->argv[4] = c->nums[0], c->argvlen[4] = strlen(c->nums[0]);
	c->argv[5] = c->nums[1], c->argvlen[5] = strlen(c->nums[1]);
	c->argv[6] = q->u.distinct.member, c->argvlen[6] = strlen(q->u.distinct.member);
	c->argv[7] = c->nums[2], c->argvlen[7] = strlen(c->nums[2]);
	c->argv[8] = c->nums[3], c->argvlen[8] = strlen(c->nums[3]);
	c->argv[9] = q->u.distinct.peek ? "peek" : "add", c->argvlen[9] = strlen(c->argv[9]);
}

static void script_call_of(const store_backend_impl *s, const query *q, script_call *c)
{
	if (q->kind == QUERY_KV)
		kv_call(s, q, c);
	else if (q->kind == QUERY_COUNTER)
		counter_call(s, q, c);
	else
		distinct_call(s, q, c);
}

static const char *script_what(const query *q)
{
	return q->kind == QUERY_KV ? "kv" : q->kind == QUERY_COUNTER ? "counter" : "distinct";
}

/* The query's answer from its script's reply; STORE_ERROR (and a message) for an unexpected reply. */
static store_status script_answer(const store_backend_impl *s, rconn *rc, const redisReply *r, query *q)
{
	if (q->kind == QUERY_DISTINCT_ADD && q->u.distinct.peek) {
		if (!(reply_ints(r, 2, 0) && reply_ints(r, 2, 1)))
			return reply_error(s, rc, r, "distinct peek");
		q->u.distinct.count = (uint64_t)r->element[0]->integer;
		q->u.distinct.present = r->element[1]->integer != 0;
		return STORE_OK;
	}
	if (q->kind == QUERY_DISTINCT_ADD) {
		if (r->type != REDIS_REPLY_INTEGER)
			return reply_error(s, rc, r, "distinct");
		q->u.distinct.count = (uint64_t)r->integer;
		q->u.distinct.capped = false;
		return STORE_OK;
	}
	if (q->kind == QUERY_KV) {
		if (!(reply_ints(r, 3, 0) && reply_is_str(r->element[1]) &&
		      r->element[2]->type == REDIS_REPLY_INTEGER))
			return reply_error(s, rc, r, "kv");
		q->u.kv.found = r->element[0]->integer != 0;
		store_field_copy(q->u.kv.old, sizeof(q->u.kv.old), r->element[1]->str,
		                 store_field_len(r->element[1]->str, sizeof(q->u.kv.old)));
		q->u.kv.expires_ms = r->element[2]->integer;
		return STORE_OK;
	}
	if (!(reply_ints(r, 4, 0) && reply_ints(r, 4, 1) && reply_ints(r, 4, 2) && reply_ints(r, 4, 3)))
		return reply_error(s, rc, r, "counter");
	q->u.counter.allowed = r->element[0]->integer != 0;
	q->u.counter.retry_after_ms = r->element[1]->integer;
	q->u.counter.remaining = r->element[2]->integer > 0 ? (uint64_t)r->element[2]->integer : 0;
	return STORE_OK;
}

/* A bucket charged twice is worse than an error: no retry once a charge may have gone out. */
static bool charges(const query *q)
{
	return q->kind == QUERY_COUNTER && q->u.counter.cost > 0;
}

/* One query, one round trip (EVALSHA, EVAL when the server lacks the script). */
static store_status op_script(store_backend_impl *s, rconn *rc, op *o)
{
	script_call c;
	redisReply *r = NULL;
	store_status st;

	script_call_of(s, o->q, &c);
	st = eval_script(s, rc, c.script, c.argc, c.argv, c.argvlen, &r, o->what);
	if (st == STORE_OK)
		st = script_answer(s, rc, r, o->q);
	if (charges(o->q))
		o->no_retry = true;
	freeReplyObject(r);
	return st;
}

/*
 * Several kv and counter queries (o->q[0 .. o->nkeys - 1]), pipelined:
 * every EVALSHA written, then every reply read, one round trip for the
 * lot. Each query answers for itself (its status); a query whose script
 * the server lacks (NOSCRIPT: a restart or SCRIPT FLUSH, so all of them
 * as a rule) runs again on its own with EVAL after the others.
 */
static store_status op_batch(store_backend_impl *s, rconn *rc, op *o)
{
	script_call *calls = calloc(o->nkeys, sizeof(*calls));
	bool *again = calloc(o->nkeys, sizeof(*again));
	store_status st = STORE_OK;

	if (!calls || !again) {
		free(calls);
		free(again);
		return store_set_error("%s: batch: out of memory", s->where);
	}
	for (size_t i = 0; i < o->nkeys; i++) {
		query *q = &o->q[i];

		script_call_of(s, q, &calls[i]);
		calls[i].argv[0] = "EVALSHA", calls[i].argvlen[0] = 7;
		calls[i].argv[1] = rc->sha[calls[i].script],
		calls[i].argvlen[1] = strlen(rc->sha[calls[i].script]);
		if (append_argv(rc->ctx, calls[i].argc, calls[i].argv, calls[i].argvlen) != REDIS_OK) {
			st = append_failed(s, rc->ctx, "batch");
			goto out;
		}
	}
	atomic_fetch_add(&s->script_trips, 1);
	for (size_t i = 0; i < o->nkeys; i++) {
		redisReply *r;

		if (next_reply(s, rc->ctx, &r, "batch") != STORE_OK) {
			st = STORE_ERROR;
			goto out;
		}
		if (charges(&o->q[i]))
			o->no_retry = true;
		if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0)
			again[i] = true;
		else
			o->q[i].status =
			    script_answer(s, rc, r, &o->q[i]) == STORE_OK ? QUERY_OK : QUERY_ERROR;
		freeReplyObject(r);
	}
	for (size_t i = 0; i < o->nkeys; i++) {
		op one = {.what = script_what(&o->q[i]), .q = &o->q[i]};

		if (again[i])
			o->q[i].status = op_script(s, rc, &one) == STORE_OK ? QUERY_OK : QUERY_ERROR;
		if (rc->ctx->err) {
			st = STORE_ERROR;
			goto out;
		}
	}
out:
	/* A connection that failed half way leaves the rest unanswered. */
	for (size_t i = 0; i < o->nkeys; i++)
		if (o->q[i].status == QUERY_PENDING)
			o->q[i].status = QUERY_ERROR;
	free(calls);
	free(again);
	return st;
}

static store_status op_get(store_backend_impl *s, rconn *rc, op *o)
{
	char buf[KEYBUF];
	redisReply *r;
	store_status st = STORE_NOTFOUND;

	if (append_hmget(rc->ctx, buf, full_key(s, o->keys[0], buf)) != REDIS_OK)
		return append_failed(s, rc->ctx, "get");
	if (next_reply(s, rc->ctx, &r, "get") != STORE_OK)
		return STORE_ERROR;
	if (r->type == REDIS_REPLY_ERROR)
		st = reply_error(s, rc, r, "get");
	else if (entry_from_reply(r, o->keys[0], o->out))
		st = STORE_OK;
	freeReplyObject(r);
	return st;
}

/*
 * A lookup of one key that is not a network (most of those the local
 * view cannot answer: a listed sender or client): its fields (HMGET),
 * without the script, which would read that key the same way (only
 * network keys depend on the netlens hash).
 */
static store_status op_lookup_one(store_backend_impl *s, rconn *rc, op *o)
{
	store_status st = op_get(s, rc, o);

	return st == STORE_OK && o->out->expires <= o->now ? STORE_NOTFOUND : st;
}

/* Field, value pairs of every field of e: 2 * NFIELDS of argv/argvlen. */
static void put_fields(const store_entry *e, char nums[4][24], const char **argv, size_t *argvlen)
{
	const char *vals[NFIELDS];

	snprintf(nums[0], 24, "%lld", (long long)e->expires);
	snprintf(nums[1], 24, "%lld", (long long)e->first_seen);
	snprintf(nums[2], 24, "%lld", (long long)e->last_seen);
	snprintf(nums[3], 24, "%llu", (unsigned long long)e->hits);
	vals[F_EXPIRES] = nums[0], vals[F_FIRST] = nums[1], vals[F_LAST] = nums[2], vals[F_HITS] = nums[3];
	vals[F_TRAP] = e->trap, vals[F_SENDER] = e->sender, vals[F_RCPT] = e->recipient;
	vals[F_CLIENT] = e->client, vals[F_HELO] = e->helo, vals[F_QID] = e->queue_id,
	vals[F_REASON] = e->reason;
	for (int i = 0; i < NFIELDS; i++) {
		argv[2 * i] = field_names[i];
		argvlen[2 * i] = strlen(field_names[i]);
		argv[1 + 2 * i] = vals[i];
		/* Fields of a caller's entry need not be terminated: cap at the field. */
		argvlen[1 + 2 * i] = store_field_len(vals[i], i < F_TRAP ? 24 : STORE_FIELD_MAX);
	}
	argvlen[1 + 2 * F_CLIENT] = store_field_len(e->client, sizeof(e->client));
	argvlen[1 + 2 * F_HELO] = store_field_len(e->helo, sizeof(e->helo));
	argvlen[1 + 2 * F_QID] = store_field_len(e->queue_id, sizeof(e->queue_id));
}

#define PUT_ARGC (7 + 2 * NFIELDS)

/* One script: EVALSHA sha 2 key netlens tag expires field value...; the entry is replaced atomically. */
/*
 * Tell every host's exports (store_watch) that the blocklist changed by
 * hand (spamtrapctl add, remove). The write is done: a failed notice is
 * its caller's error all the same, since other hosts would miss it.
 */
static store_status publish_change(const store_backend_impl *s, rconn *rc)
{
	const char *argv[3] = {"PUBLISH", s->channel, "1"};
	redisReply *r;
	store_status st;

	if (command(s, rc->ctx, &r, "publish", 3, argv) != STORE_OK)
		return STORE_ERROR;
	st = r->type == REDIS_REPLY_INTEGER ? STORE_OK : reply_error(s, rc, r, "publish");
	freeReplyObject(r);
	return st;
}

static store_status op_put(store_backend_impl *s, rconn *rc, op *o)
{
	char buf[KEYBUF], nums[4][24], tag[TAG_MAX];
	const char *argv[PUT_ARGC];
	size_t argvlen[PUT_ARGC];
	redisReply *r = NULL;
	store_status st;

	argv[2] = "2", argvlen[2] = 1;
	argv[3] = buf, argvlen[3] = full_key(s, o->in->key, buf);
	argv[4] = s->netlens, argvlen[4] = strlen(s->netlens);
	argv[5] = tag, argvlen[5] = net_tag(o->in->key, tag);
	put_fields(o->in, nums, argv + 7, argvlen + 7);
	argv[6] = nums[0], argvlen[6] = strlen(nums[0]);
	st = eval_script(s, rc, SCRIPT_PUT, PUT_ARGC, argv, argvlen, &r, "put");
	if (st == STORE_OK && r->type != REDIS_REPLY_INTEGER)
		st = reply_error(s, rc, r, "put");
	freeReplyObject(r);
	return st == STORE_OK ? publish_change(s, rc) : st;
}

static store_status op_remove(store_backend_impl *s, rconn *rc, op *o)
{
	char buf[KEYBUF];
	const char *argv[2] = {"DEL", buf};
	redisReply *r;
	store_status st;

	full_key(s, o->keys[0], buf);
	if (command(s, rc->ctx, &r, "remove", 2, argv) != STORE_OK)
		return STORE_ERROR;
	if (r->type != REDIS_REPLY_INTEGER)
		st = reply_error(s, rc, r, "remove");
	else
		st = r->integer > 0 ? STORE_OK : STORE_NOTFOUND;
	freeReplyObject(r);
	return st == STORE_OK ? publish_change(s, rc) : st;
}

/* --- SCAN ---------------------------------------------------------------- */

typedef store_status (*scan_batch_fn)(store_backend_impl *s, rconn *rc, op *o, redisReply *keys);

/* Walk every key under the prefix with SCAN; batch gets each non-empty array of key names. */
static store_status scan_all(store_backend_impl *s, rconn *rc, op *o, scan_batch_fn batch)
{
	char cursor[32] = "0";

	do {
		const char *argv[6] = {"SCAN",  cursor,    "MATCH", o->pattern ? o->pattern : s->pattern,
		                       "COUNT", SCAN_COUNT};
		redisReply *r;
		store_status st = STORE_OK;

		if (command(s, rc->ctx, &r, o->what, 6, argv) != STORE_OK)
			return STORE_ERROR;
		if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || !reply_is_str(r->element[0]) ||
		    r->element[1]->type != REDIS_REPLY_ARRAY) {
			st = reply_error(s, rc, r, o->what);
		} else {
			snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
			if (r->element[1]->elements > 0)
				st = batch(s, rc, o, r->element[1]);
		}
		freeReplyObject(r);
		if (st != STORE_OK)
			return st;
	} while (strcmp(cursor, "0") != 0);
	return STORE_OK;
}

/* One script per SCAN page: EVALSHA sha M+1 netlens keys... now gen tags... */
static store_status purge_batch(store_backend_impl *s, rconn *rc, op *o, redisReply *keys)
{
	size_t m = keys->elements, n = 6 + 2 * m;
	const char **argv = calloc(n, sizeof(*argv));
	size_t *argvlen = calloc(n, sizeof(*argvlen));
	char nkeys[24], now[24], (*tags)[TAG_MAX] = calloc(m, TAG_MAX);
	redisReply *r = NULL;
	store_status st = STORE_ERROR;

	if (!argv || !argvlen || !tags) {
		store_set_error("%s: purge: out of memory", s->where);
		goto out;
	}
	snprintf(nkeys, sizeof(nkeys), "%zu", keys->elements + 1);
	snprintf(now, sizeof(now), "%lld", (long long)o->now);
	argv[2] = nkeys, argvlen[2] = strlen(nkeys);
	argv[3] = s->netlens, argvlen[3] = strlen(s->netlens);
	argv[4 + m] = now, argvlen[4 + m] = strlen(now);
	argv[5 + m] = o->gen, argvlen[5 + m] = strlen(o->gen);
	for (size_t i = 0; i < m; i++) {
		const redisReply *k = keys->element[i];

		argv[4 + i] = k->str, argvlen[4 + i] = k->len;
		/* SCAN MATCH gave names under the prefix; tag what follows it. */
		argv[6 + m + i] = tags[i];
		argvlen[6 + m + i] = k->len > s->prefixlen ? net_tag(k->str + s->prefixlen, tags[i]) : 0;
	}
	st = eval_script(s, rc, SCRIPT_PURGE, (int)n, argv, argvlen, &r, "purge");
	if (st == STORE_OK && r->type != REDIS_REPLY_INTEGER)
		st = reply_error(s, rc, r, "purge");
	else if (st == STORE_OK)
		o->count += (uint64_t)r->integer;
	freeReplyObject(r);
out:
	free(argv);
	free(argvlen);
	free(tags);
	return st;
}

/* A purge also rebuilds the netlens hash: bump its gen to start (see netlens_done_lua for the rest). */
static store_status netlens_begin(store_backend_impl *s, rconn *rc, op *o)
{
	const char *argv[4] = {"HINCRBY", s->netlens, "gen", "1"};
	redisReply *r;
	store_status st = STORE_OK;

	if (command(s, rc->ctx, &r, "purge", 4, argv) != STORE_OK)
		return STORE_ERROR;
	if (r->type != REDIS_REPLY_INTEGER)
		st = reply_error(s, rc, r, "purge");
	else
		snprintf(o->gen, sizeof(o->gen), "%lld", (long long)r->integer);
	freeReplyObject(r);
	return st;
}

static store_status netlens_done(store_backend_impl *s, rconn *rc, op *o)
{
	const char *argv[5] = {NULL, NULL, "1", s->netlens, o->gen};
	size_t argvlen[5] = {0, 0, 1, strlen(s->netlens), strlen(o->gen)};
	redisReply *r = NULL;
	store_status st = eval_script(s, rc, SCRIPT_NETLENS_DONE, 5, argv, argvlen, &r, "purge");

	if (st == STORE_OK && r->type != REDIS_REPLY_INTEGER)
		st = reply_error(s, rc, r, "purge");
	freeReplyObject(r);
	return st;
}

static store_status op_purge(store_backend_impl *s, rconn *rc, op *o)
{
	store_status st = netlens_begin(s, rc, o);

	if (st == STORE_OK)
		st = scan_all(s, rc, o, purge_batch);
	if (st == STORE_OK)
		st = netlens_done(s, rc, o);
	return st;
}

/* The key names foreach collects, without the prefix. */
typedef struct keylist {
	char **v;
	size_t n, cap;
} keylist;

static store_status collect_batch(store_backend_impl *s, rconn *rc, op *o, redisReply *keys)
{
	keylist *kl = o->ctx;

	(void)rc;
	for (size_t i = 0; i < keys->elements; i++) {
		const redisReply *k = keys->element[i];

		if (!reply_is_str(k) || k->len <= s->prefixlen || k->len - s->prefixlen >= STORE_KEY_MAX)
			continue;
		if (kl->n == kl->cap) {
			size_t cap = kl->cap ? kl->cap * 2 : 1024;
			char **v = realloc(kl->v, cap * sizeof(*v));

			if (!v)
				return store_set_error("%s: foreach: out of memory", s->where);
			kl->v = v, kl->cap = cap;
		}
		if (!(kl->v[kl->n] = strndup(k->str + s->prefixlen, k->len - s->prefixlen)))
			return store_set_error("%s: foreach: out of memory", s->where);
		kl->n++;
	}
	return STORE_OK;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Fetch keys[0..n) in one pipeline and visit the live ones; 1 when the visitor stopped. */
static int visit_batch(store_backend_impl *s, rconn *rc, op *o, char **keys, size_t n, store_entry *e)
{
	char buf[KEYBUF];
	int stop = 0;

	for (size_t i = 0; i < n; i++)
		if (append_hmget(rc->ctx, buf, full_key(s, keys[i], buf)) != REDIS_OK)
			return append_failed(s, rc->ctx, "foreach");
	for (size_t i = 0; i < n; i++) {
		redisReply *r;

		if (next_reply(s, rc->ctx, &r, "foreach") != STORE_OK)
			return STORE_ERROR;
		if (!stop && entry_from_reply(r, keys[i], e) && e->expires > o->now) {
			o->no_retry = true;
			/* The visitor writes output: let SIGPIPE reach it as usual. */
			pipe_guard_end(&o->guard);
			stop = o->visit(e, o->ctx) != 0;
			pipe_guard_begin(&o->guard, o->guard.active);
		}
		freeReplyObject(r);
	}
	return stop;
}

static store_status visit_sorted(store_backend_impl *s, rconn *rc, op *o, keylist *kl)
{
	store_entry *e = malloc(sizeof(*e));
	size_t n = 0;
	int rv = 0;

	if (kl->n == 0) {
		free(e);
		return STORE_OK;
	}
	if (!e)
		return store_set_error("%s: foreach: out of memory", s->where);
	qsort(kl->v, kl->n, sizeof(*kl->v), cmp_str);
	/* SCAN may return a key more than once. */
	for (size_t i = 0; i < kl->n; i++) {
		if (n > 0 && strcmp(kl->v[n - 1], kl->v[i]) == 0)
			free(kl->v[i]);
		else
			kl->v[n++] = kl->v[i];
	}
	kl->n = n;
	for (size_t i = 0; i < n && rv == 0; i += FETCH_BATCH)
		rv = visit_batch(s, rc, o, kl->v + i, n - i < FETCH_BATCH ? n - i : FETCH_BATCH, e);
	free(e);
	return rv < 0 ? STORE_ERROR : STORE_OK;
}

/* SCAN order is arbitrary: collect the names, sort them, then fetch in pipelined batches. */
static store_status op_foreach(store_backend_impl *s, rconn *rc, op *o)
{
	keylist kl = {0};
	void *visit_ctx = o->ctx;
	store_status st;

	o->ctx = &kl;
	st = scan_all(s, rc, o, collect_batch);
	o->ctx = visit_ctx;
	if (st == STORE_OK)
		st = visit_sorted(s, rc, o, &kl);
	for (size_t i = 0; i < kl.n; i++)
		free(kl.v[i]);
	free(kl.v);
	return st;
}

/* Each name SCAN gives is a live entry (Redis expired the others), typed by its key. */
static store_status count_batch(store_backend_impl *s, rconn *rc, op *o, redisReply *keys)
{
	uint64_t *counts = o->ctx;

	(void)rc;
	for (size_t i = 0; i < keys->elements; i++) {
		const redisReply *k = keys->element[i];

		if (reply_is_str(k) && k->len > s->prefixlen)
			counts[key_type_of(k->str + s->prefixlen)]++;
	}
	return STORE_OK;
}

/* Names only: no entry is read. From 0 again when run() retries on a fresh connection. */
static store_status op_count_types(store_backend_impl *s, rconn *rc, op *o)
{
	memset(o->ctx, 0, STORE_KEY_TYPES * sizeof(uint64_t));
	return scan_all(s, rc, o, count_batch);
}

static store_status redis_count_types(store_backend_impl *s, int64_t now, uint64_t *counts)
{
	op o = {.what = "count", .fn = op_count_types, .now = now, .ctx = counts};

	return run(s, &o);
}

/* --- the upgrade to typed keys ------------------------------------------ */

/*
 * Layout version 2 (PREFIX "version"): the typed keys of core/key.h.
 * 0.1.0 wrote version 1 and no "version" key. The upgrade runs once per
 * Redis, at the first connection a store opens or makes: it walks the
 * entries with SCAN and moves those whose key key_migrate() changes, in
 * two passes as store_sqlite.c does (first the moves to sender keys,
 * longest first, so that a key is vacated before one moves in; then the
 * SASL names lowercased), in scripts that check each entry's recorded
 * sender on the server. So it is right whatever ran before it: another
 * host upgrading at the same time, an upgrade cut short and run again.
 */
#define LAYOUT_VERSION 2
#define REKEY_BATCH 128

/* One entry to move (keys without the prefix; to "": drop it). */
typedef struct rekey {
	char *from, *to;
	bool check; /* only when it recorded from as its sender */
} rekey;

typedef struct rekeys {
	rekey *v;
	size_t n, cap;
} rekeys;

typedef struct upgrade_plan {
	rekeys pass[2];
} upgrade_plan;

static void rekeys_clear(rekeys *r)
{
	for (size_t i = 0; i < r->n; i++) {
		free(r->v[i].from);
		free(r->v[i].to);
	}
	free(r->v);
}

static bool rekeys_add(rekeys *r, const char *from, const char *to, bool check)
{
	rekey *k;

	if (r->n == r->cap) {
		size_t cap = r->cap ? 2 * r->cap : 64;
		rekey *v = realloc(r->v, cap * sizeof(*v));

		if (!v)
			return false;
		r->v = v, r->cap = cap;
	}
	k = &r->v[r->n];
	k->check = check;
	k->from = strdup(from);
	k->to = strdup(to);
	if (!k->from || !k->to) {
		free(k->from);
		free(k->to);
		return false;
	}
	r->n++;
	return true;
}

/* A SCAN page into the plan: the moves key_migrate() asks for, with or without the sender known. */
static store_status plan_batch(store_backend_impl *s, rconn *rc, op *o, redisReply *keys)
{
	upgrade_plan *plan = o->ctx;

	(void)rc;
	for (size_t i = 0; i < keys->elements; i++) {
		const redisReply *k = keys->element[i];
		char name[STORE_KEY_MAX], from_sender[STORE_KEY_MAX], other[STORE_KEY_MAX];

		if (!reply_is_str(k) || k->len <= s->prefixlen || k->len - s->prefixlen >= STORE_KEY_MAX)
			continue;
		memcpy(name, k->str + s->prefixlen, k->len - s->prefixlen);
		name[k->len - s->prefixlen] = '\0';
		key_migrate(name, name, from_sender, sizeof(from_sender));
		key_migrate(name, NULL, other, sizeof(other));
		if ((strcmp(from_sender, other) != 0 &&
		     !rekeys_add(&plan->pass[0], name, from_sender, true)) ||
		    (strcmp(other, name) != 0 && !rekeys_add(&plan->pass[1], name, other, false)))
			return store_set_error("%s: upgrade: out of memory", s->where);
	}
	return STORE_OK;
}

static int cmp_longer_first(const void *a, const void *b)
{
	size_t x = strlen(((const rekey *)a)->from), y = strlen(((const rekey *)b)->from);

	return (x < y) - (x > y);
}

/* One script for v[0..n): EVALSHA sha 2n from to ... need ... */
static store_status rekey_batch(store_backend_impl *s, rconn *rc, const rekey *v, size_t n)
{
	size_t argc = 3 + 3 * n;
	const char **argv = calloc(argc, sizeof(*argv));
	size_t *argvlen = calloc(argc, sizeof(*argvlen));
	char *buf = malloc(2 * n * (s->prefixlen + STORE_KEY_MAX)), *p = buf, nkeys[24];
	redisReply *r = NULL;
	store_status st = STORE_ERROR;

	if (!argv || !argvlen || !buf) {
		store_set_error("%s: upgrade: out of memory", s->where);
		goto out;
	}
	snprintf(nkeys, sizeof(nkeys), "%zu", 2 * n);
	argv[2] = nkeys, argvlen[2] = strlen(nkeys);
	for (size_t i = 0; i < n; i++) {
		argv[3 + 2 * i] = p, argvlen[3 + 2 * i] = full_key(s, v[i].from, p);
		p += argvlen[3 + 2 * i] + 1;
		argv[4 + 2 * i] = v[i].to[0] ? p : "";
		argvlen[4 + 2 * i] = v[i].to[0] ? full_key(s, v[i].to, p) : 0;
		p += argvlen[4 + 2 * i] + 1;
		argv[3 + 2 * n + i] = v[i].check ? v[i].from : "";
		argvlen[3 + 2 * n + i] = strlen(argv[3 + 2 * n + i]);
	}
	st = eval_script(s, rc, SCRIPT_REKEY, (int)argc, argv, argvlen, &r, "upgrade");
	if (st == STORE_OK && r->type != REDIS_REPLY_INTEGER)
		st = reply_error(s, rc, r, "upgrade");
	freeReplyObject(r);
out:
	free(argv);
	free(argvlen);
	free(buf);
	return st;
}

static store_status rekey_all(store_backend_impl *s, rconn *rc, const rekeys *r)
{
	store_status st = STORE_OK;

	for (size_t i = 0; i < r->n && st == STORE_OK; i += REKEY_BATCH)
		st = rekey_batch(s, rc, r->v + i, r->n - i < REKEY_BATCH ? r->n - i : REKEY_BATCH);
	return st;
}

/* The layout version the server holds: 1 when it says none (0.1.0, or an empty store). */
static store_status layout_version(store_backend_impl *s, rconn *rc, long *version)
{
	const char *argv[2] = {"GET", s->version};
	redisReply *r;
	store_status st = STORE_OK;

	if (command(s, rc->ctx, &r, "upgrade", 2, argv) != STORE_OK)
		return STORE_ERROR;
	if (r->type == REDIS_REPLY_NIL)
		*version = 1;
	else if (r->type == REDIS_REPLY_STRING)
		*version = strtol(r->str, NULL, 10);
	else
		st = reply_error(s, rc, r, "upgrade");
	freeReplyObject(r);
	return st;
}

static store_status op_upgrade(store_backend_impl *s, rconn *rc, op *o)
{
	upgrade_plan plan = {0};
	char text[24];
	const char *argv[3] = {"SET", s->version, text};
	redisReply *r = NULL;
	long version = 0;
	store_status st = layout_version(s, rc, &version);

	snprintf(text, sizeof(text), "%d", LAYOUT_VERSION);

	if (st != STORE_OK || version >= LAYOUT_VERSION)
		return st;
	o->ctx = &plan;
	st = scan_all(s, rc, o, plan_batch);
	if (plan.pass[0].n > 0)
		qsort(plan.pass[0].v, plan.pass[0].n, sizeof(rekey), cmp_longer_first);
	for (int i = 0; i < 2 && st == STORE_OK; i++)
		st = rekey_all(s, rc, &plan.pass[i]);
	if (st == STORE_OK && (st = command(s, rc->ctx, &r, "upgrade", 3, argv)) == STORE_OK &&
	    r->type == REDIS_REPLY_ERROR)
		st = reply_error(s, rc, r, "upgrade");
	freeReplyObject(r);
	rekeys_clear(&plan.pass[0]);
	rekeys_clear(&plan.pass[1]);
	return st;
}

/* Run the upgrade on rc when it is due; a failed one stays due, for the next connection. */
static void upgrade(store_backend_impl *s, rconn *rc)
{
	op o = {.what = "upgrade", .fn = op_upgrade};
	bool due;

	pthread_mutex_lock(&s->lock);
	due = s->upgrade_pending;
	s->upgrade_pending = false;
	pthread_mutex_unlock(&s->lock);
	if (due && op_upgrade(s, rc, &o) != STORE_OK) {
		pthread_mutex_lock(&s->lock);
		s->upgrade_pending = true;
		pthread_mutex_unlock(&s->lock);
	}
}

/* --- hot copies (the relay and ratelimit checks' keys) ------------------- */

/*
 * With store_write_behind (the daemon) and the local view on, the buckets
 * (PREFIX "ctr:"), the relay check's sets (PREFIX "ds:relay:") and its
 * trip markers (PREFIX "kv:relaytrip") a daemon uses are copied into a
 * sqlite_hot table (shared mode) and answered from there while the view
 * is confirmed:
 *
 * - the view's thread holds one more connection, whose CLIENT TRACKING
 *   (BCAST, those prefixes, REDIRECT to the view's subscribed connection,
 *   NOLOOP) has Redis send the view the name of every such key another
 *   connection writes, deletes or expires: another host, spamtrapctl, a
 *   synchronous write of this daemon. The copy is dropped (a bucket owing
 *   charges keeps them) and read again at its next use;
 * - that connection writes what the copies owe every HOT_FLUSH_MS (and
 *   the store at close): buckets' charges as deltas, sets' refreshes
 *   (hot_flush_some). NOLOOP: those writes do not drop this daemon's own
 *   copies;
 * - a new member of a set, every write of a trip marker, and anything
 *   the copies cannot answer (not held, no room, view not confirmed) go
 *   to Redis as before; a miss is read with a round trip (peeks, no
 *   write) and kept when no invalidation came in between.
 *
 * Hosts thus count together within HOT_FLUSH_MS for refreshes (new
 * networks exactly) and for charges of a bucket near its limit, within
 * 1 s for those of a bucket far from it (HOT_WAIT_MS), and a reset or
 * another host's write reaches the copies as the view's bound says
 * (REDIS_VIEW_STALE_MS).
 */
#define HOT_FLUSH_MS 200
/*
 * A bucket far from its limit (sqlite_hot_take_due) holds its charges up
 * to this long from the first, in one delta: written at the first tick
 * HOT_WAIT_MS after it, so within HOT_FLUSH_MS + HOT_WAIT_MS = 1 s.
 */
#define HOT_WAIT_MS (1000 - HOT_FLUSH_MS)
#define HOT_FLUSH_KEYS 64 /* keys per WATCH: Redis checks a WATCH against the keys watched already */
#define HOT_SET_PREFIX "relay:"
#define HOT_KV_PREFIX "relaytrip"

static int64_t wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static bool has_prefix(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* May the copies hold q's key: buckets, the relay check's sets (timed by Redis) and trip markers. */
static bool hot_key(const query *q)
{
	switch (q->kind) {
	case QUERY_COUNTER:
		return true;
	case QUERY_DISTINCT_ADD:
		return q->u.distinct.store_clock && has_prefix(q->u.distinct.key, HOT_SET_PREFIX);
	case QUERY_KV:
		return has_prefix(q->u.kv.ns, HOT_KV_PREFIX);
	default:
		return false;
	}
}

/* The store's prefix (cfg.redis_prefix) of s, "" when none. */
static const char *base_prefix(const store_backend_impl *s)
{
	return s->cfg.redis_prefix ? s->cfg.redis_prefix : "";
}

/*
 * An invalidated key (whole name, from the view's connection): drop its
 * copy. false when the key is none of the copies' kinds.
 */
static bool hot_invalidated(store_backend_impl *s, const char *name, size_t len)
{
	size_t plen = strlen(base_prefix(s));
	char key[KEYBUF + QUERY_NS_MAX], *colon;

	if (!s->hot || len < plen || len - plen >= sizeof(key) || memcmp(name, base_prefix(s), plen) != 0)
		return false;
	memcpy(key, name + plen, len - plen);
	key[len - plen] = '\0';
	if (has_prefix(key, "ds:")) {
		sqlite_hot_invalidate(s->hot, SQLITE_HOT_SET, NULL, key + 3);
		return true;
	}
	if (!has_prefix(key, "ctr:") && !has_prefix(key, "kv:"))
		return false;
	/* ns has no ':' (store.c's ns_ok): the key is what follows its first one. */
	colon = strchr(strchr(key, ':') + 1, ':');
	if (!colon)
		return false;
	*colon = '\0';
	sqlite_hot_invalidate(s->hot, key[0] == 'c' ? SQLITE_HOT_COUNTER : SQLITE_HOT_KV,
	                      strchr(key, ':') + 1, colon + 1);
	return true;
}

/* CLIENT TRACKING on the flush connection, redirected to the view's, NOLOOP; -1 with err. */
static int hot_track(store_backend_impl *s, rconn *rc, long long redirect, char *err, size_t errlen)
{
	char id[24], p[3][PREFIX_MAX + 16];
	const char *argv[12] = {"CLIENT", "TRACKING", "ON",     "REDIRECT", id,       "BCAST",
	                        "PREFIX", p[0],       "PREFIX", p[1],       "PREFIX", p[2]};
	const char *noloop[13];
	redisReply *r = NULL;
	bool ok;

	snprintf(id, sizeof(id), "%lld", redirect);
	snprintf(p[0], sizeof(p[0]), "%sctr:", base_prefix(s));
	snprintf(p[1], sizeof(p[1]), "%sds:" HOT_SET_PREFIX, base_prefix(s));
	snprintf(p[2], sizeof(p[2]), "%skv:" HOT_KV_PREFIX, base_prefix(s));
	memcpy(noloop, argv, sizeof(argv));
	noloop[12] = "NOLOOP";
	ok = command(s, rc->ctx, &r, "CLIENT TRACKING", 13, noloop) == STORE_OK &&
	     r->type == REDIS_REPLY_STATUS;
	if (!ok)
		snprintf(err, errlen, "%s: hot copies: CLIENT TRACKING refused: %s", s->where,
		         rc->ctx->err                                  ? rc->ctx->errstr
		         : r && r->type == REDIS_REPLY_ERROR && r->str ? r->str
		                                                       : "unexpected reply");
	freeReplyObject(r);
	return ok ? 0 : -1;
}

/*
 * Redis's clock less this host's as of sent_ms (this host's, taken before
 * the command went out): the copies' clock is then never behind Redis's.
 * Measured against the reply's arrival instead, it lagged by the reply's
 * delay, and a bucket read or charged in Redis a few ms before looked
 * fuller than it is (a 2/1h bucket charged once: no room left).
 */
/*
 * One ms more than the difference: TIME's answer cut to the ms reads up
 * to a ms short while the send time may read (almost) whole, so the bare
 * difference could be a ms short of the true offset and the copies'
 * clock a ms behind Redis's (a bucket charged in Redis the ms before
 * looked fuller than it is, see hot_note_time). A ms ahead only lets a
 * copy refill a ms early.
 */
int64_t store_redis_clock_offset(int64_t redis_ms, int64_t sent_ms)
{
	return redis_ms - sent_ms + 1;
}

static void hot_note_time(store_backend_impl *s, long long redis_ms, int64_t sent_ms)
{
	atomic_store(&s->hot_offset_ms, store_redis_clock_offset((int64_t)redis_ms, sent_ms));
}

/* TIME on rc: the offset of Redis's clock; -1 on failure. */
static int hot_clock(store_backend_impl *s, rconn *rc)
{
	const char *argv[1] = {"TIME"};
	redisReply *r = NULL;
	int64_t sent = wall_ms();
	int rv = -1;

	if (command(s, rc->ctx, &r, "TIME", 1, argv) == STORE_OK && r->type == REDIS_REPLY_ARRAY &&
	    r->elements == 2 && reply_is_str(r->element[0]) && reply_is_str(r->element[1])) {
		hot_note_time(s,
		              strtoll(r->element[0]->str, NULL, 10) * 1000 +
		                  strtoll(r->element[1]->str, NULL, 10) / 1000,
		              sent);
		rv = 0;
	}
	freeReplyObject(r);
	return rv;
}

/*
 * The hot copies' writes behind: plain commands under WATCH / MULTI /
 * EXEC, not a script, because Redis (7.0) sends the invalidations of a
 * script's writes even to a NOLOOP connection's own tracking. A bucket
 * owes a delta: tat = max(tat, from) + add, the key kept HOT_KEEP_MS past
 * it, written even when that is not ahead of Redis's now: another host's
 * charge made before that TAT, written after, must go on top of it. A
 * set's member gets its later time only while it is there (a reset or
 * another host's expiry is not undone), and the set is kept until that
 * time at least. A watched key another connection wrote meanwhile has the
 * lot read and written again.
 */
#define HOT_TEXT (KEYBUF + QUERY_NS_MAX + 3 * 24)
#define HOT_FLUSH_TRIES 4

typedef struct hot_plan {
	const sqlite_hot_batch *b;
	size_t from, n;
	char *text;        /* n slots of HOT_TEXT: the key, then numbers */
	const char **keys; /* "WATCH" and the n keys */
	size_t *keylens;
	bool mget; /* the buckets' TATs in one MGET, not a GET each */
} hot_plan;

static char *hot_slot(const hot_plan *p, size_t i)
{
	return p->text + i * HOT_TEXT;
}

/*
 * The buckets' TATs of p, one MGET (not a GET each: a bucket is all most
 * writes behind hold, and a command costs Redis more than a key of one),
 * appended; *n the buckets. -1 out of memory or with a message.
 */
static int hot_mget(store_backend_impl *s, rconn *rc, const hot_plan *p, size_t *n)
{
	const char **argv = malloc((p->n + 1) * sizeof(*argv));
	size_t *lens = malloc((p->n + 1) * sizeof(*lens));
	int rv = 0;

	*n = 0;
	if (!argv || !lens) {
		free(argv);
		free(lens);
		return store_set_error("%s: write behind: out of memory", s->where), -1;
	}
	argv[0] = "MGET", lens[0] = 4;
	for (size_t i = 0; i < p->n; i++)
		if (p->b->v[p->from + i].kind == SQLITE_HOT_COUNTER) {
			argv[1 + *n] = p->keys[1 + i];
			lens[1 + (*n)++] = p->keylens[1 + i];
		}
	if (!p->mget)
		*n = 0; /* a GET each, in the order of the keys (hot_read) */
	if (*n > 0 && append_argv(rc->ctx, (int)*n + 1, argv, lens) != REDIS_OK)
		rv = (append_failed(s, rc->ctx, "write behind"), -1);
	free(argv);
	free(lens);
	return rv;
}

/*
 * TIME, the buckets' TATs (one MGET) and per set key ZSCORE and PTTL,
 * pipelined after WATCH, into r in the order of the keys (a bucket's
 * value taken out of the MGET's reply); -1 with a message.
 */
static int hot_read(store_backend_impl *s, rconn *rc, const hot_plan *p, redisReply **time_r, redisReply **r)
{
	const char *time_argv[1] = {"TIME"};
	size_t time_len[1] = {4};
	size_t nr = 0, ncounters;
	redisReply *mget = NULL;

	if (append_argv(rc->ctx, (int)p->n + 1, p->keys, p->keylens) != REDIS_OK ||
	    append_argv(rc->ctx, 1, time_argv, time_len) != REDIS_OK)
		return append_failed(s, rc->ctx, "write behind"), -1;
	if (hot_mget(s, rc, p, &ncounters) < 0)
		return -1;
	for (size_t i = 0; i < p->n; i++) {
		const sqlite_hot_write *w = &p->b->v[p->from + i];
		bool counter = w->kind == SQLITE_HOT_COUNTER;
		const char *argv[3] = {counter ? "GET" : "ZSCORE", p->keys[1 + i], w->member};
		const char *pttl[2] = {"PTTL", p->keys[1 + i]};
		size_t lens[3] = {counter ? 3 : 6, p->keylens[1 + i], w->member ? strlen(w->member) : 0};
		size_t plens[2] = {4, p->keylens[1 + i]};

		if (counter && p->mget)
			continue;
		if (append_argv(rc->ctx, counter ? 2 : 3, argv, lens) != REDIS_OK ||
		    (!counter && append_argv(rc->ctx, 2, pttl, plens) != REDIS_OK))
			return append_failed(s, rc->ctx, "write behind"), -1;
	}
	{
		redisReply *watch;

		bool ok;

		if (next_reply(s, rc->ctx, &watch, "write behind") != STORE_OK)
			return -1;
		/* Unwatched, the writes could overwrite another host's charges. */
		if (!(ok = watch->type == REDIS_REPLY_STATUS))
			reply_error(s, rc, watch, "write behind");
		freeReplyObject(watch);
		if (!ok)
			return -1;
	}
	if (next_reply(s, rc->ctx, time_r, "write behind") != STORE_OK)
		return -1;
	if (ncounters > 0) {
		if (next_reply(s, rc->ctx, &mget, "write behind") != STORE_OK)
			return -1;
		if (mget->type != REDIS_REPLY_ARRAY || mget->elements != ncounters) {
			reply_error(s, rc, mget, "write behind");
			freeReplyObject(mget);
			return -1;
		}
	}
	for (size_t i = 0, c = 0; i < p->n; i++) {
		bool counter = p->b->v[p->from + i].kind == SQLITE_HOT_COUNTER;

		if (counter && p->mget) {
			/* The element moves to r (freed there), the array goes without it. */
			r[nr++] = mget->element[c];
			mget->element[c++] = NULL;
			continue;
		}
		for (int j = 0; j < (counter ? 1 : 2); j++)
			if (next_reply(s, rc->ctx, &r[nr++], "write behind") != STORE_OK) {
				freeReplyObject(mget);
				return -1;
			}
	}
	freeReplyObject(mget);
	return 0;
}

/* MULTI, the writes the replies r call for, EXEC: 1 done, 0 a watched key changed (again), -1 error. */
static int hot_write(store_backend_impl *s, rconn *rc, const hot_plan *p, int64_t now, redisReply **r)
{
	const char *multi[1] = {"MULTI"}, *exec[1] = {"EXEC"};
	size_t multi_len[1] = {5}, exec_len[1] = {4};
	size_t queued = 0, k = 0;
	redisReply *x;
	int rv;

	if (append_argv(rc->ctx, 1, multi, multi_len) != REDIS_OK)
		return append_failed(s, rc->ctx, "write behind"), -1;
	for (size_t i = 0; i < p->n; i++) {
		const sqlite_hot_write *w = &p->b->v[p->from + i];
		char *num = hot_slot(p, i) + KEYBUF + QUERY_NS_MAX;
		const char *key = p->keys[1 + i];
		size_t keylen = p->keylens[1 + i];

		if (w->kind == SQLITE_HOT_COUNTER) {
			const redisReply *cur = r[k++];
			int64_t tat = cur->type == REDIS_REPLY_STRING ? strtoll(cur->str, NULL, 10) : 0;
			int64_t keep;

			tat = (tat > w->value ? tat : w->value) + w->add;
			keep = tat - now + HOT_KEEP_MS;
			/*
			 * Written even when not ahead of Redis's now (the bucket reads
			 * full again): another host's charge made before this TAT, not
			 * yet written, must go on top of it, tat = max(tat, from) + add.
			 * Left out, hosts sharing a fast rule's bucket (charges that
			 * drain within a tick) would each pass its whole rate.
			 */
			if (keep > 0) {
				const char *argv[5] = {"SET", key, num, "PX", num + 24};
				size_t lens[5] = {3, keylen, i64_text(num, tat), 2, i64_text(num + 24, keep)};

				if (append_argv(rc->ctx, 5, argv, lens) != REDIS_OK)
					return append_failed(s, rc->ctx, "write behind"), -1;
				queued++;
			}
		} else {
			const redisReply *score = r[k++], *ttl = r[k++];
			int64_t keep = w->value * 1000 - now;

			if (score->type != REDIS_REPLY_STRING || strtoll(score->str, NULL, 10) >= w->value)
				continue;
			{
				const char *zadd[5] = {"ZADD", key, "XX", num, w->member};
				size_t lens[5] = {4, keylen, 2, 0, strlen(w->member)};

				snprintf(num, 24, "%lld", (long long)w->value);
				lens[3] = strlen(num);
				if (append_argv(rc->ctx, 5, zadd, lens) != REDIS_OK)
					return append_failed(s, rc->ctx, "write behind"), -1;
				queued++;
			}
			if (ttl->type == REDIS_REPLY_INTEGER && ttl->integer >= 0 && ttl->integer < keep) {
				const char *pexpire[3] = {"PEXPIRE", key, num + 24};
				size_t lens[3] = {7, keylen, 0};

				snprintf(num + 24, 24, "%lld", (long long)keep);
				lens[2] = strlen(num + 24);
				if (append_argv(rc->ctx, 3, pexpire, lens) != REDIS_OK)
					return append_failed(s, rc->ctx, "write behind"), -1;
				queued++;
			}
		}
	}
	if (append_argv(rc->ctx, 1, exec, exec_len) != REDIS_OK)
		return append_failed(s, rc->ctx, "write behind"), -1;
	for (size_t i = 0; i < queued + 1; i++) { /* +OK, then QUEUED each */
		if (next_reply(s, rc->ctx, &x, "write behind") != STORE_OK)
			return -1;
		rv = x->type == REDIS_REPLY_ERROR ? -1 : 0;
		if (rv < 0)
			reply_error(s, rc, x, "write behind");
		freeReplyObject(x);
		if (rv < 0)
			return -1;
	}
	if (next_reply(s, rc->ctx, &x, "write behind") != STORE_OK)
		return -1;
	rv = x->type == REDIS_REPLY_ARRAY ? 1 : x->type == REDIS_REPLY_NIL ? 0 : -1;
	if (rv < 0)
		reply_error(s, rc, x, "write behind");
	freeReplyObject(x);
	return rv;
}

/*
 * The writes of b[from .. from + n) on rc; n 0: only TIME (the connection
 * lives, Redis's clock). On failure *unwritten says that none of them can
 * have been made (no EXEC, or every EXEC refused for a watched key).
 */
static store_status hot_flush_some(store_backend_impl *s, rconn *rc, const sqlite_hot_batch *b, size_t from,
                                   size_t n, bool *unwritten)
{
	hot_plan p = {.b = b, .from = from, .n = n, .mget = !atomic_load(&s->hot_no_mget)};
	redisReply **r = calloc(2 * n + 1, sizeof(*r)), *t = NULL;
	store_status st = STORE_ERROR;
	int done = 0;

	*unwritten = true;
	p.text = calloc(n + 1, HOT_TEXT);
	p.keys = calloc(n + 1, sizeof(*p.keys));
	p.keylens = calloc(n + 1, sizeof(*p.keylens));
	if (!r || !p.text || !p.keys || !p.keylens) {
		store_set_error("%s: write behind: out of memory", s->where);
		goto out;
	}
	if (n == 0) {
		st = hot_clock(s, rc) == 0 ? STORE_OK : STORE_ERROR;
		goto out;
	}
	p.keys[0] = "WATCH", p.keylens[0] = 5;
	for (size_t i = 0; i < n; i++) {
		const sqlite_hot_write *w = &b->v[from + i];
		int len =
		    w->kind == SQLITE_HOT_COUNTER
		        ? ns_key(s, hot_slot(&p, i), KEYBUF + QUERY_NS_MAX, "ctr", w->ns, w->key)
		        : snprintf(hot_slot(&p, i), KEYBUF + QUERY_NS_MAX, "%sds:%s", base_prefix(s), w->key);

		p.keys[1 + i] = hot_slot(&p, i);
		p.keylens[1 + i] = len > 0 && len < KEYBUF + QUERY_NS_MAX ? (size_t)len : 0;
	}
	for (int attempt = 0; attempt < HOT_FLUSH_TRIES && done == 0; attempt++) {
		int64_t now, sent = wall_ms();

		if (hot_read(s, rc, &p, &t, r) < 0)
			break;
		if (t->type != REDIS_REPLY_ARRAY || t->elements != 2 || !reply_is_str(t->element[0]) ||
		    !reply_is_str(t->element[1])) {
			reply_error(s, rc, t, "write behind");
			break;
		}
		now = strtoll(t->element[0]->str, NULL, 10) * 1000 +
		      strtoll(t->element[1]->str, NULL, 10) / 1000;
		hot_note_time(s, now, sent);
		done = hot_write(s, rc, &p, now, r);
		*unwritten = done == 0;
		freeReplyObject(t);
		t = NULL;
		for (size_t i = 0; i < 2 * n; i++) {
			freeReplyObject(r[i]);
			r[i] = NULL;
		}
	}
	if (done > 0)
		st = STORE_OK;
	else if (done == 0)
		store_set_error("%s: write behind: the keys kept changing (%d tries)", s->where,
		                HOT_FLUSH_TRIES);
out:
	freeReplyObject(t);
	for (size_t i = 0; r && i < 2 * n; i++)
		freeReplyObject(r[i]);
	free(r);
	free(p.text);
	free(p.keys);
	free(p.keylens);
	return st;
}

/*
 * What the copies owe, on rc (the tracking connection, or at close a
 * pooled one): everything (all), or at a tick what is due (HOT_WAIT_MS).
 */
static store_status hot_flush(store_backend_impl *s, rconn *rc, bool all)
{
	sqlite_hot_batch b = {0}, rest;
	store_status st = STORE_OK;
	bool unwritten;
	size_t i = 0;
	/* the copies' clock, as their charges have it (hot_run) */
	int64_t now = wall_ms() + atomic_load(&s->hot_offset_ms) + atomic_load(&s->hot_skew_ms);

	if ((all ? sqlite_hot_take(s->hot, &b) : sqlite_hot_take_due(s->hot, &b, now, HOT_WAIT_MS)) < 0)
		st = store_set_error("%s: write behind: out of memory", s->where);
	/*
	 * Nothing owed: still a call (of no keys), so that a tracking
	 * connection that was closed (CLIENT KILL, a timeout) is noticed now:
	 * the invalidations it asked for have stopped.
	 */
	if (b.n == 0 && st == STORE_OK)
		st = hot_flush_some(s, rc, &b, 0, 0, &unwritten);
	while (i < b.n && st == STORE_OK) {
		size_t n = b.n - i < HOT_FLUSH_KEYS ? b.n - i : HOT_FLUSH_KEYS;

		if ((st = hot_flush_some(s, rc, &b, i, n, &unwritten)) == STORE_OK || !unwritten)
			i += n;
	}
	/*
	 * A failed call that may have written its keys or not: they are not
	 * owed again (a lost charge lets a sender through, a doubled one could
	 * hold up real mail); those of a call that wrote nothing for sure (its
	 * keys kept changing, or no EXEC went out), and of the calls not made,
	 * are.
	 */
	if (st != STORE_OK && i < b.n) {
		rest = (sqlite_hot_batch){.v = b.v + i, .n = b.n - i};
		sqlite_hot_retake(s->hot, &rest);
	}
	/* Replies of a failed call may still be on their way (or a WATCH held): not for the next user. */
	if (st != STORE_OK && rc->ctx)
		rc->stale = true;
	sqlite_hot_written(s->hot);
	sqlite_hot_batch_clear(&b);
	return st;
}

static store_status op_hot_flush(store_backend_impl *s, rconn *rc, op *o)
{
	o->no_retry = true;
	return hot_flush(s, rc, true);
}

/* --- the local view (redis_view.h) -------------------------------------- */

/*
 * A thread of its own keeps s->view current. Its connection asks for
 * client tracking in broadcast mode on the blocklist's prefix, redirected
 * to itself, and SUBSCRIBEs to the invalidation channel (RESP2): Redis
 * then sends it the name of every key under the prefix that any client
 * writes, deletes or lets expire (a trap hit of another host,
 * spamtrapctl, redis-cli, an older spamtrapd: the server tells, not the
 * writers), before it answers the writer. Then a second connection to
 * the same server (same run_id) SCANs the keys into the view. A PING
 * every VIEW_PING_MS on the subscribed connection confirms the view: its
 * answer comes after the invalidations of every write done before it was
 * sent, so a view confirmed within REDIS_VIEW_STALE_MS misses no write
 * older than that. A lost connection, a FLUSHDB or FLUSHALL (a nil for
 * the key names), a restarted server, a new master named by the Sentinels or
 * a view grown past store.redis.local_view_keys disables the view until
 * it is rebuilt; meanwhile, and whenever it is not confirmed in time,
 * lookups go to Redis.
 */
#define VIEW_PING_MS 100
#define VIEW_OVERFULL_RETRY_MS 60000 /* and after the server refused tracking */
#define INVALIDATE_CHANNEL "__redis__:invalidate"

static bool is_message(const redisReply *r); /* below, with store_watch */

typedef struct view_thread {
	store_backend_impl *s;
	rconn rc;             /* tracking and subscribed, or not connected */
	rconn mark;           /* the SCAN's connection, kept to check the marker (view_mark) */
	char mark_key[128];   /* PREFIX "view:" and a random name: this view's marker in the database */
	int64_t mark_at_ms;   /* its last SET or PEXPIRE */
	char run_id[64];      /* the server's, from INFO */
	int64_t ping_sent_ms; /* the PING not yet answered (0: none) */
	int64_t next_ping_ms;
	int backoff_ms;
	bool broken;         /* the connection failed, or the server dropped every key */
	long long client_id; /* the subscribed connection's, the hot copies' tracking redirects there */
	rconn flush;         /* the hot copies' writes behind: tracking with NOLOOP; closed: no copies */
	int64_t flush_at_ms;
	bool hot_said; /* the server refused the writes behind, logged */
} view_thread;

/* The run_id of the server rc talks to (INFO server); -1 with err. */
static int view_run_id(store_backend_impl *s, rconn *rc, char *id, size_t idlen, char *err, size_t errlen)
{
	const char *argv[2] = {"INFO", "server"};
	redisReply *r;
	const char *p;
	size_t n;

	if (command(s, rc->ctx, &r, "INFO", 2, argv) != STORE_OK) {
		snprintf(err, errlen, "%s", store_last_error());
		return -1;
	}
	p = r->type == REDIS_REPLY_STRING ? strstr(r->str, "run_id:") : NULL;
	n = p ? strcspn(p + 7, "\r\n") : 0;
	if (!p || n == 0 || n >= idlen) {
		snprintf(err, errlen, "%s: INFO server: no run_id", s->where);
		freeReplyObject(r);
		return -1;
	}
	memcpy(id, p + 7, n);
	id[n] = '\0';
	freeReplyObject(r);
	return 0;
}

/* CLIENT ID, then CLIENT TRACKING ON REDIRECT itself BCAST PREFIX, then SUBSCRIBE; -1 with err. */
static int view_track(view_thread *vt, char *err, size_t errlen)
{
	store_backend_impl *s = vt->s;
	const char *id_argv[2] = {"CLIENT", "ID"}, *sub[2] = {"SUBSCRIBE", INVALIDATE_CHANNEL};
	char id[24];
	const char *track[8] = {"CLIENT", "TRACKING", "ON", "REDIRECT", id, "BCAST", "PREFIX", s->prefix};
	redisReply *r = NULL;
	const char *step = "CLIENT ID";
	bool ok;

	ok =
	    command(s, vt->rc.ctx, &r, "CLIENT ID", 2, id_argv) == STORE_OK && r->type == REDIS_REPLY_INTEGER;
	if (ok) {
		vt->client_id = (long long)r->integer;
		snprintf(id, sizeof(id), "%lld", (long long)r->integer);
		freeReplyObject(r);
		r = NULL;
		step = "CLIENT TRACKING";
		ok = command(s, vt->rc.ctx, &r, "CLIENT TRACKING", 8, track) == STORE_OK &&
		     r->type == REDIS_REPLY_STATUS;
	}
	if (ok) {
		freeReplyObject(r);
		r = NULL;
		step = "SUBSCRIBE";
		ok = command(s, vt->rc.ctx, &r, "SUBSCRIBE", 2, sub) == STORE_OK &&
		     r->type == REDIS_REPLY_ARRAY;
	}
	/* The server's own words (NOPERM from an ACL, an unknown command before Redis 6): what to fix. */
	if (!ok)
		snprintf(err, errlen, "%s: local view: %s refused: %s", s->where, step,
		         vt->rc.ctx->err                               ? vt->rc.ctx->errstr
		         : r && r->type == REDIS_REPLY_ERROR && r->str ? r->str
		                                                       : "unexpected reply");
	freeReplyObject(r);
	return ok ? 0 : -2;
}

static void view_drop(view_thread *vt)
{
	pthread_mutex_lock(&vt->s->view_io);
	redis_view_disable(vt->s->view);
	atomic_store(&vt->s->view_fd, -1);
	/* The invalidations stop here: every copy is in doubt. */
	atomic_store(&vt->s->hot_tracked, false);
	if (vt->s->hot)
		sqlite_hot_invalidate_all(vt->s->hot);
	drop(&vt->flush);
	drop(&vt->rc);
	drop(&vt->mark);
	vt->ping_sent_ms = 0;
	pthread_mutex_unlock(&vt->s->view_io);
}

/* One message of the subscribed connection: keys to add, a PING's answer, or a flush. */
static void view_message(view_thread *vt, const redisReply *r)
{
	store_backend_impl *s = vt->s;
	const redisReply *keys;

	if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 && reply_is_str(r->element[0]) &&
	    strcmp(r->element[0]->str, "pong") == 0) {
		if (vt->ping_sent_ms)
			redis_view_confirm(s->view, vt->ping_sent_ms);
		vt->ping_sent_ms = 0;
		return;
	}
	if (!is_message(r) || !reply_is_str(r->element[1]) ||
	    strcmp(r->element[1]->str, INVALIDATE_CHANNEL) != 0)
		return;
	keys = r->element[2];
	if (keys->type != REDIS_REPLY_ARRAY) {
		vt->broken = true; /* FLUSHDB, FLUSHALL, a full resync: a nil instead of keys */
		return;
	}
	for (size_t i = 0; i < keys->elements; i++) {
		const redisReply *k = keys->element[i];

		if (!reply_is_str(k))
			continue;
		if (k->len >= s->prefixlen && memcmp(k->str, s->prefix, s->prefixlen) == 0)
			redis_view_add(s->view, k->str + s->prefixlen, k->len - s->prefixlen);
		else
			(void)hot_invalidated(s, k->str, k->len);
	}
}

/*
 * With view_io held: read and apply what the socket holds now, without
 * waiting; -1 when the connection failed or the server flushed (the
 * thread then drops it).
 */
static int view_pump_locked(view_thread *vt)
{
	struct pollfd pfd = {.fd = vt->rc.ctx ? vt->rc.ctx->fd : -1, .events = POLLIN};
	redis_view *v = vt->s->view;
	int rv = 0;

	if (vt->broken || !vt->rc.ctx)
		return -1;
	if (poll(&pfd, 1, 0) <= 0)
		return 0;
	redis_view_reading(v);
	if (redisBufferRead(vt->rc.ctx) != REDIS_OK)
		rv = -1;
	while (rv == 0) {
		void *r = NULL;

		if (redisGetReplyFromReader(vt->rc.ctx, &r) != REDIS_OK) {
			rv = -1;
			break;
		}
		if (!r)
			break;
		view_message(vt, r);
		freeReplyObject(r);
	}
	if (vt->broken)
		rv = -1;
	/* Disable before the readers may look again: what was read is not all applied. */
	if (rv < 0) {
		vt->broken = true;
		redis_view_disable(v);
	}
	redis_view_read(v);
	return rv;
}

/* Wait at most timeout_ms for a message, then apply what came; -1 as view_pump_locked, or when stopping. */
static int view_pump(view_thread *vt, int timeout_ms)
{
	struct pollfd pfd[2] = {{.fd = vt->rc.ctx->fd, .events = POLLIN},
	                        {.fd = vt->s->view_wake[0], .events = POLLIN}};
	int rv;

	if (poll(pfd, 2, timeout_ms) < 0)
		return 0;
	if (pfd[1].revents)
		return -1; /* stopping */
	pthread_mutex_lock(&vt->s->view_io);
	rv = view_pump_locked(vt);
	pthread_mutex_unlock(&vt->s->view_io);
	return rv;
}

/*
 * SWAPDB replaces every key of the database and Redis (7.0) sends no
 * invalidation for it, so the view also keeps a marker key in its
 * database, set before the SCAN: a check made after t that finds it
 * means the database was not swapped before t. A PING sent after such a
 * check confirms the view as of t (view_ping).
 */
#define VIEW_MARK_TTL_MS "60000"
#define VIEW_MARK_REFRESH_MS 10000 /* during a SCAN */

/* SET (create) or PEXPIRE (refresh: is it there?) the marker; 0 when it is there, -1 otherwise. */
static int view_mark(view_thread *vt, bool create)
{
	const char *set[5] = {"SET", vt->mark_key, "1", "PX", VIEW_MARK_TTL_MS};
	const char *refresh[3] = {"PEXPIRE", vt->mark_key, VIEW_MARK_TTL_MS};
	redisReply *r = NULL;
	bool ok;

	if (!vt->mark.ctx)
		return -1;
	vt->mark_at_ms = now_ms();
	if (create)
		ok = command(vt->s, vt->mark.ctx, &r, "local view", 5, set) == STORE_OK &&
		     r->type == REDIS_REPLY_STATUS;
	else
		ok = command(vt->s, vt->mark.ctx, &r, "local view", 3, refresh) == STORE_OK &&
		     r->type == REDIS_REPLY_INTEGER && r->integer == 1;
	freeReplyObject(r);
	return ok ? 0 : -1;
}

/* A random marker name: no other view, site or swapped-in database holds it. */
static void view_mark_name(view_thread *vt)
{
	uint64_t b[2] = {0, 0};

	if (getrandom(b, sizeof(b), GRND_NONBLOCK) != (ssize_t)sizeof(b)) {
		b[0] = (uint64_t)now_ms();
		b[1] = (uint64_t)getpid() ^ (uint64_t)(uintptr_t)vt;
	}
	snprintf(vt->mark_key, sizeof(vt->mark_key), "%.*sview:%016llx%016llx", (int)(vt->s->prefixlen - 3),
	         vt->s->prefix, (unsigned long long)b[0], (unsigned long long)b[1]);
}

/*
 * PING on the subscribed connection when one is due (force: now), after
 * checking the marker; -1 when a connection failed or the marker is gone.
 */
static int view_ping(view_thread *vt, bool force)
{
	static const char ping[] = "*1\r\n$4\r\nPING\r\n";
	int done = 0, rv = 0;
	int64_t t = now_ms();
	bool due;

	pthread_mutex_lock(&vt->s->view_io);
	due = force || (!vt->ping_sent_ms && t >= vt->next_ping_ms);
	pthread_mutex_unlock(&vt->s->view_io);
	if (!due)
		return 0;
	if (view_mark(vt, false) < 0)
		return -1; /* the database was swapped (or the marker evicted): rebuild */
	pthread_mutex_lock(&vt->s->view_io);
	vt->ping_sent_ms = t; /* before the marker's check: the confirmation holds as of then */
	vt->next_ping_ms = t + VIEW_PING_MS;
	if (redisAppendFormattedCommand(vt->rc.ctx, ping, sizeof(ping) - 1) != REDIS_OK)
		rv = -1;
	while (rv == 0 && !done)
		if (redisBufferWrite(vt->rc.ctx, &done) != REDIS_OK)
			rv = -1;
	pthread_mutex_unlock(&vt->s->view_io);
	return rv;
}

static bool view_ping_pending(view_thread *vt)
{
	bool pending;

	pthread_mutex_lock(&vt->s->view_io);
	pending = vt->ping_sent_ms != 0;
	pthread_mutex_unlock(&vt->s->view_io);
	return pending;
}

/* A SCAN page: every key into the view; STORE_ERROR (o->present) when the view is full. */
static store_status view_batch(store_backend_impl *s, rconn *rc, op *o, redisReply *keys)
{
	view_thread *vt = o->ctx;

	(void)rc;
	if (atomic_load(&s->view_stop))
		return store_set_error("%s: local view: stopped", s->where);
	for (size_t i = 0; i < keys->elements; i++) {
		const redisReply *k = keys->element[i];

		if (reply_is_str(k) && k->len >= s->prefixlen &&
		    !redis_view_add_scanned(s->view, k->str + s->prefixlen, k->len - s->prefixlen)) {
			o->present = true;
			return store_set_error("%s: local view: more than %zu keys", s->where,
			                       redis_view_max_keys(s->view));
		}
	}
	/* A SCAN of many keys outlasts the marker's minute: keep it. */
	if (now_ms() - vt->mark_at_ms > VIEW_MARK_REFRESH_MS && view_mark(vt, false) < 0)
		return store_set_error("%s: local view: %s is gone", s->where, vt->mark_key);
	/* Keep the server's buffer for the subscription small. */
	return view_pump(vt, 0) < 0 ? store_set_error("%s: local view: subscription lost", s->where)
	                            : STORE_OK;
}

/* SCAN every key into the view on a second connection to the same server; 1 when it holds too many. */
static int view_scan(view_thread *vt, char *err, size_t errlen)
{
	store_backend_impl *s = vt->s;
	rconn c = {0};
	char id[64];
	op o = {.what = "local view", .ctx = vt};
	int rv = -1;

	if (conn_connect(s, &c, err, errlen) != 0)
		return -1;
	if (view_run_id(s, &c, id, sizeof(id), err, errlen) < 0) {
		drop(&c);
		return -1;
	}
	if (strcmp(id, vt->run_id) != 0) {
		snprintf(err, errlen, "%s: local view: its two connections reached different servers",
		         s->where);
		drop(&c);
		return -1;
	}
	vt->mark = c; /* dropped with the view's own (view_drop) */
	view_mark_name(vt);
	if (view_mark(vt, true) < 0) {
		snprintf(err, errlen, "%s: local view: SET %s refused", s->where, vt->mark_key);
	} else if (scan_all(s, &vt->mark, &o, view_batch) == STORE_OK) {
		rv = 0;
	} else {
		rv = o.present ? 1 : -1;
		snprintf(err, errlen, "%s", store_last_error());
	}
	return rv;
}

/*
 * May rc write behind: WATCH, MULTI and EXEC answered (an ACL set up from
 * the commands listed before the copies refuses them)? NULL, or the
 * server's words. Copies that took charges they cannot write would lose
 * them all: a limit never reached.
 */
/*
 * May the writes behind read the buckets with one MGET? An ACL set up from
 * the commands docs/redis.md listed before it may lack it: then a GET each
 * (a failure of the connection shows at the next command).
 */
static void hot_probe_mget(store_backend_impl *s, rconn *rc, const char *key)
{
	const char *argv[2] = {"MGET", key};
	redisReply *r = NULL;

	if (command(s, rc->ctx, &r, "MGET", 2, argv) == STORE_OK)
		atomic_store(&s->hot_no_mget, r->type == REDIS_REPLY_ERROR);
	freeReplyObject(r);
}

static const char *hot_probe(store_backend_impl *s, rconn *rc, char *why, size_t whylen)
{
	char key[PREFIX_MAX + 16];
	const char *argv[3][2] = {{"WATCH", key}, {"MULTI"}, {"EXEC"}};
	const int argc[3] = {2, 1, 1};

	snprintf(key, sizeof(key), "%sctr:", base_prefix(s));
	for (int i = 0; i < 3; i++) {
		redisReply *r = NULL;
		bool ok = command(s, rc->ctx, &r, argv[i][0], argc[i], argv[i]) == STORE_OK &&
		          r->type != REDIS_REPLY_ERROR;

		if (!ok)
			snprintf(why, whylen, "%s: %s", argv[i][0],
			         rc->ctx->err  ? rc->ctx->errstr
			         : r && r->str ? r->str
			                       : store_last_error());
		freeReplyObject(r);
		if (!ok)
			return why;
	}
	hot_probe_mget(s, rc, key);
	return NULL;
}

/*
 * The hot copies' connection: to the view's server, tracking the copies'
 * keys into the view's subscription (NOLOOP), and Redis's clock; -1 with
 * err. Before the view's SCAN and confirmation: what another connection
 * writes from here on reaches the view, and the copies (all dropped at
 * view_drop) are read anew after it. A server that refuses the writes
 * behind leaves the view without copies (vt->flush closed, said once).
 */
static int hot_connect(view_thread *vt, char *err, size_t errlen)
{
	store_backend_impl *s = vt->s;
	char id[64], why[256];

	if (conn_connect(s, &vt->flush, err, errlen) != 0 ||
	    view_run_id(s, &vt->flush, id, sizeof(id), err, errlen) != 0)
		return -1;
	if (hot_probe(s, &vt->flush, why, sizeof(why))) {
		if (vt->flush.ctx->err) { /* the connection, not a refusal */
			if (snprintf(err, errlen, "%s: hot copies: %s", s->where, why) >= (int)errlen)
				err[errlen - 1] = '\0'; /* cut short, still the start of the reason */
			return -1;
		}
		if (!vt->hot_said)
			log_warning("%s: hot copies: the writes behind are refused (%s): the relay and "
			            "ratelimit keys ask redis",
			            s->where, why);
		vt->hot_said = true;
		drop(&vt->flush);
		return 0;
	}
	if (strcmp(id, vt->run_id) != 0) {
		snprintf(err, errlen, "%s: hot copies: the connections reached different servers", s->where);
		return -1;
	}
	if (hot_track(s, &vt->flush, vt->client_id, err, errlen) < 0)
		return -1;
	if (hot_clock(s, &vt->flush) < 0) {
		snprintf(err, errlen, "%s: hot copies: TIME: %s", s->where, store_last_error());
		return -1;
	}
	vt->flush_at_ms = now_ms() + HOT_FLUSH_MS;
	return 0;
}

/* Wait (applying messages) for the answer to a PING; then the view may answer. */
static int view_confirm(view_thread *vt)
{
	int64_t until = now_ms() + vt->s->command_timeout_ms;

	if (view_ping(vt, true) < 0)
		return -1;
	while (view_ping_pending(vt) && now_ms() < until)
		if (view_pump(vt, VIEW_PING_MS) < 0)
			return -1;
	return view_ping_pending(vt) ? -1 : 0;
}

/*
 * Connect, subscribe, SCAN: 0 when the view answers again, 1 when it is
 * too full, 2 when the server refuses tracking or the subscription (an
 * ACL, Redis before 6), -1 with err.
 */
static int view_build(view_thread *vt, char *err, size_t errlen)
{
	store_backend_impl *s = vt->s;
	int rv = -1;

	redis_view_begin(s->view);
	pthread_mutex_lock(&s->view_io);
	vt->broken = false;
	if (conn_connect(s, &vt->rc, err, errlen) == 0 &&
	    view_run_id(s, &vt->rc, vt->run_id, sizeof(vt->run_id), err, errlen) == 0)
		rv = view_track(vt, err, errlen);
	if (rv == 0)
		atomic_store(&s->view_fd, vt->rc.ctx->fd);
	pthread_mutex_unlock(&s->view_io);
	if (rv != 0)
		return rv == -2 ? 2 : -1;
	if (s->hot && hot_connect(vt, err, errlen) < 0)
		return -1;
	if ((rv = view_scan(vt, err, errlen)) != 0)
		return rv;
	if (view_confirm(vt) < 0) {
		snprintf(err, errlen, "%s: local view: no answer to PING", s->where);
		return -1;
	}
	/*
	 * Under view_io: a lookup that applied a flush or met a failure since
	 * has set broken, and its redis_view_disable found nothing to disable.
	 */
	pthread_mutex_lock(&s->view_io);
	rv = vt->broken ? -1 : 0;
	if (rv == 0 && s->hot && vt->flush.ctx)
		atomic_store(&s->hot_tracked, true);
	if (rv == 0)
		redis_view_ready(s->view);
	pthread_mutex_unlock(&s->view_io);
	if (rv < 0)
		snprintf(err, errlen, "%s: local view: lost while being built", s->where);
	return rv;
}

/* The master the connection reached is no longer the one the Sentinels name. */
static bool view_outdated(view_thread *vt)
{
	bool outdated;

	recheck_master(vt->s);
	pthread_mutex_lock(&vt->s->lock);
	outdated = vt->s->nsentinels > 0 && vt->rc.gen != vt->s->master_gen;
	pthread_mutex_unlock(&vt->s->lock);
	return outdated;
}

static void view_sleep(view_thread *vt, int ms)
{
	struct pollfd pfd = {.fd = vt->s->view_wake[0], .events = POLLIN};

	for (int64_t until = now_ms() + ms, t; !atomic_load(&vt->s->view_stop) && (t = now_ms()) < until;)
		poll(&pfd, 1, (int)(until - t));
}

/*
 * A PING unanswered for this long: the connection hangs without breaking
 * (a network cut, a half-open TCP connection). The view has stopped
 * answering long before; connect again rather than wait for TCP to give up.
 */
static int64_t view_ping_deadline_ms(const view_thread *vt)
{
	int64_t wait = vt->s->command_timeout_ms > 0 ? vt->s->command_timeout_ms : 0;

	return wait < 2 * REDIS_VIEW_STALE_MS ? 2 * REDIS_VIEW_STALE_MS : wait;
}

static bool view_ping_overdue(view_thread *vt)
{
	int64_t sent;

	pthread_mutex_lock(&vt->s->view_io);
	sent = vt->ping_sent_ms;
	pthread_mutex_unlock(&vt->s->view_io);
	return sent && now_ms() - sent > view_ping_deadline_ms(vt);
}

/* Serve a built view until its connection fails or hangs, the server flushes or the view fills up. */
static void view_serve(view_thread *vt)
{
	store_backend_impl *s = vt->s;

	while (!atomic_load(&s->view_stop)) {
		if (view_ping(vt, false) < 0 || view_ping_overdue(vt))
			return;
		if (view_pump(vt, VIEW_PING_MS) < 0 || view_outdated(vt))
			return;
		if (s->hot && vt->flush.ctx && now_ms() >= vt->flush_at_ms) {
			vt->flush_at_ms = now_ms() + HOT_FLUSH_MS;
			if (hot_flush(s, &vt->flush, false) != STORE_OK) {
				log_warning("%s", store_last_error());
				return;
			}
		}
		if (redis_view_keys(s->view) > redis_view_max_keys(s->view))
			return; /* grown with deleted keys' names: rebuild */
	}
}

/*
 * Why the view does not answer, logged once per reason: a server that
 * refuses tracking (an ACL, Redis before 6) or holds too many keys. Not a
 * lost connection: the store's own lookups say that. Lookups still get
 * their answer from Redis, so this is a warning about speed.
 */
static void view_say(char *said, size_t saidlen, const char *err)
{
	if (strcmp(said, err) == 0)
		return;
	log_warning("%s (lookups ask redis until it is built)", err);
	snprintf(said, saidlen, "%s", err);
}

static void *view_main(void *arg)
{
	view_thread *vt = arg;
	char err[512], said[512] = "";

	while (!atomic_load(&vt->s->view_stop)) {
		int rv = view_build(vt, err, sizeof(err));

		if (rv == 0) {
			log_debug("%s: local view: built%s", vt->s->where,
			          vt->flush.ctx ? ", the relay and ratelimit keys' hot copies answer" : "");
			if (said[0])
				log_notice(
				    "%s: local view: built, lookups of absent keys answered here again",
				    vt->s->where);
			said[0] = '\0';
			vt->backoff_ms = BACKOFF_MIN_MS;
			view_serve(vt);
		} else if (rv > 0 && !atomic_load(&vt->s->view_stop)) {
			view_say(said, sizeof(said), err);
		}
		view_drop(vt);
		if (vt->s->hot && !atomic_load(&vt->s->view_stop) && sqlite_hot_owes(vt->s->hot)) {
			/* What the copies owe, meanwhile on a pooled connection. */
			op o = {.what = "write behind", .fn = op_hot_flush};

			(void)run(vt->s, &o);
		}
		if (rv != 0) {
			view_sleep(vt, rv > 0 ? VIEW_OVERFULL_RETRY_MS : vt->backoff_ms);
			vt->backoff_ms =
			    vt->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : vt->backoff_ms * 2;
		}
	}
	return NULL;
}

/* The first lookup starts the view's thread, with every signal blocked (the daemon's threads take them). */
static void view_start(store_backend_impl *s)
{
	sigset_t all, old;

	if (atomic_load_explicit(&s->view_started, memory_order_relaxed) ||
	    atomic_exchange(&s->view_started, true))
		return;
	if (!(s->view_vt = calloc(1, sizeof(*s->view_vt))) ||
	    pipe2(s->view_wake, O_CLOEXEC | O_NONBLOCK) < 0) {
		free(s->view_vt);
		s->view_vt = NULL;
		s->view_started = false;
		return;
	}
	s->view_vt->s = s;
	s->view_vt->backoff_ms = BACKOFF_MIN_MS;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	if (pthread_create(&s->view_thread, NULL, view_main, s->view_vt) != 0) {
		close(s->view_wake[0]);
		close(s->view_wake[1]);
		free(s->view_vt);
		s->view_vt = NULL;
		s->view_started = false;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
}

static void view_stop(store_backend_impl *s)
{
	if (!s->view_started)
		return;
	atomic_store(&s->view_stop, true);
	if (write(s->view_wake[1], "", 1) < 0) {
		/* the thread sees view_stop within VIEW_PING_MS all the same */
	}
	pthread_join(s->view_thread, NULL);
	close(s->view_wake[0]);
	close(s->view_wake[1]);
	free(s->view_vt);
}

/*
 * A message waits on the view's socket: apply it here when the thread is
 * not at it (it may be descheduled on a busy machine); false when this
 * lookup must ask Redis.
 */
static bool view_help(store_backend_impl *s, int fd)
{
	bool ok = false;

	if (pthread_mutex_trylock(&s->view_io) != 0)
		return false;
	if (s->view_vt && s->view_vt->rc.ctx && s->view_vt->rc.ctx->fd == fd)
		ok = view_pump_locked(s->view_vt) == 0;
	pthread_mutex_unlock(&s->view_io);
	return ok;
}

/*
 * A decision under way on this thread (store_decision_begin): the store
 * whose view's socket it found empty, and that socket. Its later calls
 * answer from the view as of then, without a poll each (a recipient with
 * relay and a ratelimit rule made three, a tenth of the daemon's system
 * time on the bench's relay row).
 */
static _Thread_local struct {
	const store_backend_impl *s;
	int fd;
	bool on, polled;
} decision;
static _Thread_local uint64_t view_polls;

uint64_t store_redis_view_polls(void)
{
	return view_polls;
}

/* Something waits on the view's socket (pfd). */
static bool view_waiting(struct pollfd *pfd)
{
	view_polls++;
	return poll(pfd, 1, 0) != 0;
}

static void redis_decision(store_backend_impl *s, bool begin)
{
	decision.on = begin;
	decision.polled = false;
	decision.s = s;
}

/* This thread's decision found the view's socket fd of s empty already. */
static bool decision_polled(const store_backend_impl *s, int fd)
{
	return decision.on && decision.polled && decision.s == s && decision.fd == fd;
}

static void decision_note(const store_backend_impl *s, int fd)
{
	if (decision.on && decision.s == s) {
		decision.polled = true;
		decision.fd = fd;
	}
}

/*
 * The view is confirmed and nothing waits on its socket (applied here
 * when its thread is not at it): it, and the hot copies, hold as of now,
 * or as of the start of this thread's decision (store_decision_begin).
 */
static bool view_current(store_backend_impl *s, redis_view_token *t)
{
	struct pollfd pfd;

	if (!redis_view_enter(s->view, now_ms(), t))
		return false;
	pfd.fd = atomic_load(&s->view_fd);
	pfd.events = POLLIN;
	if (pfd.fd < 0)
		return false;
	if (decision_polled(s, pfd.fd))
		return true;
	if (view_waiting(&pfd)) {
		/* Applied here, the message counts like one the thread read: enter again. */
		if (!view_help(s, pfd.fd) || !redis_view_enter(s->view, now_ms(), t) || view_waiting(&pfd))
			return false;
	}
	decision_note(s, pfd.fd);
	return true;
}

/*
 * Which of keys[] may exist, from the view: false when it cannot tell
 * (off, being built, not confirmed in time, or a message waiting on its
 * socket that its thread has not applied yet).
 */
static bool view_maybe(store_backend_impl *s, const char *const *keys, size_t nkeys,
                       const store_netmask *built, uint64_t *maybe, redis_view_token *tp)
{
	redis_view_token t;
	store_netmask have;

	if (!s->view)
		return false;
	view_start(s);
	if (!view_current(s, &t))
		return false;
	if (built) {
		/* Keys built for some lengths only: none of the view's may be missing. */
		redis_view_lens(s->view, &have);
		if ((have.v4 & ~built->v4) || (have.v6[0] & ~built->v6[0]) || (have.v6[1] & ~built->v6[1]) ||
		    (have.v6[2] & ~built->v6[2]))
			return false;
	}
	*maybe = redis_view_test(s->view, keys, nkeys);
	*tp = t;
	return redis_view_still(s->view, &t);
}

/*
 * Keys this process is about to write: known at once, before the
 * server's message arrives, and what the view remembered of them
 * forgotten (redis_view_add). Called again once the write is done, so
 * that an answer read before the write and remembered while it was
 * under way is forgotten too, whenever the message arrives.
 */
static void view_note(store_backend_impl *s, const char *const *keys, size_t nkeys)
{
	for (size_t i = 0; s->view && i < nkeys; i++)
		redis_view_add(s->view, keys[i], strlen(keys[i]));
}

/* --- the hot copies at work ---------------------------------------------- */

/* May the copies answer now? */
static bool hot_ready(store_backend_impl *s)
{
	redis_view_token t;

	if (!s->hot || !s->view)
		return false;
	view_start(s);
	return atomic_load(&s->hot_tracked) && view_current(s, &t);
}

/* What the copies made of a query. */
typedef enum {
	HOT_DONE, /* answered: q->status QUERY_OK */
	HOT_MISS, /* the key is not held: a read would let them answer */
	HOT_REDIS /* Redis's to answer (a new member, a write, not a copied key) */
} hot_rc;

/* q answered from the copies (in Redis's clock: this host's plus offset). */
static hot_rc hot_answer(store_backend_impl *s, query *q, int64_t offset)
{
	sqlite_hot_rc rc = SQLITE_HOT_FULL;

	if (!hot_key(q))
		return HOT_REDIS;
	if (q->kind == QUERY_COUNTER) {
		int64_t at = q->u.counter.now_ms;

		q->u.counter.now_ms = at + offset;
		rc = sqlite_hot_counter(s->hot, q);
		q->u.counter.now_ms = at;
	} else if (q->kind == QUERY_KV && q->u.kv.op == QUERY_KV_GET) {
		int64_t at = q->u.kv.now_ms;

		q->u.kv.now_ms = at + offset;
		rc = sqlite_hot_kv_get(s->hot, q);
		q->u.kv.now_ms = at;
	} else if (q->kind == QUERY_DISTINCT_ADD) {
		sqlite_hot_distinct a = {.set = q->u.distinct.key,
		                         .member = q->u.distinct.member,
		                         .now = (wall_ms() + offset) / 1000,
		                         .window = q->u.distinct.window,
		                         .limit = q->u.distinct.limit,
		                         .peek = q->u.distinct.peek,
		                         .room = true};

		if ((rc = sqlite_hot_distinct_run(s->hot, &a)) == SQLITE_HOT_DONE) {
			q->u.distinct.count = a.count;
			q->u.distinct.present = a.present;
			q->u.distinct.capped = false;
		}
	}
	if (rc == SQLITE_HOT_DONE) {
		q->status = QUERY_OK;
		atomic_fetch_add(&s->hot_answers, 1);
		return HOT_DONE;
	}
	return rc == SQLITE_HOT_MISS ? HOT_MISS : HOT_REDIS;
}

/*
 * A read of q's key for a copy: the query's own script as a peek (a set's:
 * "load"; an add's "loadadd", which makes the add when its member is new,
 * so that a new network costs one round trip with its read, not two).
 */
static void hot_load_call(const store_backend_impl *s, const query *q, script_call *c)
{
	query peek = *q;

	if (q->kind == QUERY_COUNTER)
		peek.u.counter.cost = 0;
	if (q->kind == QUERY_KV)
		peek.u.kv.op = QUERY_KV_GET;
	if (q->kind == QUERY_DISTINCT_ADD)
		peek.u.distinct.peek = true;
	script_call_of(s, &peek, c);
	if (q->kind == QUERY_DISTINCT_ADD)
		c->argv[9] = q->u.distinct.peek ? "load" : "loadadd", c->argvlen[9] = strlen(c->argv[9]);
}

/* A set's members from a "load" reply {now, member, score, ...}; false when not kept (too many, odd). */
static bool hot_load_set(store_backend_impl *s, const query *q, const redisReply *r, uint64_t gen)
{
	sqlite_hot_member m[HOT_SET_MAX];
	size_t n = 0;

	if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 || r->elements % 2 != 1 ||
	    (r->elements - 1) / 2 > HOT_SET_MAX)
		return false;
	for (size_t i = 1; i + 1 < r->elements; i += 2) {
		if (!reply_is_str(r->element[i]) || !reply_is_str(r->element[i + 1]))
			return false;
		m[n].member = r->element[i]->str;
		m[n++].expires = strtoll(r->element[i + 1]->str, NULL, 10);
	}
	return sqlite_hot_set_load(s->hot, q->u.distinct.key, m, n, gen);
}

/* A read's reply into the copies (kept unless an invalidation or a flush came since gen). */
static void hot_load(store_backend_impl *s, const query *q, const redisReply *r, uint64_t gen)
{
	if (q->kind == QUERY_COUNTER && reply_ints(r, 4, 3))
		(void)sqlite_hot_counter_load(s->hot, q->u.counter.ns, q->u.counter.key,
		                              r->element[3]->integer > 0, r->element[3]->integer, gen);
	else if (q->kind == QUERY_KV && reply_ints(r, 3, 0) && reply_is_str(r->element[1]) &&
	         r->element[2]->type == REDIS_REPLY_INTEGER)
		(void)sqlite_hot_kv_load(s->hot, q->u.kv.ns, q->u.kv.key, r->element[0]->integer != 0,
		                         r->element[1]->str, r->element[2]->integer, gen);
	else if (q->kind == QUERY_DISTINCT_ADD)
		(void)hot_load_set(s, q, r, gen);
}

/* A set's peek answered from its "load" reply (the members live at Redis's now); false when cut short. */
static bool hot_peek_answer(query *q, const redisReply *r)
{
	bool present = false;

	if (r->type != REDIS_REPLY_ARRAY || r->elements % 2 != 1 || (r->elements - 1) / 2 > HOT_SET_MAX)
		return false;
	for (size_t i = 1; i + 1 < r->elements; i += 2) {
		if (!reply_is_str(r->element[i]))
			return false;
		present = present || strcmp(r->element[i]->str, q->u.distinct.member) == 0;
	}
	q->u.distinct.count = (r->elements - 1) / 2;
	q->u.distinct.present = present;
	q->u.distinct.capped = false;
	return true;
}

/*
 * A read's reply: into the copies, and the query's answer when the read
 * was the query itself (a peek: a bucket's, a marker's, a set's) or made
 * its write (a new member's "loadadd"). True for a write: the set's copy
 * must go (its invalidation comes back to this daemon too).
 */
static bool hot_loaded(store_backend_impl *s, rconn *rc, query *q, const redisReply *r, uint64_t gen)
{
	bool answered;

	if (q->kind == QUERY_DISTINCT_ADD && !q->u.distinct.peek && r->type == REDIS_REPLY_INTEGER) {
		q->status = script_answer(s, rc, r, q) == STORE_OK ? QUERY_OK : QUERY_ERROR;
		return true;
	}
	hot_load(s, q, r, gen);
	if (q->kind == QUERY_DISTINCT_ADD)
		answered = q->u.distinct.peek && hot_peek_answer(q, r);
	else
		answered = ((q->kind == QUERY_COUNTER && q->u.counter.cost == 0) ||
		            (q->kind == QUERY_KV && q->u.kv.op == QUERY_KV_GET)) &&
		           script_answer(s, rc, r, q) == STORE_OK;
	if (answered)
		q->status = QUERY_OK;
	return false;
}

/*
 * The reads of o->q[0 .. o->nkeys) for the copies, pipelined (one round
 * trip), each answering its query when it can (hot_loaded): the others
 * ask the copies again. o->created[i] set for a query whose read made
 * its write (a new member).
 */
/* A set's peek right before the add of the same member: the add's read ("loadadd") answers both. */
static bool hot_pair(const query *peek, const query *add)
{
	return peek->kind == QUERY_DISTINCT_ADD && add->kind == QUERY_DISTINCT_ADD && peek->u.distinct.peek &&
	       !add->u.distinct.peek && peek->u.distinct.store_clock == add->u.distinct.store_clock &&
	       peek->u.distinct.window == add->u.distinct.window &&
	       strcmp(peek->u.distinct.key, add->u.distinct.key) == 0 &&
	       strcmp(peek->u.distinct.member, add->u.distinct.member) == 0;
}

/*
 * The peek paired with an add, from the add's "loadadd" reply: the set as
 * read (a live member), or the add's count (its member was not live:
 * the count before it is one less, refused or not).
 */
static void hot_pair_answer(query *peek, const redisReply *r)
{
	if (r->type == REDIS_REPLY_INTEGER && r->integer > 0) {
		peek->u.distinct.count = (uint64_t)r->integer - 1;
		peek->u.distinct.present = false;
		peek->u.distinct.capped = false;
		peek->status = QUERY_OK;
	} else if (hot_peek_answer(peek, r)) {
		peek->status = QUERY_OK;
	}
}

static store_status op_hot_load(store_backend_impl *s, rconn *rc, op *o)
{
	script_call *calls = calloc(o->nkeys, sizeof(*calls));
	bool *paired = calloc(o->nkeys, sizeof(*paired)); /* answered by the next one's reply */
	store_status st = STORE_OK;
	size_t sent = 0;

	if (!calls || !paired) {
		free(calls);
		free(paired);
		return store_set_error("%s: batch: out of memory", s->where);
	}
	for (; sent < o->nkeys; sent++) {
		script_call *c = &calls[sent];

		if (sent + 1 < o->nkeys && hot_pair(&o->q[sent], &o->q[sent + 1])) {
			paired[sent] = true;
			continue;
		}
		hot_load_call(s, &o->q[sent], c);
		c->argv[0] = "EVALSHA", c->argvlen[0] = 7;
		c->argv[1] = rc->sha[c->script], c->argvlen[1] = strlen(rc->sha[c->script]);
		if (append_argv(rc->ctx, c->argc, c->argv, c->argvlen) != REDIS_OK) {
			st = append_failed(s, rc->ctx, "batch");
			break;
		}
	}
	atomic_fetch_add(&s->script_trips, 1);
	for (size_t i = 0; i < sent && st == STORE_OK; i++) {
		redisReply *r;

		if (paired[i])
			continue;
		if ((st = next_reply(s, rc->ctx, &r, "batch")) != STORE_OK)
			break;
		/* NOSCRIPT (a restart): not read this time, the query goes to Redis on its own. */
		if (r->type != REDIS_REPLY_ERROR) {
			if (i > 0 && paired[i - 1])
				hot_pair_answer(&o->q[i - 1], r);
			o->created[i] = hot_loaded(s, rc, &o->q[i], r, (uint64_t)o->now);
		}
		freeReplyObject(r);
	}
	free(calls);
	free(paired);
	return st;
}

/* A write q made in Redis: this daemon's copy goes at once (its own invalidation follows). */
static void hot_wrote(store_backend_impl *s, const query *q)
{
	if (!s->hot || !hot_key(q) || q->status != QUERY_OK)
		return;
	if (q->kind == QUERY_COUNTER && q->u.counter.cost > 0 && q->u.counter.allowed)
		sqlite_hot_invalidate(s->hot, SQLITE_HOT_COUNTER, q->u.counter.ns, q->u.counter.key);
	else if (q->kind == QUERY_KV && q->u.kv.op != QUERY_KV_GET)
		sqlite_hot_invalidate(s->hot, SQLITE_HOT_KV, q->u.kv.ns, q->u.kv.key);
	else if (q->kind == QUERY_DISTINCT_ADD && !q->u.distinct.peek)
		sqlite_hot_invalidate(s->hot, SQLITE_HOT_SET, NULL, q->u.distinct.key);
}

/* Queries to Redis as before: one script, or a pipelined batch. */
static store_status redis_send(store_backend_impl *s, query *q, size_t nq)
{
	op one = {.what = script_what(q), .fn = op_script, .q = q};
	op many = {.what = "batch", .fn = op_batch, .q = q, .nkeys = nq};
	store_status st;

	if (nq == 1) {
		st = run(s, &one);
		q->status = st == STORE_OK ? QUERY_OK : QUERY_ERROR;
	} else {
		st = run(s, &many);
	}
	for (size_t i = 0; i < nq; i++) {
		/* Not even sent (no connection): unanswered is an error, the checks' on_error applies. */
		if (q[i].status == QUERY_PENDING)
			q[i].status = QUERY_ERROR;
		hot_wrote(s, &q[i]);
	}
	return st;
}

/*
 * hot_run's indices on the stack up to this many queries (a recipient's
 * relay and ratelimit queries, their effects): 16 * 9 bytes, small for
 * libmilter's threads. More take the heap.
 */
#define HOT_RUN_STACK 16

/*
 * A set's peek the copy answers "absent" right before the add of the same
 * member: the add goes to Redis, and the peek must be answered with it
 * (the pair's "loadadd" reply), not by the copy. The copies' clock runs
 * up to a round trip + 1 ms ahead of Redis's: at a member's expiry edge
 * the copy has it expired where Redis still counts it, and an account
 * whose set holds more than its limit (shadow mode, a lowered
 * max_networks) would trip on a known network.
 */
static bool hot_peek_with_add(const query *q, size_t i, size_t nq)
{
	return i + 1 < nq && hot_pair(&q[i], &q[i + 1]) && q[i].status == QUERY_OK &&
	       !q[i].u.distinct.present;
}

/* q[from[0 .. n)] copied out for a round trip; NULL when out of memory. */
static query *hot_gather(const query *q, const size_t *from, size_t n)
{
	query *todo = malloc(n * sizeof(*todo));

	for (size_t j = 0; todo && j < n; j++)
		todo[j] = q[from[j]];
	return todo;
}

/*
 * The reads of q[from[0 .. n)] for the copies (one round trip), what they
 * answered written back to q. Not STORE_OK: the queries left unanswered
 * failed (asking again would make a hung server cost the request another
 * command_timeout; the checks' on_error applies as without the copies).
 */
static store_status hot_read_for(store_backend_impl *s, query *q, size_t nq, const size_t *from, size_t n,
                                 bool *read)
{
	query *todo = hot_gather(q, from, n);
	op o = {.what = "batch", .fn = op_hot_load, .q = todo, .nkeys = n, .created = read};
	store_status st = STORE_ERROR;

	if (!todo) {
		st = store_set_error("%s: batch: out of memory", s->where);
	} else {
		memset(read, 0, n * sizeof(*read));
		o.now = (int64_t)sqlite_hot_generation(s->hot);
		st = run(s, &o);
	}
	/* What the reads answered (peeks, a new member's add) holds even if a later one failed. */
	for (size_t j = 0; todo && j < n; j++)
		if (todo[j].status == QUERY_OK || read[j]) {
			q[from[j]] = todo[j];
			if (read[j])
				hot_wrote(s, &q[from[j]]);
		}
	free(todo);
	if (st != STORE_OK)
		for (size_t i = 0; i < nq; i++)
			if (q[i].status != QUERY_OK)
				q[i].status = QUERY_ERROR;
	return st;
}

/* q[from[0 .. n)] to Redis as before (redis_send), the answers written back to q. */
static store_status hot_send_for(store_backend_impl *s, query *q, const size_t *from, size_t n)
{
	query *todo = hot_gather(q, from, n);
	store_status st;

	if (!todo) {
		for (size_t j = 0; j < n; j++)
			q[from[j]].status = QUERY_ERROR;
		return store_set_error("%s: batch: out of memory", s->where);
	}
	st = redis_send(s, todo, n);
	for (size_t j = 0; j < n; j++)
		q[from[j]] = todo[j];
	free(todo);
	return st;
}

/*
 * kv, counter and distinct queries, in order, through the copies: what
 * they answer costs no round trip (and no allocation); what they do not
 * hold is read for them (one round trip for the lot) and asked again; the
 * rest (a new member, a trip marker's write, a copy not kept) goes to
 * Redis as before.
 */
static store_status hot_run(store_backend_impl *s, query *q, size_t nq)
{
	size_t from_stack[HOT_RUN_STACK], *from = from_stack, n = 0;
	bool read_stack[HOT_RUN_STACK], *read = read_stack;
	int64_t offset;
	store_status st = STORE_OK;

	if (!hot_ready(s))
		return redis_send(s, q, nq);
	if (nq > HOT_RUN_STACK) {
		from = malloc(nq * sizeof(*from));
		read = malloc(nq * sizeof(*read));
		if (!from || !read) {
			free(from);
			free(read);
			return redis_send(s, q, nq);
		}
	}
	offset = atomic_load(&s->hot_offset_ms) + atomic_load(&s->hot_skew_ms);
	for (size_t i = 0; i < nq; i++) {
		hot_rc rc = hot_answer(s, &q[i], offset);

		if (rc == HOT_DONE && hot_peek_with_add(q, i, nq)) {
			q[i].status = QUERY_PENDING;
			from[n++] = i++;
			rc = HOT_MISS; /* the add, read with its peek ("loadadd") */
		}
		if (rc == HOT_MISS)
			from[n++] = i;
	}
	if (n > 0 && (st = hot_read_for(s, q, nq, from, n, read)) != STORE_OK)
		goto out;
	/*
	 * A set's peek still unanswered before its add (the read did not answer
	 * it: NOSCRIPT, an odd reply) goes to Redis with the add, never to the
	 * copy: it may be the pair's, whose copy has the member expired.
	 */
	n = 0;
	for (size_t i = 0; i < nq; i++)
		if (q[i].status != QUERY_OK &&
		    ((i + 1 < nq && hot_pair(&q[i], &q[i + 1])) || hot_answer(s, &q[i], offset) != HOT_DONE))
			from[n++] = i;
	if (n > 0)
		st = hot_send_for(s, q, from, n);
out:
	if (from != from_stack) {
		free(from);
		free(read);
	}
	return st;
}

/* --- the ops table ------------------------------------------------------- */

/*
 * The keys that may exist (bits of maybe), in order, answered from what
 * earlier round trips said where the view remembers it: STORE_OK with
 * *found (the first live entry), STORE_NOTFOUND (none is live), or
 * STORE_ERROR with the keys still to ask in send[] (from the first one
 * it does not know on, less those it knows to have no entry).
 */
static store_status view_recall(store_backend_impl *s, const redis_view_token *t, const char *const *keys,
                                size_t nkeys, uint64_t maybe, int64_t now, store_entry *found,
                                const char **send, uint64_t *gens, size_t *nsend)
{
	*nsend = 0;
	for (size_t i = 0; i < nkeys; i++) {
		redis_view_answer a;
		uint64_t gen;

		if (!(maybe >> i & 1))
			continue;
		a = redis_view_recall(s->view, t, keys[i], found, &gen);
		if (*nsend > 0 ? a == REDIS_VIEW_NONE : a != REDIS_VIEW_UNKNOWN) {
			if (*nsend == 0 && a == REDIS_VIEW_FOUND && found->expires > now)
				return STORE_OK;
			continue; /* no entry, or one expired by this host's clock (not live, as for the
			             script) */
		}
		/* the first key it does not know, and every key after it but those known to have none */
		gens[*nsend] = gen;
		send[(*nsend)++] = keys[i];
	}
	return *nsend ? STORE_ERROR : STORE_NOTFOUND;
}

/*
 * What the round trip for send[] said, for the next lookups: no live
 * entry for the keys before the one found (for all of them when none
 * was), and the entry found. A network key's "none" is not kept: the
 * lookup script skips a length the netlens hash lacks, and an entry
 * written around spamtrapd gets its length there without a write of
 * that key (docs/redis.md).
 */
static void view_learn(store_backend_impl *s, const redis_view_token *t, const char *const *send,
                       const uint64_t *gens, size_t nsend, store_status st, const store_entry *found)
{
	int family;

	for (size_t i = 0; i < nsend && st != STORE_ERROR; i++) {
		if (st == STORE_OK && strcmp(send[i], found->key) == 0) {
			redis_view_remember(s->view, t, send[i], found, gens[i]);
			return;
		}
		if (store_net_key_len(send[i], &family) < 0)
			redis_view_remember(s->view, t, send[i], NULL, gens[i]);
	}
}

/*
 * A lookup through the view when it can answer: none of the keys (or,
 * with built, none of the lengths the keys were not built for) may exist
 * and Redis is not asked; nor is it when the view remembers the answer
 * for the keys that may (view_recall). Otherwise only the keys that may
 * exist and it does not know are sent, in order, so that the first live
 * one is the same. *stale (with built): the view could not vouch for the
 * lengths, build every key.
 */
static store_status view_lookup(store_backend_impl *s, const char *const *keys, size_t nkeys,
                                const store_netmask *built, int64_t now, store_entry *found, bool *stale)
{
	const char *maybe_keys[STORE_LOOKUP_MAX];
	uint64_t maybe;
	uint64_t gens[STORE_LOOKUP_MAX];
	redis_view_token t;
	bool learn = false;
	int family;
	store_status st;
	op o = {.what = "lookup", .fn = op_lookup, .keys = keys, .nkeys = nkeys, .now = now, .out = found};

	if (nkeys <= STORE_LOOKUP_MAX && view_maybe(s, keys, nkeys, built, &maybe, &t)) {
		if (!maybe) {
			redis_view_answered(s->view);
			return STORE_NOTFOUND;
		}
		st = view_recall(s, &t, keys, nkeys, maybe, now, found, maybe_keys, gens, &o.nkeys);
		if (!redis_view_still(s->view,
		                      &t)) { /* changed meanwhile: ask for every key that may exist */
			o.nkeys = 0;
			for (size_t i = 0; i < nkeys; i++)
				if (maybe >> i & 1)
					maybe_keys[o.nkeys++] = keys[i];
		} else if (st != STORE_ERROR) {
			redis_view_answered(s->view);
			return st;
		} else {
			learn = true;
		}
		o.keys = maybe_keys;
	} else if (built) {
		*stale = true;
		return STORE_NOTFOUND;
	}
	if (o.nkeys == 1 && store_net_key_len(o.keys[0], &family) < 0)
		o.fn = op_lookup_one;
	st = run(s, &o);
	if (learn)
		view_learn(s, &t, o.keys, gens, o.nkeys, st, found);
	return st;
}

static store_status redis_lookup(store_backend_impl *s, const char *const *keys, size_t nkeys, int64_t now,
                                 store_entry *found)
{
	return view_lookup(s, keys, nkeys, NULL, now, found, NULL);
}

static bool redis_netlens(store_backend_impl *s, store_netmask *out)
{
	redis_view_token t;

	if (!s->view)
		return false;
	view_start(s);
	if (!redis_view_enter(s->view, now_ms(), &t))
		return false;
	redis_view_lens(s->view, out);
	return redis_view_still(s->view, &t);
}

static store_status redis_lookup_built(store_backend_impl *s, const char *const *keys, const int16_t *netlens,
                                       size_t nkeys, const store_netmask *built, int64_t now,
                                       store_entry *found, bool *stale)
{
	(void)netlens;
	*stale = false;
	return view_lookup(s, keys, nkeys, built, now, found, stale);
}

static store_status redis_record(store_backend_impl *s, const char *const *keys, size_t nkeys,
                                 const store_hit *hit, bool *created)
{
	op o = {
	    .what = "record", .fn = op_record, .keys = keys, .nkeys = nkeys, .hit = hit, .created = created};

	store_status st;

	view_note(s, keys, nkeys);
	st = run(s, &o);
	view_note(s, keys, nkeys); /* an answer read before the write and remembered since: forgotten */
	return st;
}

static store_status redis_distinct_add(store_backend_impl *s, const char *set, const char *member,
                                       int64_t now, int64_t window, uint64_t limit, uint64_t max_rows,
                                       uint64_t *count, bool *capped)
{
	/* Every set key expires a window after its last addition: Redis bounds it without a cap. */
	(void)max_rows;
	*capped = false;
	const char *names[2] = {set, member};
	op o = {.what = "distinct",
	        .fn = op_distinct,
	        .keys = names,
	        .nkeys = 2,
	        .now = now,
	        .window = window,
	        .limit = limit};
	store_status st = run(s, &o);

	*count = o.count;
	return st;
}

static store_status redis_distinct_peek(store_backend_impl *s, const char *set, const char *member,
                                        int64_t now, uint64_t *count, bool *present)
{
	const char *names[2] = {set, member};
	/* The script's add arguments are computed anyway: a window of 1 s keeps them in range. */
	op o = {.what = "distinct peek",
	        .fn = op_distinct,
	        .keys = names,
	        .nkeys = 2,
	        .now = now,
	        .window = 1,
	        .peek = true};
	store_status st = run(s, &o);

	*count = o.count;
	*present = o.present;
	return st;
}

static store_status redis_distinct_list(store_backend_impl *s, const char *set, int64_t now,
                                        store_distinct_visit_fn fn, void *ctx)
{
	op o = {.what = "distinct list",
	        .fn = op_distinct_list,
	        .keys = &set,
	        .nkeys = 1,
	        .now = now,
	        .dvisit = fn,
	        .ctx = ctx};

	return run(s, &o);
}

static store_status redis_distinct_clear(store_backend_impl *s, const char *set)
{
	op o = {.what = "distinct clear", .fn = op_distinct_clear, .keys = &set, .nkeys = 1};

	return run(s, &o);
}

static store_status redis_kv(store_backend_impl *s, query *q)
{
	q->status = QUERY_PENDING;
	return hot_run(s, q, 1);
}

static store_status redis_counter(store_backend_impl *s, query *q)
{
	q->status = QUERY_PENDING;
	return hot_run(s, q, 1);
}

static store_status redis_batch(store_backend_impl *s, query *q, size_t nq)
{
	return hot_run(s, q, nq);
}

/*
 * Before spamtrapctl reads buckets or sets: a daemon's copies owe at most
 * HOT_FLUSH_MS of refreshes, and of charges HOT_WAIT_MS more (written by
 * its view thread, which looks every VIEW_PING_MS), so wait that long
 * and a tick more; nothing can tell whether a daemon holds copies.
 */
static store_status redis_sync(store_backend_impl *s)
{
	struct timespec t = {.tv_sec = (2 * HOT_FLUSH_MS + HOT_WAIT_MS) / 1000,
	                     .tv_nsec = (long)((2 * HOT_FLUSH_MS + HOT_WAIT_MS) % 1000) * 1000000L};

	(void)s;
	while (nanosleep(&t, &t) < 0 && errno == EINTR) {
	}
	return STORE_OK;
}

/* The daemon: keep the hot copies (with the local view only: its invalidations keep them true). */
static store_status redis_write_behind(store_backend_impl *s)
{
	if (s->view && !s->hot && !(s->hot = sqlite_hot_new_shared(SQLITE_HOT_MAX_ENTRIES)))
		return store_set_error("%s: hot copies: out of memory", s->where);
	return STORE_OK;
}

static uint64_t redis_script_trips(store_backend_impl *s)
{
	return atomic_load(&s->script_trips);
}

static void redis_hot_skew(store_backend_impl *s, int64_t ms)
{
	atomic_store(&s->hot_skew_ms, ms);
}

static store_status redis_get(store_backend_impl *s, const char *key, store_entry *out)
{
	op o = {.what = "get", .fn = op_get, .keys = &key, .nkeys = 1, .out = out};

	return run(s, &o);
}

static store_status redis_put(store_backend_impl *s, const store_entry *e)
{
	const char *key = e->key;
	op o = {.what = "put", .fn = op_put, .in = e};

	store_status st;

	view_note(s, &key, 1);
	st = run(s, &o);
	view_note(s, &key, 1);
	return st;
}

static store_status redis_remove(store_backend_impl *s, const char *key)
{
	op o = {.what = "remove", .fn = op_remove, .keys = &key, .nkeys = 1};

	store_status st;

	view_note(s, &key, 1); /* and what the view remembers of it forgotten, before and after */
	st = run(s, &o);
	view_note(s, &key, 1);
	return st;
}

static store_status redis_purge(store_backend_impl *s, int64_t now, uint64_t *purged)
{
	op o = {.what = "purge", .fn = op_purge, .now = now};
	store_status st = run(s, &o);

	*purged = o.count;
	return st;
}

static store_status redis_foreach(store_backend_impl *s, int64_t now, store_visit_fn fn, void *ctx)
{
	op o = {.what = "foreach", .fn = op_foreach, .now = now, .visit = fn, .ctx = ctx};

	return run(s, &o);
}

/* --- the greylist -------------------------------------------------------- */

#define GREY_KEYBUF (PREFIX_MAX + 8 + GREYSTEP_KEY_MAX)
#define GREY_ARGC 10 /* EVALSHA sha 2 triplet client delay window max_age awl_count period */

/* PREFIX "grey:t:" KEY or PREFIX "grey:a:" KEY into buf (GREY_KEYBUF bytes); returns its length. */
static size_t grey_key(const store_backend_impl *s, store_grey_kind kind, const char *key, char *buf)
{
	int n = snprintf(buf, GREY_KEYBUF, "%sgrey:%c:%s", s->cfg.redis_prefix ? s->cfg.redis_prefix : "",
	                 kind == STORE_GREY_TRIPLET ? 't' : 'a', key);

	return n > 0 && n < GREY_KEYBUF ? (size_t)n : 0;
}

/* greylist_lua's reply into the query's answer. */
static store_status grey_answer(const store_backend_impl *s, rconn *rc, const redisReply *r, query *q)
{
	greystep_out *out = &q->u.grey.answer;
	long long v[12];

	if (r->type != REDIS_REPLY_ARRAY || r->elements != 12)
		return reply_error(s, rc, r, "greylist");
	for (size_t i = 0; i < 12; i++) {
		if (r->element[i]->type != REDIS_REPLY_INTEGER)
			return reply_error(s, rc, r, "greylist");
		v[i] = r->element[i]->integer;
	}
	if (v[1] < GREYSTEP_DEFER_NEW || v[1] > GREYSTEP_PASS_AWL)
		return store_set_error("%s: greylist: unknown result %lld", s->where, v[1]);
	q->u.grey.now_ms = v[0];
	out->result = (greystep_result)v[1];
	out->remaining_ms = v[2];
	out->waited_ms = v[3];
	out->write_triplet = v[4] != 0;
	out->triplet = (greystep_triplet){.present = v[4] != 0, .first_ms = v[5], .last_ms = v[6]};
	out->triplet_expires_ms = v[7];
	out->write_awl = v[8] != 0;
	out->awl = (greystep_awl){.present = v[8] != 0, .count = (uint64_t)v[9], .last_ms = v[10]};
	out->awl_expires_ms = v[11];
	return STORE_OK;
}

/* One script, one round trip: the step on the server, in its clock. */
static store_status op_greylist(store_backend_impl *s, rconn *rc, op *o)
{
	const query *q = o->q;
	char keys[2][GREY_KEYBUF], nums[5][24];
	const char *argv[GREY_ARGC];
	size_t argvlen[GREY_ARGC];
	int nkeys = q->u.grey.awl ? 2 : 1, argc = 3;
	redisReply *r = NULL;
	store_status st;

	argv[argc] = keys[0], argvlen[argc++] = grey_key(s, STORE_GREY_TRIPLET, q->u.grey.triplet, keys[0]);
	if (q->u.grey.awl)
		argv[argc] = keys[1], argvlen[argc++] = grey_key(s, STORE_GREY_AWL, q->u.grey.awl, keys[1]);
	argv[2] = nkeys == 2 ? "2" : "1", argvlen[2] = 1;
	snprintf(nums[0], 24, "%lld", (long long)q->u.grey.params.delay_ms);
	snprintf(nums[1], 24, "%lld", (long long)q->u.grey.params.retry_window_ms);
	snprintf(nums[2], 24, "%lld", (long long)q->u.grey.params.max_age_ms);
	snprintf(nums[3], 24, "%llu", (unsigned long long)q->u.grey.params.awl_count);
	snprintf(nums[4], 24, "%lld", (long long)GREYSTEP_AWL_PERIOD_MS);
	for (int i = 0; i < 5; i++)
		argv[argc] = nums[i], argvlen[argc++] = strlen(nums[i]);
	st = eval_script(s, rc, SCRIPT_GREYLIST, argc, argv, argvlen, &r, "greylist");
	if (st == STORE_OK)
		st = grey_answer(s, rc, r, o->q);
	freeReplyObject(r);
	return st;
}

static store_status op_grey_time(store_backend_impl *s, rconn *rc, op *o)
{
	const char *argv[1] = {"TIME"};
	redisReply *r;
	store_status st = STORE_OK;

	if (command(s, rc->ctx, &r, "time", 1, argv) != STORE_OK)
		return STORE_ERROR;
	if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || !reply_is_str(r->element[0]) ||
	    !reply_is_str(r->element[1]))
		st = reply_error(s, rc, r, "time");
	else
		o->now = str_to_i64(r->element[0]) * 1000 + str_to_i64(r->element[1]) / 1000;
	freeReplyObject(r);
	return st;
}

/* HMGET of a greylist record's fields (first, count, last, exp), for get and foreach. */
static int append_grey_hmget(redisContext *c, const char *fullkey, size_t keylen)
{
	const char *argv[6] = {"HMGET", fullkey, "first", "count", "last", "exp"};
	size_t argvlen[6] = {5, keylen, 5, 5, 4, 3};

	return redisAppendCommandArgv(c, 6, argv, argvlen);
}

/* An HMGET answer into *r (kind and key set by the caller); false when the record does not exist. */
static bool grey_from_reply(const redisReply *h, store_grey_record *r)
{
	if (h->type != REDIS_REPLY_ARRAY || h->elements != 4 || !reply_is_str(h->element[3]))
		return false;
	r->first_ms = str_to_i64(h->element[0]);
	r->count = (uint64_t)str_to_i64(h->element[1]);
	r->last_ms = str_to_i64(h->element[2]);
	r->expires_ms = str_to_i64(h->element[3]);
	return true;
}

static store_status op_grey_get(store_backend_impl *s, rconn *rc, op *o)
{
	char buf[GREY_KEYBUF];
	redisReply *r;
	store_status st = STORE_NOTFOUND;

	if (append_grey_hmget(rc->ctx, buf, grey_key(s, o->kind, o->keys[0], buf)) != REDIS_OK)
		return append_failed(s, rc->ctx, "greylist get");
	if (next_reply(s, rc->ctx, &r, "greylist get") != STORE_OK)
		return STORE_ERROR;
	if (r->type == REDIS_REPLY_ERROR) {
		st = reply_error(s, rc, r, "greylist get");
	} else if (grey_from_reply(r, o->grey)) {
		o->grey->kind = o->kind;
		snprintf(o->grey->key, sizeof(o->grey->key), "%s", o->keys[0]);
		st = STORE_OK;
	}
	freeReplyObject(r);
	return st;
}

static store_status op_grey_remove(store_backend_impl *s, rconn *rc, op *o)
{
	char buf[GREY_KEYBUF];
	const char *argv[2] = {"DEL", buf};
	redisReply *r;
	store_status st;

	grey_key(s, o->kind, o->keys[0], buf);
	if (command(s, rc->ctx, &r, "greylist remove", 2, argv) != STORE_OK)
		return STORE_ERROR;
	if (r->type != REDIS_REPLY_INTEGER)
		st = reply_error(s, rc, r, "greylist remove");
	else
		st = r->integer > 0 ? STORE_OK : STORE_NOTFOUND;
	freeReplyObject(r);
	return st;
}

/* MULTI, DEL, HSET, PEXPIREAT, EXEC: the record replaced atomically, with its expiry. */
static store_status op_grey_awl_put(store_backend_impl *s, rconn *rc, op *o)
{
	const store_grey_record *g = o->grey;
	char buf[GREY_KEYBUF], nums[3][24];
	const char *multi[1] = {"MULTI"}, *del[2] = {"DEL", buf}, *exec[1] = {"EXEC"};
	const char *hset[8] = {"HSET", buf, "count", nums[0], "last", nums[1], "exp", nums[2]};
	const char *expire[3] = {"PEXPIREAT", buf, nums[2]};
	struct {
		int argc;
		const char **argv;
	} cmds[] = {{1, multi}, {2, del}, {8, hset}, {3, expire}, {1, exec}};
	store_status st = STORE_OK;

	grey_key(s, STORE_GREY_AWL, g->key, buf);
	snprintf(nums[0], 24, "%llu", (unsigned long long)g->count);
	snprintf(nums[1], 24, "%lld", (long long)g->last_ms);
	snprintf(nums[2], 24, "%lld", (long long)g->expires_ms);
	o->no_retry = true;
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]) && st == STORE_OK; i++) {
		redisReply *r;

		if (command(s, rc->ctx, &r, "greylist whitelist", cmds[i].argc, cmds[i].argv) != STORE_OK)
			return STORE_ERROR;
		if (r->type == REDIS_REPLY_ERROR || (i == 4 && r->type != REDIS_REPLY_ARRAY))
			st = reply_error(s, rc, r, "greylist whitelist");
		freeReplyObject(r);
		/* A connection left inside MULTI would queue the next call's commands: leave it. */
		if (st != STORE_OK && i > 0 && i < 4)
			rc->stale = true;
	}
	return st;
}

/* The greylist's key names SCAN found, without PREFIX "grey:", sorted into triplets ("t:") and clients
 * ("a:"). */
typedef struct grey_lists {
	keylist kind[2]; /* [STORE_GREY_TRIPLET], [STORE_GREY_AWL] */
	size_t skip;     /* strlen(PREFIX "grey:") */
} grey_lists;

static store_status grey_collect(store_backend_impl *s, rconn *rc, op *o, redisReply *keys)
{
	grey_lists *gl = o->ctx;

	(void)rc;
	for (size_t i = 0; i < keys->elements; i++) {
		const redisReply *k = keys->element[i];
		keylist *kl;

		if (!reply_is_str(k) || k->len < gl->skip + 3 || k->str[gl->skip + 1] != ':' ||
		    k->len - gl->skip - 2 >= GREYSTEP_KEY_MAX)
			continue;
		if (k->str[gl->skip] != 't' && k->str[gl->skip] != 'a')
			continue;
		kl = &gl->kind[k->str[gl->skip] == 't' ? STORE_GREY_TRIPLET : STORE_GREY_AWL];
		if (kl->n == kl->cap) {
			size_t cap = kl->cap ? kl->cap * 2 : 1024;
			char **v = realloc(kl->v, cap * sizeof(*v));

			if (!v)
				return store_set_error("%s: greylist list: out of memory", s->where);
			kl->v = v, kl->cap = cap;
		}
		if (!(kl->v[kl->n] = strndup(k->str + gl->skip + 2, k->len - gl->skip - 2)))
			return store_set_error("%s: greylist list: out of memory", s->where);
		kl->n++;
	}
	return STORE_OK;
}

/* Fetch keys[0..n) of one kind in one pipeline and visit the live ones; 1 when the visitor stopped. */
static int grey_visit_batch(store_backend_impl *s, rconn *rc, op *o, char **keys, size_t n)
{
	char buf[GREY_KEYBUF];
	int stop = 0;

	for (size_t i = 0; i < n; i++)
		if (append_grey_hmget(rc->ctx, buf, grey_key(s, o->kind, keys[i], buf)) != REDIS_OK)
			return append_failed(s, rc->ctx, "greylist list");
	for (size_t i = 0; i < n; i++) {
		redisReply *r;

		if (next_reply(s, rc->ctx, &r, "greylist list") != STORE_OK)
			return STORE_ERROR;
		memset(o->grey, 0, sizeof(*o->grey));
		if (!stop && grey_from_reply(r, o->grey) && o->grey->expires_ms > o->now) {
			o->grey->kind = o->kind;
			snprintf(o->grey->key, sizeof(o->grey->key), "%s", keys[i]);
			o->no_retry = true;
			pipe_guard_end(&o->guard);
			stop = o->grey_visit(o->grey, o->ctx) != 0;
			pipe_guard_begin(&o->guard, o->guard.active);
		}
		freeReplyObject(r);
	}
	return stop;
}

/* One kind's names, sorted, without the duplicates SCAN may give; 1 when the visitor stopped. */
static int grey_visit_kind(store_backend_impl *s, rconn *rc, op *o, keylist *kl)
{
	size_t n = 0;
	int rv = 0;

	if (kl->n == 0)
		return 0;
	qsort(kl->v, kl->n, sizeof(*kl->v), cmp_str);
	for (size_t i = 0; i < kl->n; i++) {
		if (n > 0 && strcmp(kl->v[n - 1], kl->v[i]) == 0)
			free(kl->v[i]);
		else
			kl->v[n++] = kl->v[i];
	}
	kl->n = n;
	for (size_t i = 0; i < n && rv == 0; i += FETCH_BATCH)
		rv = grey_visit_batch(s, rc, o, kl->v + i, n - i < FETCH_BATCH ? n - i : FETCH_BATCH);
	return rv;
}

static store_status op_grey_foreach(store_backend_impl *s, rconn *rc, op *o)
{
	grey_lists gl = {.skip = strlen(s->cfg.redis_prefix ? s->cfg.redis_prefix : "") + 5};
	void *visit_ctx = o->ctx;
	store_status st;
	int rv = 0;

	o->ctx = &gl;
	o->pattern = s->grey_pattern;
	st = scan_all(s, rc, o, grey_collect);
	o->ctx = visit_ctx;
	o->kind = STORE_GREY_TRIPLET;
	if (st == STORE_OK)
		rv = grey_visit_kind(s, rc, o, &gl.kind[STORE_GREY_TRIPLET]);
	o->kind = STORE_GREY_AWL;
	if (st == STORE_OK && rv == 0)
		rv = grey_visit_kind(s, rc, o, &gl.kind[STORE_GREY_AWL]);
	for (int k = 0; k < 2; k++) {
		for (size_t i = 0; i < gl.kind[k].n; i++)
			free(gl.kind[k].v[i]);
		free(gl.kind[k].v);
	}
	return st == STORE_OK && rv < 0 ? STORE_ERROR : st;
}

static store_status redis_greylist(store_backend_impl *s, query *q)
{
	op o = {.what = "greylist", .fn = op_greylist, .q = q};

	return run(s, &o);
}

static store_status redis_grey_time(store_backend_impl *s, int64_t *now_ms)
{
	op o = {.what = "time", .fn = op_grey_time};
	store_status st = run(s, &o);

	*now_ms = o.now;
	return st;
}

static store_status redis_grey_get(store_backend_impl *s, store_grey_kind kind, const char *key,
                                   store_grey_record *out)
{
	op o = {
	    .what = "greylist get", .fn = op_grey_get, .keys = &key, .nkeys = 1, .kind = kind, .grey = out};

	return run(s, &o);
}

/* DEL of a bucket: o->keys[0] is its namespace, o->keys[1] its key. */
static store_status op_counter_delete(store_backend_impl *s, rconn *rc, op *o)
{
	char buf[KEYBUF + QUERY_NS_MAX];
	const char *argv[2] = {"DEL", buf};
	redisReply *r;
	store_status st;

	ns_key(s, buf, sizeof(buf), "ctr", o->keys[0], o->keys[1]);
	if (command(s, rc->ctx, &r, "counter delete", 2, argv) != STORE_OK)
		return STORE_ERROR;
	if (r->type != REDIS_REPLY_INTEGER)
		st = reply_error(s, rc, r, "counter delete");
	else
		st = r->integer > 0 ? STORE_OK : STORE_NOTFOUND;
	freeReplyObject(r);
	return st;
}

static store_status redis_counter_delete(store_backend_impl *s, const char *ns, const char *key)
{
	const char *keys[2] = {ns, key};
	op o = {.what = "counter delete", .fn = op_counter_delete, .keys = keys, .nkeys = 2};

	return run(s, &o);
}

static store_status redis_grey_remove(store_backend_impl *s, store_grey_kind kind, const char *key)
{
	op o = {.what = "greylist remove", .fn = op_grey_remove, .keys = &key, .nkeys = 1, .kind = kind};

	return run(s, &o);
}

static store_status redis_grey_awl_put(store_backend_impl *s, const store_grey_record *r)
{
	op o = {.what = "greylist whitelist", .fn = op_grey_awl_put, .grey = (store_grey_record *)r};

	return run(s, &o);
}

static store_status redis_grey_foreach(store_backend_impl *s, int64_t now_ms, store_grey_visit_fn fn,
                                       void *ctx)
{
	store_grey_record *r = malloc(sizeof(*r));
	op o = {.what = "greylist list", .fn = op_grey_foreach, .now = now_ms, .grey_visit = fn, .ctx = ctx};
	store_status st;

	if (!r)
		return store_set_error("%s: greylist list: out of memory", s->where);
	o.grey = r;
	st = run(s, &o);
	free(r);
	return st;
}

static uint64_t redis_filter_answers(store_backend_impl *s)
{
	return s->view ? redis_view_answers(s->view) : 0;
}

/* --- open and free ------------------------------------------------------- */

static void redis_free(store_backend_impl *s)
{
	if (!s)
		return;
	view_stop(s);
	if (s->hot && sqlite_hot_owes(s->hot)) {
		/* What the copies owe, before the connections go. */
		op o = {.what = "write behind", .fn = op_hot_flush};

		if (run(s, &o) != STORE_OK)
			log_warning("%s", store_last_error());
	}
	sqlite_hot_free(s->hot);
	redis_view_free(s->view);
	for (int i = 0; i < POOL_SIZE; i++)
		drop(&s->conns[i]);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->freed);
	pthread_mutex_destroy(&s->view_io);
	store_config_clear(&s->cfg);
	free(s->sentinels);
	free(s->prefix);
	free(s->netlens);
	free(s->pattern);
	free(s->grey_pattern);
	free(s->version);
	free(s->channel);
	free(s);
}

/* The prefix with glob characters escaped, then "*": SCAN MATCH must not read the prefix as a pattern. */
static char *match_pattern(const char *prefix)
{
	size_t len = strlen(prefix);
	char *p = malloc(2 * len + 2), *q = p;

	if (!p)
		return NULL;
	for (const char *c = prefix; *c; c++) {
		if (strchr("*?[]\\", *c))
			*q++ = '\\';
		*q++ = *c;
	}
	*q++ = '*';
	*q = '\0';
	return p;
}

/* store.redis.sentinels into s->sentinels. */
static int sentinel_settings(store_backend_impl *s, const store_config *cfg, char *err, size_t errlen)
{
	if (!cfg->redis_sentinel_master || !cfg->redis_sentinel_master[0]) {
		snprintf(err, errlen, "redis: store.redis.sentinel_master must name the master");
		return -1;
	}
	if (!(s->sentinels = calloc(cfg->redis_nsentinels, sizeof(*s->sentinels)))) {
		snprintf(err, errlen, "redis: out of memory");
		return -1;
	}
	for (size_t i = 0; i < cfg->redis_nsentinels; i++) {
		sentinel *sn = &s->sentinels[i];

		if (!store_redis_addr_split(cfg->redis_sentinels[i], sn->host, sizeof(sn->host), &sn->port)) {
			snprintf(err, errlen, "redis: store.redis.sentinels: %.200s is not HOST:PORT",
			         cfg->redis_sentinels[i]);
			return -1;
		}
		snprintf(sn->addr, sizeof(sn->addr), "%s", cfg->redis_sentinels[i]);
	}
	s->nsentinels = cfg->redis_nsentinels;
	snprintf(s->where, sizeof(s->where), "redis master %.200s", cfg->redis_sentinel_master);
	return 0;
}

/* Where to connect to: the Sentinels, a unix socket, or host and port; sets s->where. */
static int address_settings(store_backend_impl *s, const store_config *cfg, char *err, size_t errlen)
{
	if (cfg->redis_nsentinels > 0)
		return sentinel_settings(s, cfg, err, errlen);
	if (cfg->redis_socket && cfg->redis_socket[0]) {
		snprintf(s->where, sizeof(s->where), "redis unix:%.200s", cfg->redis_socket);
		return 0;
	}
	if (!cfg->redis_host || !cfg->redis_host[0] || cfg->redis_port <= 0 || cfg->redis_port > 65535) {
		snprintf(err, errlen,
		         "redis: store.redis needs a host and a port (1-65535), a socket or sentinels");
		return -1;
	}
	snprintf(s->where, sizeof(s->where),
	         strchr(cfg->redis_host, ':') ? "redis [%.200s]:%d" : "redis %.200s:%d", cfg->redis_host,
	         cfg->redis_port);
	return 0;
}

static int settings(store_backend_impl *s, const store_config *cfg, char *err, size_t errlen)
{
	const char *prefix = cfg->redis_prefix ? cfg->redis_prefix : "";
	int cto = cfg->redis_connect_timeout_ms > 0 ? cfg->redis_connect_timeout_ms : DEFAULT_TIMEOUT_MS;

	if (address_settings(s, cfg, err, errlen) < 0)
		return -1;
	/* Keys are built in fixed buffers of KEYBUF bytes. */
	if (strlen(prefix) > PREFIX_MAX) {
		snprintf(err, errlen, "redis: store.redis.prefix is longer than %d bytes", PREFIX_MAX);
		return -1;
	}
	if (store_config_copy(&s->cfg, cfg) < 0)
		goto oom;
	s->command_timeout_ms =
	    cfg->redis_command_timeout_ms > 0 ? cfg->redis_command_timeout_ms : DEFAULT_TIMEOUT_MS;
	s->connect_tv = ms_to_tv(cto);
	s->command_tv = ms_to_tv(s->command_timeout_ms);
	s->prefixlen = strlen(prefix) + 3;
	if (!(s->prefix = malloc(s->prefixlen + 1)))
		goto oom;
	snprintf(s->prefix, s->prefixlen + 1, "%sbl:", prefix);
	if (!(s->netlens = malloc(strlen(prefix) + sizeof("netlens"))))
		goto oom;
	snprintf(s->netlens, strlen(prefix) + sizeof("netlens"), "%snetlens", prefix);
	if (!(s->pattern = match_pattern(s->prefix)))
		goto oom;
	{
		char grey[PREFIX_MAX + 8];

		snprintf(grey, sizeof(grey), "%sgrey:", prefix);
		if (!(s->grey_pattern = match_pattern(grey)))
			goto oom;
	}
	if (!(s->version = malloc(strlen(prefix) + sizeof("version"))))
		goto oom;
	snprintf(s->version, strlen(prefix) + sizeof("version"), "%sversion", prefix);
	if (!(s->channel = malloc(strlen(prefix) + sizeof(STORE_WATCH_CHANNEL))))
		goto oom;
	snprintf(s->channel, strlen(prefix) + sizeof(STORE_WATCH_CHANNEL), "%s" STORE_WATCH_CHANNEL, prefix);
	return 0;
oom:
	snprintf(err, errlen, "redis: out of memory");
	return -1;
}

static bool sigpipe_ignored(void)
{
	struct sigaction sa;

	return sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_IGN;
}

/*
 * A server that cannot be reached now is not an error here: the daemon
 * must start and apply store.on_error until Redis is back. A server that
 * refuses AUTH or SELECT is: that is a setting to fix.
 */
static store_backend_impl *redis_open(const store_config *cfg, char *err, size_t errlen)
{
	store_backend_impl *s = calloc(1, sizeof(*s));
	rconn *rc;
	pipe_guard guard;
	int result;

	if (!s) {
		snprintf(err, errlen, "redis: out of memory");
		return NULL;
	}
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->freed, NULL);
	pthread_mutex_init(&s->view_io, NULL);
	s->backoff_ms = BACKOFF_MIN_MS;
	if (settings(s, cfg, err, errlen) < 0) {
		redis_free(s);
		return NULL;
	}
	s->guard_sigpipe = !sigpipe_ignored();
	s->upgrade_pending = true;
	atomic_init(&s->view_fd, -1);
	if (cfg->redis_local_view &&
	    !(s->view =
	          redis_view_new(cfg->redis_local_view_keys > 0 ? (size_t)cfg->redis_local_view_keys : 1))) {
		snprintf(err, errlen, "redis: out of memory");
		redis_free(s);
		return NULL;
	}
	rc = &s->conns[0];
	pipe_guard_begin(&guard, s->guard_sigpipe);
	result = conn_connect(s, rc, err, errlen);
	if (result == 0)
		upgrade(s, rc);
	pipe_guard_end(&guard);
	if (result > 0) {
		redis_free(s);
		return NULL;
	}
	if (result < 0)
		note_failure(s, err);
	if (errlen > 0)
		err[0] = '\0';
	return s;
}

/* --- the change channel (store_watch) ------------------------------------ */

struct store_watch {
	store_backend_impl *s; /* the settings only: it opens no pool connection */
	redisContext *c;       /* SUBSCRIBEd, or NULL */
	int64_t retry_at_ms;
	int backoff_ms;
};

store_watch *store_watch_open(const store_config *cfg, char *err, size_t errlen)
{
	store_watch *w;

	if (cfg->backend != STORE_BACKEND_REDIS) {
		snprintf(err, errlen, "store: only redis announces changes");
		return NULL;
	}
	if (!(w = calloc(1, sizeof(*w))) || !(w->s = calloc(1, sizeof(*w->s)))) {
		free(w);
		snprintf(err, errlen, "redis: out of memory");
		return NULL;
	}
	pthread_mutex_init(&w->s->lock, NULL);
	pthread_cond_init(&w->s->freed, NULL);
	pthread_mutex_init(&w->s->view_io, NULL);
	w->backoff_ms = BACKOFF_MIN_MS;
	if (settings(w->s, cfg, err, errlen) < 0) {
		store_watch_free(w);
		return NULL;
	}
	return w;
}

/* AUTH, then SUBSCRIBE: 0, or -1 with err (the connection dropped). */
static int watch_connect(store_watch *w, char *err, size_t errlen)
{
	const char *auth[2] = {"AUTH", w->s->cfg.redis_password}, *sub[2] = {"SUBSCRIBE", w->s->channel};
	rconn rc = {0};
	redisReply *r = NULL;
	bool ok;

	if (!(w->c = dial(w->s, &rc, err, errlen)))
		return -1;
	ok = !w->s->cfg.redis_password || !w->s->cfg.redis_password[0] ||
	     (command(w->s, w->c, &r, "AUTH", 2, auth) == STORE_OK && r->type != REDIS_REPLY_ERROR);
	freeReplyObject(r);
	r = NULL;
	ok = ok && command(w->s, w->c, &r, "SUBSCRIBE", 2, sub) == STORE_OK && r->type == REDIS_REPLY_ARRAY;
	freeReplyObject(r);
	if (!ok) {
		snprintf(err, errlen, "%s: SUBSCRIBE %s: %s", w->s->where, w->s->channel,
		         w->c->err ? w->c->errstr : "refused");
		redisFree(w->c);
		w->c = NULL;
		return -1;
	}
	return 0;
}

static bool is_message(const redisReply *r)
{
	return r->type == REDIS_REPLY_ARRAY && r->elements == 3 && reply_is_str(r->element[0]) &&
	       strcmp(r->element[0]->str, "message") == 0;
}

/*
 * What became readable within timeout_ms: -1 cancel_fd (it wins), 1 fd, 0
 * nothing. A negative fd is left out of the poll (poll ignores it).
 */
static int watch_poll(int fd, int cancel_fd, int timeout_ms)
{
	struct pollfd pfd[2] = {{.fd = cancel_fd, .events = POLLIN}, {.fd = fd, .events = POLLIN}};
	int n;

	do
		n = poll(pfd, 2, timeout_ms);
	while (n < 0 && errno == EINTR);
	if (n <= 0)
		return 0;
	if (pfd[0].revents != 0)
		return -1;
	return pfd[1].revents != 0;
}

/* What arrived within timeout_ms (see store_watch_wait). */
static int watch_read(store_watch *w, int timeout_ms, int cancel_fd, char *err, size_t errlen)
{
	int got = 0;

	if (watch_poll(w->c->fd, cancel_fd, timeout_ms) <= 0)
		return 0;
	if (redisBufferRead(w->c) == REDIS_OK) {
		for (;;) {
			void *r = NULL;

			if (redisGetReplyFromReader(w->c, &r) != REDIS_OK)
				break;
			if (!r)
				return got;
			got |= is_message(r);
			freeReplyObject(r);
		}
	}
	snprintf(err, errlen, "%s: the subscription to %s was lost: %s", w->s->where, w->s->channel,
	         w->c->err ? w->c->errstr : "unreadable reply");
	redisFree(w->c);
	w->c = NULL;
	w->retry_at_ms = now_ms() + w->backoff_ms;
	return -1;
}

int store_watch_wait(store_watch *w, int timeout_ms, int cancel_fd, char *err, size_t errlen)
{
	int64_t now = now_ms();

	if (w->c)
		return watch_read(w, timeout_ms, cancel_fd, err, errlen);
	if (now < w->retry_at_ms) {
		watch_poll(-1, cancel_fd,
		           w->retry_at_ms - now < timeout_ms ? (int)(w->retry_at_ms - now) : timeout_ms);
		return 0;
	}
	if (watch_poll(-1, cancel_fd, 0) < 0)
		return 0; /* no new connection for a caller that is stopping */
	if (watch_connect(w, err, errlen) < 0) {
		w->retry_at_ms = now_ms() + w->backoff_ms;
		w->backoff_ms = w->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : w->backoff_ms * 2;
		return -1;
	}
	w->backoff_ms = BACKOFF_MIN_MS;
	return 1;
}

void store_watch_free(store_watch *w)
{
	if (!w)
		return;
	if (w->c)
		redisFree(w->c);
	redis_free(w->s);
	free(w);
}

const store_ops store_redis_ops = {
    .name = "redis",
    .open = redis_open,
    .free = redis_free,
    .lookup = redis_lookup,
    .record = redis_record,
    .get = redis_get,
    .put = redis_put,
    .remove = redis_remove,
    .purge = redis_purge,
    .foreach = redis_foreach,
    .count_types = redis_count_types,
    .distinct_add = redis_distinct_add,
    .distinct_peek = redis_distinct_peek,
    .distinct_list = redis_distinct_list,
    .distinct_clear = redis_distinct_clear,
    .kv = redis_kv,
    .counter = redis_counter,
    .counter_delete = redis_counter_delete,
    .batch = redis_batch,
    .write_behind = redis_write_behind,
    .decision = redis_decision,
    .sync = redis_sync,
    .script_trips = redis_script_trips,
    .hot_skew = redis_hot_skew,
    .greylist = redis_greylist,
    .grey_get = redis_grey_get,
    .grey_remove = redis_grey_remove,
    .grey_awl_put = redis_grey_awl_put,
    .grey_foreach = redis_grey_foreach,
    .grey_time = redis_grey_time,
    .filter_answers = redis_filter_answers,
    .netlens = redis_netlens,
    .lookup_built = redis_lookup_built,
};
