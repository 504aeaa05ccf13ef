/*
 * Tests of the C ABI of quotagate through include/quotagate.h only.
 *
 * Every limiter function of the header is called here, with good and bad input. The
 * harness (tests/c/harness.h) counts checks and ends with one line "N passed, N failed";
 * run with test names as arguments to run only those tests.
 *
 * Timing checks use CLOCK_MONOTONIC (the clock the library's monotonic clock reads) and
 * only assert what the limiter's rules guarantee (a lower bound from the windows) plus
 * generous upper bounds, so that they hold under valgrind too.
 */
#define _POSIX_C_SOURCE 200809L

#include "harness.h"

/* ---------------------------------------------------------------- helpers ---- */

/* Something to point a sentinel out-pointer at: out-parameters are written only on success. */
static char g_sentinel_object;
#define SENTINEL ((void *)&g_sentinel_object)

/* A limiter with `n` rates; margin and max_buckets are set when not 0. NULL on failure. */
static qg_limiter *make_limiter(size_t n, const uint32_t *calls, const uint64_t *windows,
                                      uint64_t margin_ms, size_t max_buckets)
{
    qg_limiter_builder *b = NULL;
    qg_limiter *l = NULL;
    CHECK_OK(qg_limiter_builder_new(&b));
    if (b == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        CHECK_OK(qg_limiter_builder_add_rate(b, calls[i], windows[i]));
    }
    if (margin_ms != 0) {
        CHECK_OK(qg_limiter_builder_set_margin(b, margin_ms));
    }
    if (max_buckets != 0) {
        CHECK_OK(qg_limiter_builder_set_max_buckets(b, max_buckets));
    }
    CHECK_OK(qg_limiter_builder_build(b, &l));
    qg_limiter_builder_free(b);
    return l;
}

static qg_limiter *make_simple(uint32_t calls, uint64_t window_ms)
{
    return make_limiter(1, &calls, &window_ms, 0, 0);
}

/* One statistics field of `key`'s bucket; UINT64_MAX when it cannot be read. */
static uint64_t stat_of(qg_limiter *l, const char *key, uint32_t field)
{
    qg_bucket_stats *s = NULL;
    uint64_t v = UINT64_MAX;
    CHECK_OK(qg_limiter_stats(l, key, &s));
    if (s != NULL) {
        CHECK_OK(qg_bucket_stats_get(s, field, &v));
    }
    qg_bucket_stats_free(s);
    return v;
}

/* Window `index` of `key`'s bucket; returns 0 on success. */
static int window_of(qg_limiter *l, const char *key, size_t index, uint64_t *used,
                     uint64_t *calls, uint64_t *window_ms)
{
    qg_bucket_stats *s = NULL;
    qg_result rc = qg_limiter_stats(l, key, &s);
    if (rc == QG_OK) {
        rc = qg_bucket_stats_window(s, index, used, calls, window_ms);
    }
    qg_bucket_stats_free(s);
    return rc == QG_OK ? 0 : -1;
}

/* Waits (bounded) until `n` calls are queued in `key`'s bucket; polls without counting checks. */
static int wait_until_queued(qg_limiter *l, const char *key, uint64_t n)
{
    double start = now_ms();
    while (now_ms() - start < 3000) {
        qg_bucket_stats *s = NULL;
        uint64_t queued = UINT64_MAX;
        if (qg_limiter_stats(l, key, &s) == QG_OK) {
            (void)qg_bucket_stats_get(s, QG_STAT_QUEUED, &queued);
        }
        qg_bucket_stats_free(s);
        if (queued == n) {
            return 1;
        }
        sleep_ms(1);
    }
    return 0;
}

/* A thread that blocks in qg_limiter_acquire or qg_ticket_wait and records the outcome. */
struct blocked_call {
    qg_limiter *limiter;
    const char *key;
    const qg_ticket *ticket; /* when set, waits on the ticket instead of acquiring */
    int64_t timeout_ms;
    qg_result rc;
    double returned_at;
    char error[256];
};

static void *blocked_call_main(void *arg)
{
    struct blocked_call *c = arg;
    if (c->ticket != NULL) {
        c->rc = qg_ticket_wait(c->ticket, c->timeout_ms);
    } else {
        c->rc = qg_limiter_acquire(c->limiter, c->key, 1, c->timeout_ms);
    }
    c->returned_at = now_ms();
    last_error_text(c->error, sizeof c->error);
    return NULL;
}

/* ------------------------------------------------------------------ tests ---- */

static void test_version(void)
{
    _Static_assert(QG_VERSION_NUMBER ==
                       QG_VERSION_MAJOR * 1000000 + QG_VERSION_MINOR * 1000 + QG_VERSION_PATCH,
                   "QG_VERSION_NUMBER follows its formula");
    const char *v = qg_version();
    CHECK(v != NULL);
    CHECK_MSG(v != NULL && strcmp(v, QG_VERSION_STRING) == 0, "qg_version() = \"%s\", header says \"%s\"",
              v ? v : "(null)", QG_VERSION_STRING);
    CHECK_U64(qg_version_number(), ==, QG_VERSION_NUMBER);
    unsigned major = 0, minor = 0, patch = 0;
    CHECK(v != NULL && sscanf(v, "%u.%u.%u", &major, &minor, &patch) == 3);
    CHECK_U64(major, ==, QG_VERSION_MAJOR);
    CHECK_U64(minor, ==, QG_VERSION_MINOR);
    CHECK_U64(patch, ==, QG_VERSION_PATCH);
    CHECK(qg_version() == v); /* static: the same string every time */

    /* The library decides compatibility: its own header, yes; a newer header (it may
       declare more) or another series, no, with a message naming both versions. */
    CHECK_OK(qg_version_compatible(QG_VERSION_NUMBER));
    CHECK_RC(qg_version_compatible(QG_VERSION_NUMBER + 1), QG_ERR_VERSION_MISMATCH);
    CHECK_RC(qg_version_compatible(QG_VERSION_NUMBER + 1000000), QG_ERR_VERSION_MISMATCH);
    char err[256];
    size_t written = 0;
    CHECK_OK(qg_last_error_message(err, sizeof err, &written));
    CHECK_MSG(strstr(err, QG_VERSION_STRING) != NULL, "the message names the library: \"%s\"", err);
}

static void test_result_str(void)
{
    static const qg_result codes[] = {
        QG_OK,          QG_ERR_NULL_ARGUMENT, QG_ERR_INVALID_ARGUMENT, QG_ERR_BUFFER_TOO_SMALL,
        QG_ERR_PANIC,   QG_ERR_TIMEOUT,       QG_ERR_WOULD_BLOCK,      QG_ERR_CANCELLED,
        QG_ERR_CLOSED,  QG_ERR_TOO_MANY_BUCKETS, QG_PENDING,          QG_ERR_NOT_WAITING, QG_ERR_STORE,
        QG_ERR_NOT_FOUND, QG_DONE, QG_ERR_VERSION_MISMATCH, QG_ERR_HTTP_STATUS, QG_ERR_TRANSPORT, QG_ERR_THROTTLED,
        QG_ERR_AUTH,    QG_ERR_BODY_TOO_LARGE, QG_ERR_IO, QG_ERR_PAGING, QG_ERR_REENTRANT_CALL,
    };
    const size_t n = sizeof codes / sizeof codes[0];
    CHECK_U64(QG_OK, ==, 0);
    for (size_t i = 0; i < n; i++) {
        const char *s = qg_result_str(codes[i]);
        CHECK_MSG(s != NULL && s[0] != '\0', "code %" PRIu32 " has a description", codes[i]);
        CHECK_MSG(s != NULL && strcmp(s, "unknown result code") != 0, "code %" PRIu32 " is known: \"%s\"",
                  codes[i], s ? s : "(null)");
        for (size_t j = 0; j < i; j++) {
            const char *t = qg_result_str(codes[j]);
            CHECK_MSG(s != NULL && t != NULL && strcmp(s, t) != 0,
                      "codes %" PRIu32 " and %" PRIu32 " share \"%s\"", codes[i], codes[j],
                      s ? s : "(null)");
        }
    }
    CHECK(strcmp(qg_result_str(QG_OK), "success") == 0);
    static const qg_result unknown[] = {1, 99, 108, 199, 208, 299, 306, 401, 0xFFFFFFFFu};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        const char *s = qg_result_str(unknown[i]);
        CHECK_MSG(s != NULL && strcmp(s, "unknown result code") == 0, "qg_result_str(%" PRIu32 ") = \"%s\"",
                  unknown[i], s ? s : "(null)");
    }
}

/* Runs first, on the main thread: no failure has happened yet. */
static void test_last_error_message(void)
{
    char buf[256];
    size_t written = 12345;

    /* No failure yet: the text is empty. */
    memset(buf, 'x', sizeof buf);
    CHECK_OK(qg_last_error_message(buf, sizeof buf, &written));
    CHECK_U64(written, ==, 0);
    CHECK(buf[0] == '\0');
    written = 12345;
    CHECK_RC(qg_last_error_message(NULL, 0, &written), QG_ERR_BUFFER_TOO_SMALL);
    CHECK_U64(written, ==, 0);

    /* A failure leaves its text. */
    qg_limiter_builder *b = NULL;
    CHECK_OK(qg_limiter_builder_new(&b));
    CHECK_RC(qg_limiter_builder_add_rate(b, 0, 1000), QG_ERR_INVALID_ARGUMENT);
    CHECK_OK(qg_last_error_message(buf, sizeof buf, &written));
    CHECK_MSG(written > 0 && written == strlen(buf), "written %zu, text \"%s\"", written, buf);
    char text[256];
    memcpy(text, buf, sizeof text);
    const size_t n = written;

    /* Asking for the size. */
    written = 0;
    CHECK_RC(qg_last_error_message(NULL, 0, &written), QG_ERR_BUFFER_TOO_SMALL);
    CHECK_U64(written, ==, n);

    /* One byte short (no room for the NUL): refused, the needed length told, buf untouched. */
    memset(buf, 'x', sizeof buf);
    written = 0;
    CHECK_RC(qg_last_error_message(buf, n, &written), QG_ERR_BUFFER_TOO_SMALL);
    CHECK_U64(written, ==, n);
    CHECK(buf[0] == 'x');
    CHECK_RC(qg_last_error_message(buf, 1, &written), QG_ERR_BUFFER_TOO_SMALL);
    CHECK_U64(written, ==, n);

    /* Exactly large enough. */
    memset(buf, 'x', sizeof buf);
    written = 0;
    CHECK_OK(qg_last_error_message(buf, n + 1, &written));
    CHECK_U64(written, ==, n);
    CHECK(buf[n] == '\0' && strcmp(buf, text) == 0);
    CHECK(buf[n + 1] == 'x');

    /* NULL out-pointers. */
    CHECK_RC(qg_last_error_message(buf, sizeof buf, NULL), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_last_error_message(NULL, 0, NULL), QG_ERR_NULL_ARGUMENT);
    written = 777;
    CHECK_RC(qg_last_error_message(NULL, sizeof buf, &written), QG_ERR_NULL_ARGUMENT);
    CHECK_U64(written, ==, 777);

    /* Neither reading it, nor its own NULL failures, nor a later success change the text. */
    CHECK_OK(qg_limiter_builder_add_rate(b, 1, 1000));
    (void)qg_version();
    CHECK_OK(qg_last_error_message(buf, sizeof buf, &written));
    CHECK_MSG(strcmp(buf, text) == 0, "text changed from \"%s\" to \"%s\"", text, buf);

    /* The next failure replaces it. */
    CHECK_RC(qg_limiter_builder_add_rate(b, 1, 0), QG_ERR_INVALID_ARGUMENT);
    CHECK_OK(qg_last_error_message(buf, sizeof buf, &written));
    CHECK_MSG(strcmp(buf, text) != 0 && contains(buf, "window"), "text after a zero window: \"%s\"", buf);
    qg_limiter_builder_free(b);
}

struct thread_error {
    size_t written_before;
    size_t written_after;
    char text[256];
};

static void *thread_error_main(void *arg)
{
    struct thread_error *te = arg;
    char buf[256];
    te->written_before = 999;
    if (qg_last_error_message(buf, sizeof buf, &te->written_before) != QG_OK) {
        te->written_before = 999;
    }
    (void)qg_limiter_builder_new(NULL);
    if (qg_last_error_message(te->text, sizeof te->text, &te->written_after) != QG_OK) {
        te->written_after = 0;
    }
    return NULL;
}

static void test_last_error_is_per_thread(void)
{
    char mine[256], after[256];
    size_t w;
    CHECK_RC(qg_limiter_acquire(NULL, NULL, 1, 0), QG_ERR_NULL_ARGUMENT);
    CHECK_OK(qg_last_error_message(mine, sizeof mine, &w));

    struct thread_error te;
    memset(&te, 0, sizeof te);
    pthread_t th;
    CHECK(pthread_create(&th, NULL, thread_error_main, &te) == 0);
    CHECK(pthread_join(th, NULL) == 0);
    CHECK_MSG(te.written_before == 0, "a new thread starts with an empty text (length %zu)",
              te.written_before);
    CHECK_MSG(te.written_after > 0 && contains(te.text, "NULL"), "the thread's own failure: \"%s\"",
              te.text);

    CHECK_OK(qg_last_error_message(after, sizeof after, &w));
    CHECK_MSG(strcmp(mine, after) == 0, "another thread's failure changed ours: \"%s\" -> \"%s\"",
              mine, after);
}

static void test_builder(void)
{
    qg_limiter_builder *b = SENTINEL;
    CHECK_OK(qg_limiter_builder_new(&b));
    CHECK(b != NULL && b != SENTINEL);

    /* Without rates a build fails and leaves *out alone. */
    qg_limiter *l = SENTINEL;
    CHECK_RC(qg_limiter_builder_build(b, &l), QG_ERR_INVALID_ARGUMENT);
    CHECK(l == SENTINEL);

    /* Rates of zero calls or a zero window are refused and not added. */
    CHECK_RC(qg_limiter_builder_add_rate(b, 0, 1000), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_limiter_builder_add_rate(b, 5, 0), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_limiter_builder_add_rate(b, 0, 0), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_limiter_builder_build(b, &l), QG_ERR_INVALID_ARGUMENT);
    CHECK(l == SENTINEL);
    CHECK_RC(qg_limiter_builder_set_max_buckets(b, 0), QG_ERR_INVALID_ARGUMENT);

    /* Build twice from one builder: independent limiters, each with the rates of its time. */
    CHECK_OK(qg_limiter_builder_add_rate(b, 1, 1000));
    CHECK_OK(qg_limiter_builder_set_margin_ms(b, 0));
    CHECK_OK(qg_limiter_builder_set_margin(b, 0)); /* the deprecated name still works */
    CHECK_OK(qg_limiter_builder_set_max_buckets(b, 16));
    qg_limiter *l1 = NULL, *l2 = NULL;
    CHECK_OK(qg_limiter_builder_build(b, &l1));
    CHECK_OK(qg_limiter_builder_add_rate(b, 3, 5000));
    CHECK_OK(qg_limiter_builder_build(b, &l2));
    CHECK(l1 != NULL && l2 != NULL && l1 != l2);
    qg_limiter_builder_free(b);

    /* The limiters outlive their builder. */
    qg_bucket_stats *s1 = NULL, *s2 = NULL;
    size_t n1 = 0, n2 = 0;
    CHECK_OK(qg_limiter_stats(l1, "k", &s1));
    CHECK_OK(qg_limiter_stats(l2, "k", &s2));
    CHECK_OK(qg_bucket_stats_window_count(s1, &n1));
    CHECK_OK(qg_bucket_stats_window_count(s2, &n2));
    CHECK_U64(n1, ==, 1);
    CHECK_U64(n2, ==, 2);
    qg_bucket_stats_free(s1);
    qg_bucket_stats_free(s2);

    CHECK_OK(qg_limiter_try_acquire(l1, "k", 1, NULL));
    CHECK_RC(qg_limiter_try_acquire(l1, "k", 1, NULL), QG_ERR_WOULD_BLOCK);
    CHECK_OK(qg_limiter_try_acquire(l2, "k", 1, NULL)); /* l2's buckets are its own */
    CHECK_U64(stat_of(l1, "k", QG_STAT_ADMITTED_CALLS), ==, 1);
    CHECK_U64(stat_of(l2, "k", QG_STAT_ADMITTED_CALLS), ==, 1);
    qg_limiter_free(l1);
    qg_limiter_free(l2);

    /* The margin widens every window. */
    const uint32_t calls[] = {1, 10};
    const uint64_t windows[] = {100, 1000};
    l = make_limiter(2, calls, windows, 25, 0);
    uint64_t used = 9, c = 9, w = 9;
    CHECK(window_of(l, "m", 0, &used, &c, &w) == 0);
    CHECK_U64(used, ==, 0);
    CHECK_U64(c, ==, 1);
    CHECK_U64(w, ==, 125);
    CHECK(window_of(l, "m", 1, &used, &c, &w) == 0);
    CHECK_U64(c, ==, 10);
    CHECK_U64(w, ==, 1025);
    double t0 = now_ms();
    uint64_t wait = 0;
    CHECK_OK(qg_limiter_try_acquire(l, "m", 1, &wait));
    CHECK_RC(qg_limiter_try_acquire(l, "m", 1, &wait), QG_ERR_WOULD_BLOCK);
    CHECK_U64(wait, <=, 125);
    CHECK_DBL((double)wait + (now_ms() - t0) + 1, >=, 125);
    qg_limiter_free(l);
}

static void test_null_arguments(void)
{
    qg_limiter *l = make_simple(5, 1000);
    qg_limiter_builder *b = NULL;
    qg_ticket *t = NULL;
    qg_bucket_stats *s = NULL;
    uint64_t u64 = 42, used = 1, calls = 2, window = 3;
    size_t count = 42;
    const uint32_t rc_calls[] = {1};
    const uint64_t rc_windows[] = {100};

    CHECK_RC(qg_limiter_builder_new(NULL), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_limiter_builder_add_rate(NULL, 1, 100), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_limiter_builder_set_margin(NULL, 10), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_limiter_builder_set_max_buckets(NULL, 10), QG_ERR_NULL_ARGUMENT);
    qg_limiter *out = SENTINEL;
    CHECK_RC(qg_limiter_builder_build(NULL, &out), QG_ERR_NULL_ARGUMENT);
    CHECK(out == SENTINEL);
    CHECK_OK(qg_limiter_builder_new(&b));
    CHECK_OK(qg_limiter_builder_add_rate(b, 1, 100));
    CHECK_RC(qg_limiter_builder_build(b, NULL), QG_ERR_NULL_ARGUMENT);
    qg_limiter_builder_free(b);

    CHECK_RC(qg_limiter_acquire(NULL, "k", 1, 0), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_limiter_acquire(NULL, "k", 1, -1), QG_ERR_NULL_ARGUMENT);
    {
        char err[256];
        last_error_text(err, sizeof err);
        CHECK_MSG(contains(err, "NULL"), "text after a NULL handle: \"%s\"", err);
    }
    CHECK_RC(qg_limiter_try_acquire(NULL, "k", 1, &u64), QG_ERR_NULL_ARGUMENT);
    CHECK_U64(u64, ==, 42);
    CHECK_RC(qg_limiter_try_acquire(NULL, "k", 1, NULL), QG_ERR_NULL_ARGUMENT);
    t = SENTINEL;
    CHECK_RC(qg_limiter_enqueue(NULL, "k", 1, -1, &t), QG_ERR_NULL_ARGUMENT);
    CHECK(t == SENTINEL);
    CHECK_RC(qg_limiter_enqueue(l, "k", 1, -1, NULL), QG_ERR_NULL_ARGUMENT);
    CHECK_U64(stat_of(l, "k", QG_STAT_QUEUED), ==, 0);
    CHECK_U64(stat_of(l, "k", QG_STAT_ADMITTED_CALLS), ==, 0); /* nothing was admitted for it */
    CHECK_RC(qg_ticket_wait(NULL, 0), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_ticket_wait(NULL, -1), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_ticket_cancel(NULL), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_limiter_pause(NULL, "k", 10), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_limiter_set_rates(NULL, "k", rc_calls, rc_windows, 1), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_limiter_set_rates(l, "k", NULL, rc_windows, 1), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_limiter_set_rates(l, "k", rc_calls, NULL, 1), QG_ERR_NULL_ARGUMENT);
    s = SENTINEL;
    CHECK_RC(qg_limiter_stats(NULL, "k", &s), QG_ERR_NULL_ARGUMENT);
    CHECK(s == SENTINEL);
    CHECK_RC(qg_limiter_stats(l, "k", NULL), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_limiter_close(NULL), QG_ERR_NULL_ARGUMENT);

    CHECK_OK(qg_limiter_stats(l, "k", &s));
    CHECK_RC(qg_bucket_stats_get(NULL, QG_STAT_ADMITTED_CALLS, &u64), QG_ERR_NULL_ARGUMENT);
    CHECK_U64(u64, ==, 42);
    CHECK_RC(qg_bucket_stats_get(s, QG_STAT_ADMITTED_CALLS, NULL), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_bucket_stats_window_count(NULL, &count), QG_ERR_NULL_ARGUMENT);
    CHECK_U64(count, ==, 42);
    CHECK_RC(qg_bucket_stats_window_count(s, NULL), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_bucket_stats_window(NULL, 0, &used, &calls, &window), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_bucket_stats_window(s, 0, NULL, &calls, &window), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_bucket_stats_window(s, 0, &used, NULL, &window), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_bucket_stats_window(s, 0, &used, &calls, NULL), QG_ERR_NULL_ARGUMENT);
    CHECK(used == 1 && calls == 2 && window == 3); /* nothing written on failure */
    qg_bucket_stats_free(s);

    /* Freeing NULL does nothing. */
    qg_limiter_builder_free(NULL);
    qg_limiter_free(NULL);
    qg_ticket_free(NULL);
    qg_bucket_stats_free(NULL);
    CHECK(1);

    /* The limiter still works after all that. */
    CHECK_OK(qg_limiter_try_acquire(l, "k", 1, NULL));
    qg_limiter_free(l);
}

static void test_bad_values(void)
{
    const uint32_t calls[] = {5, 3};
    const uint64_t windows[] = {100, 1000};
    qg_limiter *l = make_limiter(2, calls, windows, 0, 0);
    static const char *const bad_keys[] = {"\xff", "ok\xfe", "\xc0\xaf", "\xed\xa0\x80"};
    qg_ticket *t = SENTINEL;
    qg_bucket_stats *s = SENTINEL;
    uint64_t wait = 42;
    const uint32_t one[] = {1};
    const uint64_t hundred[] = {100};

    for (size_t i = 0; i < sizeof bad_keys / sizeof bad_keys[0]; i++) {
        const char *k = bad_keys[i];
        CHECK_RC(qg_limiter_acquire(l, k, 1, 0), QG_ERR_INVALID_ARGUMENT);
        {
            char err[256];
            last_error_text(err, sizeof err);
            CHECK_MSG(contains(err, "UTF-8"), "text after a bad key: \"%s\"", err);
        }
        CHECK_RC(qg_limiter_try_acquire(l, k, 1, &wait), QG_ERR_INVALID_ARGUMENT);
        CHECK_RC(qg_limiter_enqueue(l, k, 1, -1, &t), QG_ERR_INVALID_ARGUMENT);
        CHECK_RC(qg_limiter_pause(l, k, 10), QG_ERR_INVALID_ARGUMENT);
        CHECK_RC(qg_limiter_set_rates(l, k, one, hundred, 1), QG_ERR_INVALID_ARGUMENT);
        CHECK_RC(qg_limiter_stats(l, k, &s), QG_ERR_INVALID_ARGUMENT);
    }
    CHECK(t == SENTINEL && s == SENTINEL && wait == 42);

    /* A valid multi-byte key is a key like any other. */
    CHECK_OK(qg_limiter_try_acquire(l, "g\xc3\xa9o-\xd0\xba\xd0\xbb\xd1\x8e\xd1\x87", 1, NULL));
    CHECK_U64(stat_of(l, "g\xc3\xa9o-\xd0\xba\xd0\xbb\xd1\x8e\xd1\x87", QG_STAT_ADMITTED_CALLS), ==, 1);

    /* Zero cost, and a cost above the smallest rate (3), can never be admitted. */
    CHECK_RC(qg_limiter_acquire(l, "c", 0, 0), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_limiter_acquire(l, "c", 0, -1), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_limiter_try_acquire(l, "c", 0, &wait), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_limiter_enqueue(l, "c", 0, -1, &t), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_limiter_acquire(l, "c", 4, -1), QG_ERR_INVALID_ARGUMENT);
    {
        char err[256];
        last_error_text(err, sizeof err);
        CHECK_MSG(contains(err, "4") && contains(err, "3"), "text after cost 4 > 3: \"%s\"", err);
    }
    CHECK_RC(qg_limiter_try_acquire(l, "c", 4, &wait), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_limiter_enqueue(l, "c", 4, 1000, &t), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_limiter_try_acquire(l, "c", UINT32_MAX, &wait), QG_ERR_INVALID_ARGUMENT);
    CHECK(t == SENTINEL && wait == 42);
    CHECK_U64(stat_of(l, "c", QG_STAT_ADMITTED_CALLS), ==, 0);
    CHECK_U64(stat_of(l, "c", QG_STAT_REFUSALS), ==, 0); /* invalid calls are not refusals */

    /* The largest valid cost is admitted at once. */
    CHECK_OK(qg_limiter_try_acquire(l, "c", 3, &wait));
    CHECK_U64(wait, ==, 0);
    CHECK_U64(stat_of(l, "c", QG_STAT_ADMITTED_UNITS), ==, 3);
    qg_limiter_free(l);
}

static void test_null_key_is_the_default_bucket(void)
{
    qg_limiter *l = make_simple(1, 1000);
    CHECK_OK(qg_limiter_acquire(l, NULL, 1, 0));
    CHECK_RC(qg_limiter_try_acquire(l, NULL, 1, NULL), QG_ERR_WOULD_BLOCK);
    CHECK_U64(stat_of(l, NULL, QG_STAT_ADMITTED_CALLS), ==, 1);
    CHECK_U64(stat_of(l, NULL, QG_STAT_REFUSALS), ==, 1);
    /* A named key is another bucket. */
    CHECK_OK(qg_limiter_try_acquire(l, "named", 1, NULL));
    CHECK_U64(stat_of(l, "named", QG_STAT_ADMITTED_CALLS), ==, 1);
    /* Every function that takes a key accepts NULL. */
    qg_ticket *t = NULL;
    CHECK_OK(qg_limiter_enqueue(l, NULL, 1, 0, &t));
    CHECK_RC(qg_ticket_wait(t, 0), QG_ERR_TIMEOUT); /* its deadline (now) cannot be met */
    qg_ticket_free(t);
    CHECK_OK(qg_limiter_pause(l, NULL, 5));
    CHECK_U64(stat_of(l, NULL, QG_STAT_PAUSES), ==, 1);
    const uint32_t calls[] = {7};
    const uint64_t windows[] = {700};
    CHECK_OK(qg_limiter_set_rates(l, NULL, calls, windows, 1));
    uint64_t used = 0, c = 0, w = 0;
    CHECK(window_of(l, NULL, 0, &used, &c, &w) == 0);
    CHECK_U64(c, ==, 7);
    CHECK_U64(w, ==, 700);
    CHECK_U64(used, ==, 1);
    CHECK(window_of(l, "named", 0, &used, &c, &w) == 0);
    CHECK_U64(c, ==, 1); /* the other bucket keeps the default rate */
    qg_limiter_free(l);
}

static void test_try_acquire(void)
{
    qg_limiter *l = make_simple(2, 200);
    uint64_t wait = 12345;
    double t0 = now_ms();
    CHECK_OK(qg_limiter_try_acquire(l, "k", 1, &wait));
    CHECK_U64(wait, ==, 0); /* written on QG_OK too */
    CHECK_OK(qg_limiter_try_acquire(l, "k", 1, NULL));
    wait = 12345;
    CHECK_RC(qg_limiter_try_acquire(l, "k", 1, &wait), QG_ERR_WOULD_BLOCK);
    double e = now_ms() - t0;
    CHECK_U64(wait, <=, 200);
    CHECK_DBL((double)wait + e + 1, >=, 200);
    {
        char err[256];
        last_error_text(err, sizeof err);
        CHECK_MSG(contains(err, "ms"), "text after a refusal: \"%s\"", err);
    }
    CHECK_RC(qg_limiter_try_acquire(l, "k", 1, NULL), QG_ERR_WOULD_BLOCK);
    CHECK_RC(qg_limiter_try_acquire(l, "k", 2, &wait), QG_ERR_WOULD_BLOCK);
    CHECK_U64(stat_of(l, "k", QG_STAT_REFUSALS), ==, 3);
    CHECK_U64(stat_of(l, "k", QG_STAT_ADMITTED_CALLS), ==, 2);

    /* The wait is rounded up: sleeping that long is enough. */
    CHECK_RC(qg_limiter_try_acquire(l, "k", 1, &wait), QG_ERR_WOULD_BLOCK);
    sleep_ms((double)wait);
    CHECK_OK(qg_limiter_try_acquire(l, "k", 1, &wait));

    /* Behind a queue the wait counts the queued calls (a lower bound). */
    qg_limiter *q = make_simple(1, 100);
    qg_ticket *t = NULL;
    t0 = now_ms();
    CHECK_OK(qg_limiter_try_acquire(q, "k", 1, NULL));
    CHECK_OK(qg_limiter_enqueue(q, "k", 1, -1, &t));
    CHECK_RC(qg_limiter_try_acquire(q, "k", 1, &wait), QG_ERR_WOULD_BLOCK);
    e = now_ms() - t0;
    CHECK_U64(wait, <=, 200);
    CHECK_DBL((double)wait + e + 1, >=, 200);
    qg_ticket_free(t);
    qg_limiter_free(q);
    qg_limiter_free(l);
}

static void test_acquire(void)
{
    qg_limiter *l = make_simple(1, 150);
    double t0 = now_ms();
    CHECK_OK(qg_limiter_acquire(l, "k", 1, -1)); /* free: no wait */
    CHECK_DBL(now_ms() - t0, <, 100);

    /* Blocks until the window admits, within the deadline. */
    CHECK_OK(qg_limiter_acquire(l, "k", 1, 2000));
    double e = now_ms() - t0;
    CHECK_DBL(e, >=, 149);
    CHECK_DBL(e, <, 600);

    /* A deadline that cannot be met fails at once, not at the deadline. */
    double t1 = now_ms();
    CHECK_RC(qg_limiter_acquire(l, "k", 1, 100), QG_ERR_TIMEOUT);
    CHECK_DBL(now_ms() - t1, <, 60);
    CHECK_RC(qg_limiter_acquire(l, "k", 1, 0), QG_ERR_TIMEOUT);
    {
        char err[256];
        last_error_text(err, sizeof err);
        CHECK_MSG(contains(err, "deadline") && contains(err, "frees a slot in"),
                  "text after a timeout: \"%s\"", err);
    }
    CHECK_U64(stat_of(l, "k", QG_STAT_TIMEOUTS), ==, 2);

    /* No deadline: waits as long as it takes. */
    CHECK_OK(qg_limiter_acquire(l, "k", 1, -1));
    e = now_ms() - t0;
    CHECK_DBL(e, >=, 299);
    CHECK_U64(stat_of(l, "k", QG_STAT_ADMITTED_CALLS), ==, 3);
    CHECK_U64(stat_of(l, "k", QG_STAT_WAITED_CALLS), ==, 2);

    /* Behind a queued call a deadline fails when it passes (at the latest). */
    qg_ticket *head = NULL;
    CHECK_OK(qg_limiter_enqueue(l, "k", 1, -1, &head));
    t1 = now_ms();
    CHECK_RC(qg_limiter_acquire(l, "k", 1, 50), QG_ERR_TIMEOUT);
    CHECK_DBL(now_ms() - t1, <, 140);
    CHECK_RC(qg_ticket_wait(head, 0), QG_PENDING); /* the head kept its place */
    qg_ticket_free(head);
    qg_limiter_free(l);
}

static void test_enqueue_and_wait_in_slices(void)
{
    qg_limiter *l = make_simple(1, 200);
    qg_ticket *t = SENTINEL;

    /* A free bucket admits the ticket at once. */
    CHECK_OK(qg_limiter_enqueue(l, "k", 1, -1, &t));
    CHECK(t != NULL && t != SENTINEL);
    CHECK_OK(qg_ticket_wait(t, 0));
    CHECK_OK(qg_ticket_wait(t, -1));
    CHECK_RC(qg_ticket_cancel(t), QG_ERR_NOT_WAITING); /* an admitted call keeps its permit */
    qg_ticket_free(t);
    CHECK_U64(stat_of(l, "k", QG_STAT_ADMITTED_CALLS), ==, 1);

    /* Otherwise it waits in slices, keeping its place. The bucket is filled right before,
       so that its unit leaves the window 200 ms after t0 at the earliest, however slowly
       the checks above ran (valgrind). */
    sleep_ms(210);
    double t0 = now_ms();
    CHECK_OK(qg_limiter_try_acquire(l, "k", 1, NULL));
    CHECK_OK(qg_limiter_enqueue(l, "k", 1, 5000, &t));
    CHECK_U64(stat_of(l, "k", QG_STAT_QUEUED), ==, 1);
    CHECK_RC(qg_ticket_wait(t, 0), QG_PENDING);
    double s0 = now_ms();
    CHECK_RC(qg_ticket_wait(t, 20), QG_PENDING);
    CHECK_DBL(now_ms() - s0, >=, 19);
    CHECK_RC(qg_limiter_try_acquire(l, "k", 1, NULL), QG_ERR_WOULD_BLOCK);
    int pending = 0;
    qg_result rc;
    while ((rc = qg_ticket_wait(t, 20)) == QG_PENDING && now_ms() - t0 < 3000) {
        pending++;
    }
    CHECK_RC(rc, QG_OK);
    double e = now_ms() - t0;
    CHECK_MSG(pending >= 3, "only %d pending slices", pending);
    CHECK_DBL(e, >=, 190);
    CHECK_DBL(e, <, 700);
    CHECK_OK(qg_ticket_wait(t, 0)); /* again on every later call */
    CHECK_OK(qg_ticket_wait(t, 10));
    CHECK_RC(qg_ticket_cancel(t), QG_ERR_NOT_WAITING);
    qg_ticket_free(t);
    CHECK_U64(stat_of(l, "k", QG_STAT_QUEUED), ==, 0);
    CHECK_U64(stat_of(l, "k", QG_STAT_WAITED_CALLS), ==, 1);

    /* A ticket whose deadline cannot be met times out at once. */
    CHECK_OK(qg_limiter_enqueue(l, "k", 1, 10, &t));
    CHECK_RC(qg_ticket_wait(t, 0), QG_ERR_TIMEOUT);
    CHECK_RC(qg_ticket_wait(t, -1), QG_ERR_TIMEOUT);
    CHECK_RC(qg_ticket_cancel(t), QG_ERR_NOT_WAITING);
    qg_ticket_free(t);
    qg_limiter_free(l);
}

static void test_ticket_cancel_from_another_thread(void)
{
    qg_limiter *l = make_simple(1, 250);
    qg_ticket *t = NULL, *next = NULL;
    CHECK_OK(qg_limiter_try_acquire(l, "k", 1, NULL));
    double t0 = now_ms();
    CHECK_OK(qg_limiter_enqueue(l, "k", 1, -1, &t));
    CHECK_OK(qg_limiter_enqueue(l, "k", 1, -1, &next));

    struct blocked_call c;
    memset(&c, 0, sizeof c);
    c.ticket = t;
    c.timeout_ms = -1;
    pthread_t th;
    CHECK(pthread_create(&th, NULL, blocked_call_main, &c) == 0);
    sleep_ms(40);
    double cancelled_at = now_ms();
    CHECK_OK(qg_ticket_cancel(t));
    CHECK(pthread_join(th, NULL) == 0);
    CHECK_RC(c.rc, QG_ERR_CANCELLED);
    CHECK_DBL(c.returned_at - cancelled_at, <, 200);
    CHECK_MSG(contains(c.error, "cancel"), "the waiter's text: \"%s\"", c.error);

    CHECK_RC(qg_ticket_cancel(t), QG_ERR_NOT_WAITING);
    CHECK_RC(qg_ticket_wait(t, 0), QG_ERR_CANCELLED);
    CHECK_U64(stat_of(l, "k", QG_STAT_CANCELLATIONS), ==, 1);
    CHECK_U64(stat_of(l, "k", QG_STAT_QUEUED), ==, 1);
    qg_ticket_free(t);

    /* The next ticket moved up and is admitted at the first free instant. */
    CHECK_OK(qg_ticket_wait(next, 2000));
    double e = now_ms() - t0;
    CHECK_DBL(e, >=, 240);
    CHECK_DBL(e, <, 450);
    qg_ticket_free(next);
    qg_limiter_free(l);
}

static void test_ticket_free_gives_up_the_place(void)
{
    qg_limiter *l = make_simple(1, 200);
    qg_ticket *first = NULL, *second = NULL;
    double t0 = now_ms();
    CHECK_OK(qg_limiter_try_acquire(l, "k", 1, NULL));
    CHECK_OK(qg_limiter_enqueue(l, "k", 1, -1, &first));
    CHECK_OK(qg_limiter_enqueue(l, "k", 1, -1, &second));
    CHECK_U64(stat_of(l, "k", QG_STAT_QUEUED), ==, 2);
    CHECK_RC(qg_ticket_wait(first, 0), QG_PENDING);
    qg_ticket_free(first);
    CHECK_U64(stat_of(l, "k", QG_STAT_QUEUED), ==, 1);
    CHECK_U64(stat_of(l, "k", QG_STAT_CANCELLATIONS), ==, 1);
    /* Admitted at 200 ms, in the place given up, not at 400 ms behind it. */
    CHECK_OK(qg_ticket_wait(second, 2000));
    double e = now_ms() - t0;
    CHECK_DBL(e, >=, 190);
    CHECK_DBL(e, <, 380);
    qg_ticket_free(second);
    CHECK_U64(stat_of(l, "k", QG_STAT_ADMITTED_CALLS), ==, 2);
    qg_limiter_free(l);
}

static void test_ticket_outlives_its_limiter_handle(void)
{
    qg_limiter *l = make_simple(1, 100);
    qg_ticket *t = NULL;
    CHECK_OK(qg_limiter_try_acquire(l, "k", 1, NULL));
    CHECK_OK(qg_limiter_enqueue(l, "k", 1, 2000, &t));
    qg_limiter_free(l); /* the ticket keeps what it needs alive */
    CHECK_OK(qg_ticket_wait(t, 2000));
    qg_ticket_free(t);
}

static void test_fifo_order_across_threads(void)
{
    enum { N = 4 };
    /*
     * 1 call per 8 s: nobody is admitted while the threads take their places. Their
     * deadline of 9 s can be met, so they queue rather than time out at once.
     */
    qg_limiter *l = make_simple(1, 8000);
    const uint32_t one[] = {1};
    const uint64_t tenth[] = {100};
    struct blocked_call c[N];
    pthread_t th[N];
    double admitted_at = now_ms();
    CHECK_OK(qg_limiter_try_acquire(l, "k", 1, NULL));
    for (int i = 0; i < N; i++) {
        memset(&c[i], 0, sizeof c[i]);
        c[i].limiter = l;
        c[i].key = "k";
        c[i].timeout_ms = 9000;
        CHECK(pthread_create(&th[i], NULL, blocked_call_main, &c[i]) == 0);
        /* Each takes its place before the next arrives. */
        CHECK_MSG(wait_until_queued(l, "k", (uint64_t)i + 1), "thread %d never queued", i);
    }
    /*
     * Then 1 call per 100 ms, once the first unit is out of that window: the new rates
     * admit the head at once and the others follow in arrival order. (Changing the rates
     * before the head is due would leave it asleep until its old instant: see
     * test_new_rates_wake_the_head.)
     */
    sleep_ms(admitted_at + 110 - now_ms());
    double t0 = now_ms();
    CHECK_OK(qg_limiter_set_rates(l, "k", one, tenth, 1));
    for (int i = 0; i < N; i++) {
        CHECK(pthread_join(th[i], NULL) == 0);
        CHECK_RC(c[i].rc, QG_OK);
    }
    /* Admitted 100 ms apart, far above wake-up jitter, so the returns keep that order. */
    for (int i = 1; i < N; i++) {
        CHECK_MSG(c[i].returned_at > c[i - 1].returned_at, "thread %d returned %.1f ms after thread %d", i,
                  c[i].returned_at - c[i - 1].returned_at, i - 1);
    }
    CHECK_DBL(c[N - 1].returned_at - t0, >=, (N - 1) * 100 - 1);
    CHECK_U64(stat_of(l, "k", QG_STAT_WAITED_CALLS), ==, N);
    qg_limiter_free(l);
}

static void test_pause(void)
{
    qg_limiter *l = make_simple(10, 100);
    double t0 = now_ms();
    CHECK_OK(qg_limiter_pause(l, "p", 150));
    CHECK_OK(qg_limiter_pause(l, "p", 50)); /* a shorter pause never shortens it */
    uint64_t wait = 0;
    CHECK_RC(qg_limiter_try_acquire(l, "p", 1, &wait), QG_ERR_WOULD_BLOCK);
    double e = now_ms() - t0;
    CHECK_U64(wait, <=, 150);
    CHECK_DBL((double)wait + e + 1, >=, 150);
    uint64_t paused_for = stat_of(l, "p", QG_STAT_PAUSED_FOR_MS);
    CHECK_U64(paused_for, <=, 150);
    CHECK_DBL((double)paused_for + (now_ms() - t0) + 1, >=, 150);
    CHECK_U64(stat_of(l, "p", QG_STAT_PAUSES), ==, 2);
    CHECK_U64(stat_of(l, "p", QG_STAT_REFUSALS), ==, 1);

    /* Other buckets are not paused. */
    CHECK_OK(qg_limiter_try_acquire(l, "other", 1, NULL));
    CHECK_U64(stat_of(l, "other", QG_STAT_PAUSED_FOR_MS), ==, 0);

    /* A deadline inside the pause cannot be met. */
    double t1 = now_ms();
    CHECK_RC(qg_limiter_acquire(l, "p", 1, 20), QG_ERR_TIMEOUT);
    CHECK_DBL(now_ms() - t1, <, 60);

    /* A blocking call goes through when the pause ends. */
    CHECK_OK(qg_limiter_acquire(l, "p", 1, 2000));
    e = now_ms() - t0;
    CHECK_DBL(e, >=, 149);
    CHECK_DBL(e, <, 500);
    CHECK_U64(stat_of(l, "p", QG_STAT_PAUSED_FOR_MS), ==, 0);
    /* A longer pause extends it. */
    CHECK_OK(qg_limiter_pause(l, "p", 20));
    CHECK_OK(qg_limiter_pause(l, "p", 60));
    CHECK_U64(stat_of(l, "p", QG_STAT_PAUSED_FOR_MS), >, 20);
    qg_limiter_free(l);
}

static void test_set_rates(void)
{
    qg_limiter *l = make_simple(10, 1000);
    const uint32_t calls[] = {2, 5};
    const uint64_t windows[] = {500, 1000};
    uint64_t used = 0, c = 0, w = 0;
    size_t n = 0;
    qg_bucket_stats *s = NULL;

    CHECK_OK(qg_limiter_set_rates(l, "own", calls, windows, 2));
    CHECK_OK(qg_limiter_stats(l, "own", &s));
    CHECK_OK(qg_bucket_stats_window_count(s, &n));
    CHECK_U64(n, ==, 2);
    CHECK_OK(qg_bucket_stats_window(s, 0, &used, &c, &w));
    CHECK(used == 0 && c == 2 && w == 500);
    CHECK_OK(qg_bucket_stats_window(s, 1, &used, &c, &w));
    CHECK(used == 0 && c == 5 && w == 1000);
    qg_bucket_stats_free(s);

    CHECK_OK(qg_limiter_try_acquire(l, "own", 1, NULL));
    CHECK_OK(qg_limiter_try_acquire(l, "own", 1, NULL));
    uint64_t wait = 0;
    CHECK_RC(qg_limiter_try_acquire(l, "own", 1, &wait), QG_ERR_WOULD_BLOCK);
    CHECK_U64(wait, <=, 500);
    CHECK_RC(qg_limiter_try_acquire(l, "own", 3, NULL), QG_ERR_INVALID_ARGUMENT); /* above 2 */
    /* Other buckets keep the defaults. */
    CHECK(window_of(l, "dflt", 0, &used, &c, &w) == 0);
    CHECK(c == 10 && w == 1000);

    /* Bad arrays change nothing. */
    const uint32_t zero_calls[] = {3, 0};
    const uint64_t zero_window[] = {100, 0};
    const uint64_t ok_windows[] = {100, 100};
    const uint32_t ok_calls[] = {3, 3};
    CHECK_RC(qg_limiter_set_rates(l, "own", calls, windows, 0), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_limiter_set_rates(l, "own", zero_calls, ok_windows, 2), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_limiter_set_rates(l, "own", ok_calls, zero_window, 2), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_limiter_set_rates(l, "own", NULL, windows, 2), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_limiter_set_rates(l, "own", calls, NULL, 2), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_limiter_set_rates(l, "fresh", zero_calls, ok_windows, 2), QG_ERR_INVALID_ARGUMENT);
    CHECK_OK(qg_limiter_stats(l, "own", &s));
    CHECK_OK(qg_bucket_stats_window_count(s, &n));
    CHECK_U64(n, ==, 2);
    CHECK_OK(qg_bucket_stats_window(s, 0, &used, &c, &w));
    CHECK(used == 2 && c == 2 && w == 500);
    qg_bucket_stats_free(s);
    CHECK(window_of(l, "fresh", 0, &used, &c, &w) == 0);
    CHECK(c == 10 && w == 1000); /* not created with the bad rates */

    /* Replacing rates keeps the units already admitted. */
    for (int i = 0; i < 3; i++) {
        CHECK_OK(qg_limiter_try_acquire(l, "keep", 1, NULL));
    }
    const uint32_t four[] = {4};
    const uint64_t second[] = {1000};
    CHECK_OK(qg_limiter_set_rates(l, "keep", four, second, 1));
    CHECK(window_of(l, "keep", 0, &used, &c, &w) == 0);
    CHECK_U64(used, ==, 3);
    CHECK_U64(c, ==, 4);
    CHECK_OK(qg_limiter_try_acquire(l, "keep", 1, NULL));
    CHECK_RC(qg_limiter_try_acquire(l, "keep", 1, NULL), QG_ERR_WOULD_BLOCK);
    CHECK_U64(stat_of(l, "keep", QG_STAT_ADMITTED_CALLS), ==, 4); /* counters survive too */

    /* A queued call that no longer fits the new rates stops waiting. */
    const uint32_t three[] = {3};
    const uint32_t two[] = {2};
    const uint64_t fifth[] = {200};
    qg_ticket *t = NULL;
    CHECK_OK(qg_limiter_set_rates(l, "q", three, fifth, 1));
    CHECK_OK(qg_limiter_try_acquire(l, "q", 3, NULL));
    CHECK_OK(qg_limiter_enqueue(l, "q", 3, -1, &t));
    CHECK_RC(qg_ticket_wait(t, 0), QG_PENDING);
    CHECK_OK(qg_limiter_set_rates(l, "q", two, fifth, 1));
    qg_result rc = qg_ticket_wait(t, 100);
    CHECK_MSG(rc != QG_OK && rc != QG_PENDING, "a cost-3 ticket under a 2-call rate: %" PRIu32 " (%s)", rc,
              qg_result_str(rc));
    CHECK_U64(stat_of(l, "q", QG_STAT_QUEUED), ==, 0);
    qg_ticket_free(t);
    qg_limiter_free(l);
}

static void test_stats(void)
{
    qg_limiter *l = make_simple(2, 200);
    qg_bucket_stats *s = SENTINEL;
    uint64_t v = 0;
    size_t n = 0;

    /* A bucket not used yet: zeros, with the default rates' windows. */
    CHECK_OK(qg_limiter_stats(l, "s", &s));
    CHECK(s != NULL && s != SENTINEL);
    for (uint32_t f = QG_STAT_ADMITTED_CALLS; f <= QG_STAT_QUEUED; f++) {
        v = 99;
        CHECK_OK(qg_bucket_stats_get(s, f, &v));
        CHECK_MSG(v == 0, "field %" PRIu32 " of a fresh bucket is %" PRIu64, f, v);
    }
    CHECK_OK(qg_bucket_stats_window_count(s, &n));
    CHECK_U64(n, ==, 1);
    qg_bucket_stats_free(s);

    /* A known history. */
    double t0 = now_ms();
    CHECK_OK(qg_limiter_try_acquire(l, "s", 2, NULL));                     /* 2 units, one call */
    CHECK_RC(qg_limiter_try_acquire(l, "s", 1, NULL), QG_ERR_WOULD_BLOCK); /* refusal */
    CHECK_RC(qg_limiter_acquire(l, "s", 1, 10), QG_ERR_TIMEOUT);         /* timeout */
    double acquire_called = now_ms();
    CHECK_OK(qg_limiter_acquire(l, "s", 1, -1)); /* waits until the 2 units leave at 200 ms */
    double waited_ms = now_ms() - t0;
    /* It waited from its enqueueing (allow 50 ms for getting there) until 200 ms. */
    double least_wait_ms = t0 + 200 - acquire_called - 50;
    qg_ticket *t = NULL;
    CHECK_OK(qg_limiter_enqueue(l, "s", 2, -1, &t)); /* 1 unit in the window: 2 must wait */
    CHECK_OK(qg_ticket_cancel(t));                   /* cancellation */
    qg_ticket_free(t);
    CHECK_OK(qg_limiter_pause(l, "s", 500)); /* pause */
    CHECK_OK(qg_limiter_enqueue(l, "s", 1, -1, &t)); /* queued behind the pause */

    CHECK_OK(qg_limiter_stats(l, "s", &s));
    double since_pause = now_ms() - t0 - waited_ms;
    struct {
        uint32_t field;
        uint64_t lo, hi;
    } const expect[] = {
        {QG_STAT_ADMITTED_CALLS, 2, 2},
        {QG_STAT_ADMITTED_UNITS, 3, 3},
        {QG_STAT_WAITED_CALLS, 1, 1},
        {QG_STAT_TOTAL_WAIT_US, least_wait_ms > 0 ? (uint64_t)(least_wait_ms * 1000) : 1,
         (uint64_t)(waited_ms * 1000) + 1000},
        {QG_STAT_LONGEST_WAIT_US, least_wait_ms > 0 ? (uint64_t)(least_wait_ms * 1000) : 1,
         (uint64_t)(waited_ms * 1000) + 1000},
        {QG_STAT_TIMEOUTS, 1, 1},
        {QG_STAT_CANCELLATIONS, 1, 1},
        {QG_STAT_REFUSALS, 1, 1},
        {QG_STAT_PAUSES, 1, 1},
        {QG_STAT_PAUSED_FOR_MS, (uint64_t)(500 - since_pause - 1), 500},
        {QG_STAT_QUEUED, 1, 1},
    };
    uint64_t total_wait = 0, longest_wait = 1;
    for (size_t i = 0; i < sizeof expect / sizeof expect[0]; i++) {
        v = UINT64_MAX;
        CHECK_OK(qg_bucket_stats_get(s, expect[i].field, &v));
        CHECK_MSG(v >= expect[i].lo && v <= expect[i].hi,
                  "field %" PRIu32 " is %" PRIu64 ", expected %" PRIu64 "..%" PRIu64, expect[i].field, v,
                  expect[i].lo, expect[i].hi);
        if (expect[i].field == QG_STAT_TOTAL_WAIT_US) {
            total_wait = v;
        }
        if (expect[i].field == QG_STAT_LONGEST_WAIT_US) {
            longest_wait = v;
        }
    }
    CHECK_U64(total_wait, ==, longest_wait); /* one call waited */

    /* The window: one unit in it (the two of the first call left at 200 ms). */
    uint64_t used = 9, calls = 9, window = 9;
    CHECK_OK(qg_bucket_stats_window_count(s, &n));
    CHECK_U64(n, ==, 1);
    CHECK_OK(qg_bucket_stats_window(s, 0, &used, &calls, &window));
    CHECK_U64(used, ==, 1);
    CHECK_U64(calls, ==, 2);
    CHECK_U64(window, ==, 200);

    /* Bad field and index past the end: refused, nothing written. */
    v = 4242;
    CHECK_RC(qg_bucket_stats_get(s, QG_STAT_EXPIRED_HOLDS + 1, &v), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_bucket_stats_get(s, UINT32_MAX, &v), QG_ERR_INVALID_ARGUMENT);
    CHECK_U64(v, ==, 4242);
    used = calls = window = 4242;
    CHECK_RC(qg_bucket_stats_window(s, 1, &used, &calls, &window), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_bucket_stats_window(s, SIZE_MAX, &used, &calls, &window), QG_ERR_INVALID_ARGUMENT);
    CHECK(used == 4242 && calls == 4242 && window == 4242);

    /* A snapshot does not change afterwards. */
    qg_ticket_free(t);
    CHECK_OK(qg_bucket_stats_get(s, QG_STAT_QUEUED, &v));
    CHECK_U64(v, ==, 1);
    CHECK_OK(qg_bucket_stats_get(s, QG_STAT_CANCELLATIONS, &v));
    CHECK_U64(v, ==, 1);
    qg_bucket_stats_free(s);
    CHECK_U64(stat_of(l, "s", QG_STAT_QUEUED), ==, 0);
    CHECK_U64(stat_of(l, "s", QG_STAT_CANCELLATIONS), ==, 2);

    /* Several windows come in the order the rates were given. */
    const uint32_t mc[] = {20, 50, 7};
    const uint64_t mw[] = {100, 500, 60};
    qg_limiter *m = make_limiter(3, mc, mw, 0, 0);
    CHECK_OK(qg_limiter_try_acquire(m, "k", 2, NULL));
    CHECK_OK(qg_limiter_stats(m, "k", &s));
    CHECK_OK(qg_bucket_stats_window_count(s, &n));
    CHECK_U64(n, ==, 3);
    for (size_t i = 0; i < 3 && i < n; i++) {
        CHECK_OK(qg_bucket_stats_window(s, i, &used, &calls, &window));
        CHECK_MSG(used == 2 && calls == mc[i] && window == mw[i],
                  "window %zu: %" PRIu64 " used of %" PRIu64 " per %" PRIu64 " ms", i, used, calls, window);
    }
    CHECK_RC(qg_bucket_stats_window(s, 3, &used, &calls, &window), QG_ERR_INVALID_ARGUMENT);
    qg_bucket_stats_free(s);
    qg_limiter_free(m);
    qg_limiter_free(l);
}

static void test_max_buckets(void)
{
    const uint32_t calls[] = {1};
    const uint64_t windows[] = {80};
    qg_limiter *l = make_limiter(1, calls, windows, 0, 2);
    qg_ticket *t = SENTINEL;
    const uint32_t rc_calls[] = {5};
    const uint64_t rc_windows[] = {50};

    CHECK_OK(qg_limiter_try_acquire(l, "a", 1, NULL));
    CHECK_OK(qg_limiter_try_acquire(l, "b", 1, NULL));
    CHECK_RC(qg_limiter_try_acquire(l, "c", 1, NULL), QG_ERR_TOO_MANY_BUCKETS);
    {
        char err[256];
        last_error_text(err, sizeof err);
        CHECK_MSG(contains(err, "2"), "text after too many buckets: \"%s\"", err);
    }
    CHECK_RC(qg_limiter_acquire(l, "c", 1, -1), QG_ERR_TOO_MANY_BUCKETS);
    CHECK_RC(qg_limiter_enqueue(l, "c", 1, -1, &t), QG_ERR_TOO_MANY_BUCKETS);
    CHECK(t == SENTINEL);
    CHECK_RC(qg_limiter_pause(l, "c", 10), QG_ERR_TOO_MANY_BUCKETS);
    CHECK_RC(qg_limiter_set_rates(l, "c", rc_calls, rc_windows, 1), QG_ERR_TOO_MANY_BUCKETS);
    CHECK_RC(qg_limiter_acquire(l, NULL, 1, 0), QG_ERR_TOO_MANY_BUCKETS);
    /* Existing buckets still work; reading statistics creates nothing. */
    CHECK_RC(qg_limiter_try_acquire(l, "a", 1, NULL), QG_ERR_WOULD_BLOCK);
    CHECK_U64(stat_of(l, "c", QG_STAT_ADMITTED_CALLS), ==, 0);
    /* Once idle, buckets make room. */
    sleep_ms(90);
    CHECK_OK(qg_limiter_try_acquire(l, "c", 1, NULL));
    CHECK_OK(qg_limiter_try_acquire(l, "d", 1, NULL));
    CHECK_RC(qg_limiter_try_acquire(l, "e", 1, NULL), QG_ERR_TOO_MANY_BUCKETS);
    qg_limiter_free(l);
}

/* Builds a limiter of one rate over the store `url` (NULL: in memory) into *out. */
static qg_result build_with_store(const char *url, uint32_t calls, uint64_t window_ms,
                                  qg_limiter **out)
{
    qg_limiter_builder *b = NULL;
    CHECK_OK(qg_limiter_builder_new(&b));
    CHECK_OK(qg_limiter_builder_add_rate(b, calls, window_ms));
    qg_result rc = qg_limiter_builder_set_store(b, url);
    if (rc == QG_OK) {
        rc = qg_limiter_builder_build(b, out);
    }
    qg_limiter_builder_free(b);
    return rc;
}

static void test_store(void)
{
    char path[256], url[300], msg[512];
    snprintf(path, sizeof path, "/tmp/qg-c-store-%ld.q", (long)time(NULL) ^ (long)clock());
    remove(path);
    snprintf(url, sizeof url, "file://%s", path);
    qg_limiter *a = NULL, *b = NULL, *bad = NULL;
    CHECK_OK(build_with_store(url, 2, 60000, &a));
    CHECK_OK(build_with_store(url, 2, 60000, &b));
    CHECK_OK(qg_limiter_try_acquire(a, "k", 1, NULL));
    CHECK_OK(qg_limiter_try_acquire(b, "k", 1, NULL));
    uint64_t wait = 0;
    CHECK_RC(qg_limiter_try_acquire(a, "k", 1, &wait), QG_ERR_WOULD_BLOCK);
    CHECK_U64(wait, >, 50000);
    uint64_t used = 0, c = 0, w = 0;
    CHECK(window_of(b, "k", 0, &used, &c, &w) == 0);
    CHECK_U64(used, ==, 2); /* b counts a's call */
    qg_limiter_free(a);
    qg_limiter_free(b);

    /* A malformed URL fails at the setter, with the library's message. */
    CHECK_RC(build_with_store("ftp://x/y", 1, 1000, &bad), QG_ERR_INVALID_ARGUMENT);
    last_error_text(msg, sizeof msg);
    CHECK_MSG(strstr(msg, "file://, redis://, rediss://, redis+cluster:// or rediss+cluster://") != NULL, "message: %s", msg);
    CHECK_RC(build_with_store("file://relative", 1, 1000, &bad), QG_ERR_INVALID_ARGUMENT);
    CHECK(bad == NULL);
    /* NULL goes back to memory. */
    CHECK_OK(build_with_store(NULL, 1, 1000, &bad));
    CHECK_OK(qg_limiter_try_acquire(bad, "k", 1, NULL));
    qg_limiter_free(bad);
    bad = NULL;
    CHECK_RC(qg_limiter_builder_set_store(NULL, url), QG_ERR_NULL_ARGUMENT);

    /* A damaged state file: QG_ERR_STORE naming the file, never an admission. */
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (f) {
        for (int i = 0; i < 300; i++) {
            fputc('x', f);
        }
        fclose(f);
    }
    qg_result rc = build_with_store(url, 1, 1000, &bad);
    if (rc == QG_OK) {
        rc = qg_limiter_try_acquire(bad, "k", 1, NULL);
        qg_limiter_free(bad);
    }
    CHECK_RC(rc, QG_ERR_STORE);
    last_error_text(msg, sizeof msg);
    CHECK_MSG(strstr(msg, path) != NULL, "message: %s", msg);
    remove(path);
}

static void test_close(void)
{
    qg_limiter *l = make_simple(1, 1000);
    qg_ticket *t = NULL;
    CHECK_OK(qg_limiter_try_acquire(l, "k", 1, NULL));

    struct blocked_call c;
    memset(&c, 0, sizeof c);
    c.limiter = l;
    c.key = "k";
    c.timeout_ms = -1;
    pthread_t th;
    CHECK(pthread_create(&th, NULL, blocked_call_main, &c) == 0);
    CHECK(wait_until_queued(l, "k", 1));
    CHECK_OK(qg_limiter_enqueue(l, "k", 1, -1, &t));
    CHECK_RC(qg_ticket_wait(t, 0), QG_PENDING);

    double closed_at = now_ms();
    CHECK_OK(qg_limiter_close(l));
    CHECK(pthread_join(th, NULL) == 0);
    CHECK_RC(c.rc, QG_ERR_CLOSED);
    CHECK_DBL(c.returned_at - closed_at, <, 200);
    CHECK_MSG(contains(c.error, "closed"), "the waiter's text: \"%s\"", c.error);
    CHECK_RC(qg_ticket_wait(t, 0), QG_ERR_CLOSED);
    CHECK_RC(qg_ticket_wait(t, -1), QG_ERR_CLOSED);
    CHECK_RC(qg_ticket_cancel(t), QG_ERR_NOT_WAITING);
    qg_ticket_free(t);

    /* Later calls fail the same way, on old and new keys alike. */
    uint64_t wait = 42;
    t = SENTINEL;
    CHECK_RC(qg_limiter_acquire(l, "k", 1, -1), QG_ERR_CLOSED);
    CHECK_RC(qg_limiter_acquire(l, "new", 1, 0), QG_ERR_CLOSED);
    CHECK_RC(qg_limiter_try_acquire(l, "k", 1, &wait), QG_ERR_CLOSED);
    CHECK_RC(qg_limiter_try_acquire(l, "new2", 1, &wait), QG_ERR_CLOSED);
    CHECK_U64(wait, ==, 42);
    CHECK_RC(qg_limiter_enqueue(l, "k", 1, -1, &t), QG_ERR_CLOSED);
    CHECK(t == SENTINEL);
    CHECK_RC(qg_limiter_pause(l, "k", 10), QG_ERR_CLOSED);
    CHECK_OK(qg_limiter_close(l)); /* closing twice is harmless */

    /* The handle stays valid: its statistics can still be read. */
    CHECK_U64(stat_of(l, "k", QG_STAT_ADMITTED_CALLS), ==, 1);
    CHECK_U64(stat_of(l, "k", QG_STAT_QUEUED), ==, 0);
    qg_limiter_free(l);
}

/* 8 threads acquire from one bucket of 20 calls / 100 ms and 50 calls / 500 ms. */
enum { STRESS_THREADS = 8, STRESS_CALLS = 10 };

struct stress_thread {
    qg_limiter *limiter;
    uint32_t cost;
    int ok;
    int failed;
    qg_result first_error;
};

static void *stress_main(void *arg)
{
    struct stress_thread *s = arg;
    for (int i = 0; i < STRESS_CALLS; i++) {
        qg_result rc = qg_limiter_acquire(s->limiter, "stress", s->cost, 10000);
        if (rc == QG_OK) {
            s->ok++;
        } else {
            if (s->failed++ == 0) {
                s->first_error = rc;
            }
        }
    }
    return NULL;
}

static void test_threads_keep_every_window(void)
{
    const uint32_t calls[] = {20, 50};
    const uint64_t windows[] = {100, 500};
    qg_limiter *l = make_limiter(2, calls, windows, 0, 0);
    struct stress_thread st[STRESS_THREADS];
    pthread_t th[STRESS_THREADS];
    uint64_t units = 0;

    double t0 = now_ms();
    for (int i = 0; i < STRESS_THREADS; i++) {
        memset(&st[i], 0, sizeof st[i]);
        st[i].limiter = l;
        st[i].cost = 1 + (uint32_t)(i % 2);
        units += (uint64_t)st[i].cost * STRESS_CALLS;
        CHECK(pthread_create(&th[i], NULL, stress_main, &st[i]) == 0);
    }
    for (int i = 0; i < STRESS_THREADS; i++) {
        CHECK(pthread_join(th[i], NULL) == 0);
    }
    double elapsed = now_ms() - t0;
    for (int i = 0; i < STRESS_THREADS; i++) {
        CHECK_MSG(st[i].ok == STRESS_CALLS && st[i].failed == 0,
                  "thread %d: %d admitted, %d failed (first %" PRIu32 ")", i, st[i].ok, st[i].failed,
                  st[i].first_error);
    }

    qg_bucket_stats *s = NULL;
    uint64_t v = 0, used = 0, c = 0, w = 0;
    CHECK_OK(qg_limiter_stats(l, "stress", &s));
    CHECK_OK(qg_bucket_stats_get(s, QG_STAT_ADMITTED_CALLS, &v));
    CHECK_U64(v, ==, STRESS_THREADS * STRESS_CALLS);
    CHECK_OK(qg_bucket_stats_get(s, QG_STAT_ADMITTED_UNITS, &v));
    CHECK_U64(v, ==, units);
    CHECK_OK(qg_bucket_stats_get(s, QG_STAT_TIMEOUTS, &v));
    CHECK_U64(v, ==, 0);
    CHECK_OK(qg_bucket_stats_get(s, QG_STAT_QUEUED, &v));
    CHECK_U64(v, ==, 0);
    for (size_t i = 0; i < 2; i++) {
        CHECK_OK(qg_bucket_stats_window(s, i, &used, &c, &w));
        CHECK_U64(used, <=, c);
    }
    qg_bucket_stats_free(s);

    /*
     * Unit k + calls is admitted no earlier than unit k leaves the window, so the last of
     * `units` units comes at least floor((units - 1) / calls) windows after the first.
     * Both instants lie between t0 and the end of the run.
     */
    for (size_t i = 0; i < 2; i++) {
        double bound = (double)((units - 1) / calls[i]) * (double)windows[i];
        CHECK_MSG(elapsed + 2 >= bound,
                  "%" PRIu64 " units in %.1f ms; %" PRIu32 " per %" PRIu64 " ms needs %.0f ms", units,
                  elapsed, calls[i], windows[i], bound);
    }
    /* And nothing stalled: the run takes about as long as the windows demand. */
    CHECK_DBL(elapsed, <, 4000);
    qg_limiter_free(l);
}

/* ------------------------------------------------------- library defects ---- */
/*
 * These tests expect the documented behaviour where the library currently departs
 * from it; each comment says what the header promises and what happens instead.
 */

/*
 * qg_ticket_wait on a ticket queued behind another ticket: the first ticket's turn comes
 * at 100 ms and the second's at 200 ms, so a wait of up to 600 ms on the second returns
 * QG_OK. Only a thread waiting on the head of the queue moves it forward, so while no
 * thread waits on the first ticket the second sleeps through its whole slice and gets
 * QG_PENDING (with slice_ms < 0 it would never return).
 */
static void test_ticket_behind_an_idle_head_is_admitted(void)
{
    qg_limiter *l = make_simple(1, 100);
    qg_ticket *first = NULL, *second = NULL;
    double t0 = now_ms();
    CHECK_OK(qg_limiter_try_acquire(l, "k", 1, NULL));
    CHECK_OK(qg_limiter_enqueue(l, "k", 1, -1, &first));
    CHECK_OK(qg_limiter_enqueue(l, "k", 1, -1, &second));
    CHECK_RC(qg_ticket_wait(second, 600), QG_OK);
    CHECK_DBL(now_ms() - t0, <, 450);
    CHECK_RC(qg_ticket_wait(first, 0), QG_OK);
    qg_ticket_free(first);
    qg_ticket_free(second);
    qg_limiter_free(l);
}

/*
 * Holds: the units count in flight from admission and from the release on; a ticket made
 * by qg_limiter_enqueue_hold hands its hold out once; a hold never released counts from
 * its lease's end; bad calls are refused without side effects.
 */
static void test_hold(void)
{
    qg_limiter *l = make_simple(2, 200);
    qg_hold *a = NULL, *b = NULL, *c = SENTINEL;
    uint64_t wait = 42;
    double t0 = now_ms();
    CHECK_OK(qg_limiter_hold(l, "k", 1, 0, &a));
    CHECK_OK(qg_limiter_try_hold(l, "k", 1, &wait, &b));
    CHECK_U64(wait, ==, 0);
    CHECK_U64(stat_of(l, "k", QG_STAT_IN_FLIGHT), ==, 2);
    /* Both in flight: nothing fits, the wait is a lower bound of one window. */
    CHECK_RC(qg_limiter_try_hold(l, "k", 1, &wait, &c), QG_ERR_WOULD_BLOCK);
    CHECK(c == SENTINEL);
    CHECK_U64(wait, >=, 150);
    CHECK_RC(qg_limiter_acquire(l, "k", 1, 50), QG_ERR_TIMEOUT);
    sleep_ms(100);
    double released = now_ms(); /* the release logs the unit at this instant or later */
    qg_hold_release(a);
    CHECK_U64(stat_of(l, "k", QG_STAT_IN_FLIGHT), ==, 1);
    /* Released 100 ms after admission: it counts until 200 ms after its release. */
    CHECK_RC(qg_limiter_try_acquire(l, "k", 1, &wait), QG_ERR_WOULD_BLOCK);
    CHECK_DBL((double)wait + (now_ms() - released) + 1, >=, 200);
    qg_hold_release(b);
    qg_hold_release(NULL);
    CHECK_OK(qg_limiter_acquire(l, "k", 2, 2000));
    CHECK_DBL(now_ms() - t0, >=, 295);

    /* A hold ticket, waited on in slices. */
    qg_limiter *q = make_simple(1, 100);
    qg_ticket *t = NULL, *plain = NULL;
    qg_hold *h = SENTINEL;
    CHECK_OK(qg_limiter_try_acquire(q, "k", 1, NULL));
    CHECK_OK(qg_limiter_enqueue_hold(q, "k", 1, -1, &t));
    CHECK_RC(qg_ticket_take_hold(t, &h), QG_ERR_INVALID_ARGUMENT);
    CHECK(h == SENTINEL);
    qg_result rc;
    while ((rc = qg_ticket_wait(t, 20)) == QG_PENDING) {
    }
    CHECK_OK(rc);
    CHECK_OK(qg_ticket_take_hold(t, &h));
    CHECK_RC(qg_ticket_take_hold(t, &c), QG_ERR_INVALID_ARGUMENT);
    CHECK_U64(stat_of(q, "k", QG_STAT_IN_FLIGHT), ==, 1);
    qg_ticket_free(t);
    CHECK_U64(stat_of(q, "k", QG_STAT_IN_FLIGHT), ==, 1); /* the hold outlives its ticket */
    CHECK_OK(qg_limiter_enqueue(q, "k", 1, -1, &plain));
    CHECK_RC(qg_ticket_wait(plain, 200), QG_PENDING);     /* still in flight */
    qg_hold_release(h);
    CHECK_OK(qg_ticket_wait(plain, 1000));
    CHECK_RC(qg_ticket_take_hold(plain, &c), QG_ERR_INVALID_ARGUMENT);
    qg_ticket_free(plain);
    /* An admitted hold ticket freed before its hold was taken releases it. */
    sleep_ms(110);
    CHECK_OK(qg_limiter_enqueue_hold(q, "k", 1, -1, &t));
    CHECK_OK(qg_ticket_wait(t, 0));
    CHECK_U64(stat_of(q, "k", QG_STAT_IN_FLIGHT), ==, 1);
    qg_ticket_free(t);
    CHECK_U64(stat_of(q, "k", QG_STAT_IN_FLIGHT), ==, 0);

    /* NULLs and bad costs. */
    CHECK_RC(qg_limiter_hold(NULL, "k", 1, 0, &c), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_limiter_hold(q, "k", 1, 0, NULL), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_limiter_hold(q, "k", 0, 0, &c), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_limiter_try_hold(q, "k", 5, NULL, &c), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_ticket_take_hold(NULL, &c), QG_ERR_NULL_ARGUMENT);
    CHECK(c == SENTINEL);
    qg_limiter_free(q);

    /* A hold never released counts from its lease's end. */
    qg_limiter_builder *bld = NULL;
    qg_limiter *leased = NULL;
    CHECK_OK(qg_limiter_builder_new(&bld));
    CHECK_OK(qg_limiter_builder_add_rate(bld, 1, 100));
    CHECK_OK(qg_limiter_builder_set_hold_lease_ms(bld, 150));
    CHECK_OK(qg_limiter_builder_build(bld, &leased));
    CHECK_OK(qg_limiter_builder_set_hold_lease_ms(bld, 0));
    CHECK_RC(qg_limiter_builder_build(bld, &l), QG_ERR_INVALID_ARGUMENT);
    qg_limiter_builder_free(bld);
    qg_hold *forgotten = NULL;
    t0 = now_ms();
    CHECK_OK(qg_limiter_hold(leased, "k", 1, 0, &forgotten));
    CHECK_OK(qg_limiter_acquire(leased, "k", 1, 2000));
    CHECK_DBL(now_ms() - t0, >=, 245);
    CHECK_U64(stat_of(leased, "k", QG_STAT_EXPIRED_HOLDS), ==, 1);
    qg_hold_release(forgotten); /* late: changes nothing, frees the handle */
    qg_limiter_free(leased);
    qg_limiter_free(l);
}

/*
 * qg_limiter_try_acquire once the queued call before it has come due: 2 calls / 100 ms,
 * two units at 0 ms, a ticket queued for 1 unit (due at 100 ms) that nobody waits on; at
 * 150 ms the ticket is admitted and one more unit fits, so try_acquire returns QG_OK.
 * Instead it admits the ticket, finds the queue empty and the window free, and still
 * refuses with QG_ERR_WOULD_BLOCK and *wait_ms = 0.
 */
static void test_wait_time(void)
{
    qg_limiter *l = make_simple(2, 200);
    uint64_t wait = 12345;
    CHECK_OK(qg_limiter_wait_time(l, "k", 1, &wait));
    CHECK_U64(wait, ==, 0);
    CHECK_OK(qg_limiter_try_acquire(l, "k", 2, NULL));
    CHECK_OK(qg_limiter_wait_time(l, "k", 1, &wait));
    CHECK_U64(wait, <=, 200);
    CHECK_U64(wait, >=, 100);
    CHECK_U64(stat_of(l, "k", QG_STAT_ADMITTED_CALLS), ==, 1); /* took nothing */
    CHECK_RC(qg_limiter_wait_time(l, "k", 3, &wait), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_limiter_wait_time(NULL, "k", 1, &wait), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_limiter_wait_time(l, "k", 1, NULL), QG_ERR_NULL_ARGUMENT);
    qg_limiter_free(l);
}

static void test_try_acquire_after_the_queue_drains(void)
{
    qg_limiter *l = make_simple(2, 100);
    qg_ticket *t = NULL;
    uint64_t wait = 42;
    CHECK_OK(qg_limiter_try_acquire(l, "k", 2, NULL));
    CHECK_OK(qg_limiter_enqueue(l, "k", 1, -1, &t));
    sleep_ms(150);
    qg_result rc = qg_limiter_try_acquire(l, "k", 1, &wait);
    CHECK_MSG(rc == QG_OK, "try_acquire returned %" PRIu32 " (%s) with wait_ms %" PRIu64 ", expected QG_OK",
              rc, qg_result_str(rc), wait);
    CHECK_RC(qg_ticket_wait(t, 0), QG_OK);
    qg_ticket_free(t);
    qg_limiter_free(l);
}

/*
 * qg_limiter_set_rates that loosens the rates of a bucket with a blocked caller: the
 * bucket admits 1 call per 1000 ms, a thread blocks in qg_limiter_acquire for the next
 * one (due at 1000 ms), and at 20 ms the rates become 1 call per 300 ms, so the call is
 * due at 300 ms and returns then. set_rates re-checks the queue but does not wake the
 * blocked head, which sleeps until the instant computed under the old rates (1000 ms).
 */
static void test_new_rates_wake_the_head(void)
{
    qg_limiter *l = make_simple(1, 1000);
    const uint32_t one[] = {1};
    const uint64_t shorter[] = {300};
    struct blocked_call c;
    pthread_t th;
    double t0 = now_ms();
    CHECK_OK(qg_limiter_try_acquire(l, "k", 1, NULL));
    memset(&c, 0, sizeof c);
    c.limiter = l;
    c.key = "k";
    c.timeout_ms = 1500;
    CHECK(pthread_create(&th, NULL, blocked_call_main, &c) == 0);
    CHECK(wait_until_queued(l, "k", 1));
    sleep_ms(t0 + 20 - now_ms());
    CHECK_OK(qg_limiter_set_rates(l, "k", one, shorter, 1));
    CHECK(pthread_join(th, NULL) == 0);
    CHECK_RC(c.rc, QG_OK);
    CHECK_MSG(c.returned_at - t0 < 700, "the blocked call returned after %.0f ms, due at 300 ms",
              c.returned_at - t0);
    qg_limiter_free(l);
}

/*
 * qg_limiter_set_rates after qg_limiter_close: the header says later calls fail with
 * QG_ERR_CLOSED; set_rates returns QG_OK, on an existing bucket and on a new key (which
 * it creates).
 */
static void test_set_rates_after_close(void)
{
    qg_limiter *l = make_simple(2, 100);
    const uint32_t calls[] = {1};
    const uint64_t windows[] = {100};
    CHECK_OK(qg_limiter_try_acquire(l, "k", 1, NULL));
    CHECK_OK(qg_limiter_close(l));
    CHECK_RC(qg_limiter_set_rates(l, "k", calls, windows, 1), QG_ERR_CLOSED);
    CHECK_RC(qg_limiter_set_rates(l, "new", calls, windows, 1), QG_ERR_CLOSED);
    qg_limiter_free(l);
}

/*
 * A bucket given its own rates by qg_limiter_set_rates keeps them. With max_buckets = 2,
 * key "a" at 1 call / 10 s and nothing admitted on it yet, calls on two other keys drop
 * "a" as idle to make room, and "a" silently falls back to the default 5 calls / 100 ms:
 * the stricter quota set for it is lost.
 */
static void test_own_rates_survive_the_bucket_limit(void)
{
    const uint32_t calls[] = {5};
    const uint64_t windows[] = {100};
    qg_limiter *l = make_limiter(1, calls, windows, 0, 2);
    const uint32_t own_calls[] = {1};
    const uint64_t own_windows[] = {10000};
    uint64_t used = 0, c = 0, w = 0;
    CHECK_OK(qg_limiter_set_rates(l, "a", own_calls, own_windows, 1));
    CHECK_OK(qg_limiter_try_acquire(l, "b", 1, NULL));
    (void)qg_limiter_try_acquire(l, "c", 1, NULL); /* may be refused for want of room */
    CHECK(window_of(l, "a", 0, &used, &c, &w) == 0);
    CHECK_MSG(c == 1 && w == 10000, "key \"a\" now has %" PRIu64 " calls per %" PRIu64 " ms", c, w);
    qg_limiter_free(l);
}

/*
 * Reading statistics must not change what the limiter admits. Two buckets at 1 call /
 * 100 ms each admit one call; 150 ms later both get 1 call / 1000 ms. Whether the call
 * admitted 150 ms ago still counts under the new window depends only on whether
 * qg_limiter_stats was called on the bucket in between: without it the next call is
 * refused (850 ms wait), with it the next call is admitted.
 */
static void test_stats_do_not_change_set_rates(void)
{
    qg_limiter *l = make_simple(1, 100);
    const uint32_t calls[] = {1};
    const uint64_t windows[] = {1000};
    uint64_t wx = 0, wy = 0;
    CHECK_OK(qg_limiter_try_acquire(l, "x", 1, NULL));
    CHECK_OK(qg_limiter_try_acquire(l, "y", 1, NULL));
    sleep_ms(150);
    (void)stat_of(l, "y", QG_STAT_ADMITTED_CALLS);
    CHECK_OK(qg_limiter_set_rates(l, "x", calls, windows, 1));
    CHECK_OK(qg_limiter_set_rates(l, "y", calls, windows, 1));
    qg_result rx = qg_limiter_try_acquire(l, "x", 1, &wx);
    qg_result ry = qg_limiter_try_acquire(l, "y", 1, &wy);
    CHECK_MSG(rx == ry, "without a stats read: %s (wait %" PRIu64 " ms); after one: %s (wait %" PRIu64 " ms)",
              qg_result_str(rx), wx, qg_result_str(ry), wy);
    qg_limiter_free(l);
}

/* A binding admits, refuses and counts exactly like qg_limiter_try_acquire on its key. */
static void test_binding(void)
{
    qg_limiter *l = make_simple(3, 200);
    qg_binding *b = SENTINEL;
    const char bad_key[] = {(char)0xff, 0};

    CHECK_RC(qg_limiter_bind(NULL, "k", 1, &b), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_limiter_bind(l, "k", 1, NULL), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_limiter_bind(l, "k", 0, &b), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_limiter_bind(l, "k", 4, &b), QG_ERR_INVALID_ARGUMENT); /* above the rate */
    CHECK_RC(qg_limiter_bind(l, bad_key, 1, &b), QG_ERR_INVALID_ARGUMENT);
    CHECK(b == SENTINEL); /* written only on success */
    CHECK_RC(qg_binding_try_acquire(NULL), QG_ERR_NULL_ARGUMENT);
    qg_binding_free(NULL);

    b = NULL;
    CHECK_OK(qg_limiter_bind(l, "k", 2, &b));
    CHECK(b != NULL && b != SENTINEL);
    CHECK_OK(qg_binding_try_acquire(b));
    CHECK_OK(qg_limiter_try_acquire(l, "k", 1, NULL)); /* one bucket: 3 units in use */
    CHECK_RC(qg_binding_try_acquire(b), QG_ERR_WOULD_BLOCK);
    {
        char err[256];
        last_error_text(err, sizeof err);
        CHECK_MSG(contains(err, "ms"), "text after a refusal: \"%s\"", err);
    }
    CHECK_U64(stat_of(l, "k", QG_STAT_ADMITTED_CALLS), ==, 2);
    CHECK_U64(stat_of(l, "k", QG_STAT_ADMITTED_UNITS), ==, 3);
    CHECK_U64(stat_of(l, "k", QG_STAT_REFUSALS), ==, 1);

    /* Never ahead of a queued call: the ticket goes first when the window frees. */
    qg_ticket *t = NULL;
    CHECK_OK(qg_limiter_enqueue(l, "k", 3, 2000, &t));
    sleep_ms(210);
    CHECK_RC(qg_binding_try_acquire(b), QG_ERR_WOULD_BLOCK);
    CHECK_OK(qg_ticket_wait(t, 0));
    qg_ticket_free(t);

    /* New rates apply to the binding at once; the limiter's handle may go first. */
    const uint32_t calls[] = {1};
    const uint64_t windows[] = {60000};
    CHECK_OK(qg_limiter_set_rates(l, "k", calls, windows, 1));
    CHECK_RC(qg_binding_try_acquire(b), QG_ERR_INVALID_ARGUMENT);
    qg_binding *one = NULL;
    CHECK_OK(qg_limiter_bind(l, "k", 1, &one));
    CHECK_OK(qg_limiter_close(l));
    qg_limiter_free(l);
    CHECK_RC(qg_binding_try_acquire(one), QG_ERR_CLOSED);
    CHECK_RC(qg_binding_try_acquire(b), QG_ERR_CLOSED);
    qg_binding_free(one);
    qg_binding_free(b);
}

/* A binding keeps its bucket: eviction cannot drop it, so a full limiter refuses new keys. */
static void test_binding_keeps_its_bucket(void)
{
    const uint32_t calls[] = {1};
    const uint64_t windows[] = {50};
    qg_limiter *l = make_limiter(1, calls, windows, 0, 1);
    qg_binding *b = NULL;
    CHECK_OK(qg_limiter_bind(l, "kept", 1, &b));
    CHECK_OK(qg_binding_try_acquire(b));
    sleep_ms(80); /* "kept" is idle: only its binding keeps it */
    CHECK_RC(qg_limiter_try_acquire(l, "other", 1, NULL), QG_ERR_TOO_MANY_BUCKETS);
    CHECK_OK(qg_binding_try_acquire(b));
    CHECK_U64(stat_of(l, "kept", QG_STAT_ADMITTED_CALLS), ==, 2); /* the same bucket */
    qg_binding_free(b);
    sleep_ms(80);
    CHECK_OK(qg_limiter_try_acquire(l, "other", 1, NULL)); /* freed: it made room */
    qg_limiter_free(l);
}

struct binding_race {
    qg_binding *b;
    atomic_int admitted;
};

static void *binding_race_main(void *arg)
{
    struct binding_race *r = arg;
    for (int i = 0; i < 2000; i++) {
        qg_result rc = qg_binding_try_acquire(r->b);
        if (rc == QG_OK) {
            atomic_fetch_add(&r->admitted, 1);
        } else if (rc != QG_ERR_WOULD_BLOCK) {
            CHECK_RC(rc, QG_ERR_WOULD_BLOCK);
            break;
        }
    }
    return NULL;
}

/* Threads sharing one binding never get more than the rate, and the count matches. */
static void test_binding_shared_by_threads(void)
{
    enum { N = 4 };
    qg_limiter *l = make_simple(100, 60000);
    struct binding_race r = {NULL, 0};
    pthread_t th[N];
    CHECK_OK(qg_limiter_bind(l, "shared", 1, &r.b));
    for (int i = 0; i < N; i++) {
        CHECK(pthread_create(&th[i], NULL, binding_race_main, &r) == 0);
    }
    for (int i = 0; i < N; i++) {
        CHECK(pthread_join(th[i], NULL) == 0);
    }
    CHECK_U64((uint64_t)atomic_load(&r.admitted), ==, 100);
    CHECK_U64(stat_of(l, "shared", QG_STAT_ADMITTED_CALLS), ==, 100);
    CHECK_U64(stat_of(l, "shared", QG_STAT_REFUSALS), ==, (uint64_t)N * 2000 - 100);
    qg_binding_free(r.b);
    qg_limiter_free(l);
}

/* Over a store, a binding makes the general call: one quota with the other processes. */
static void test_binding_over_a_store(void)
{
    char path[256], url[300];
    snprintf(path, sizeof path, "/tmp/qg-c-bind-%ld.q", (long)time(NULL) ^ (long)clock());
    remove(path);
    snprintf(url, sizeof url, "file://%s", path);
    qg_limiter *a = NULL, *other = NULL;
    qg_binding *b = NULL;
    CHECK_OK(build_with_store(url, 2, 60000, &a));
    CHECK_OK(build_with_store(url, 2, 60000, &other));
    CHECK_OK(qg_limiter_bind(a, "k", 1, &b));
    CHECK_OK(qg_binding_try_acquire(b));
    CHECK_OK(qg_limiter_try_acquire(other, "k", 1, NULL));
    CHECK_RC(qg_binding_try_acquire(b), QG_ERR_WOULD_BLOCK);
    CHECK_U64(stat_of(a, "k", QG_STAT_REFUSALS), ==, 1);
    qg_limiter_free(a);
    qg_limiter_free(other);
    qg_binding_free(b);
    remove(path);
}

/* ------------------------------------------------------------------- main ---- */

static const struct test g_tests[] = {
    /* test_last_error_message must run first: it checks the text before any failure. */
    {"last_error_message", test_last_error_message},
    {"last_error_is_per_thread", test_last_error_is_per_thread},
    {"version", test_version},
    {"result_str", test_result_str},
    {"builder", test_builder},
    {"null_arguments", test_null_arguments},
    {"bad_values", test_bad_values},
    {"null_key_is_the_default_bucket", test_null_key_is_the_default_bucket},
    {"try_acquire", test_try_acquire},
    {"wait_time", test_wait_time},
    {"acquire", test_acquire},
    {"enqueue_and_wait_in_slices", test_enqueue_and_wait_in_slices},
    {"ticket_cancel_from_another_thread", test_ticket_cancel_from_another_thread},
    {"ticket_free_gives_up_the_place", test_ticket_free_gives_up_the_place},
    {"ticket_outlives_its_limiter_handle", test_ticket_outlives_its_limiter_handle},
    {"fifo_order_across_threads", test_fifo_order_across_threads},
    {"pause", test_pause},
    {"set_rates", test_set_rates},
    {"stats", test_stats},
    {"max_buckets", test_max_buckets},
    {"close", test_close},
    {"store", test_store},
    {"threads_keep_every_window", test_threads_keep_every_window},
    {"ticket_behind_an_idle_head_is_admitted", test_ticket_behind_an_idle_head_is_admitted},
    {"try_acquire_after_the_queue_drains", test_try_acquire_after_the_queue_drains},
    {"hold", test_hold},
    {"new_rates_wake_the_head", test_new_rates_wake_the_head},
    {"set_rates_after_close", test_set_rates_after_close},
    {"own_rates_survive_the_bucket_limit", test_own_rates_survive_the_bucket_limit},
    {"stats_do_not_change_set_rates", test_stats_do_not_change_set_rates},
    {"binding", test_binding},
    {"binding_keeps_its_bucket", test_binding_keeps_its_bucket},
    {"binding_shared_by_threads", test_binding_shared_by_threads},
    {"binding_over_a_store", test_binding_over_a_store},
};

int main(int argc, char **argv)
{
    return harness_main(argc, argv, g_tests, sizeof g_tests / sizeof g_tests[0]);
}
