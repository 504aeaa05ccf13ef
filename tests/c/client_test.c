/*
 * Tests of the client part of the C ABI of quotagate (qg_client_*, qg_request_*,
 * qg_response_*, qg_pages_*, qg_set_logger, qg_sim_*) through include/quotagate.h only,
 * against the library's own simulator of the Defender API, started through the C ABI.
 *
 * The harness (tests/c/harness.h) counts checks and ends with one line
 * "N passed, N failed"; run with test names as arguments to run only those tests.
 *
 * Every client sets a 5 s exchange timeout, so that a stuck exchange fails a test instead
 * of hanging the suite. JSON answers are inspected with strstr/sscanf only. Timing checks
 * assert lower bounds that the quotas guarantee and generous upper bounds, so that they
 * hold under valgrind too.
 */
#define _POSIX_C_SOURCE 200809L

#include "harness.h"

#include <math.h>

/* Under valgrind every thread runs serialized and many times slower: the quota test
 * needs a wider margin between the client's windows and the server's there. */
#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define UNDER_VALGRIND() (RUNNING_ON_VALGRIND != 0)
#endif
#endif
#ifndef UNDER_VALGRIND
#define UNDER_VALGRIND() 0
#endif

/* ---------------------------------------------------------------- helpers ---- */

/* Something to point a sentinel out-pointer at: out-parameters are written only on success. */
static char g_sentinel_object;
#define SENTINEL ((void *)&g_sentinel_object)

/* The time limit of every exchange in these tests. */
#define EXCHANGE_TIMEOUT_MS 5000

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* The number of non-overlapping occurrences of `needle` in `s`. */
static int count_of(const char *s, const char *needle)
{
    int n = 0;
    size_t len = strlen(needle);
    if (s == NULL || len == 0) {
        return 0;
    }
    for (const char *p = strstr(s, needle); p != NULL; p = strstr(p + len, needle)) {
        n++;
    }
    return n;
}

/* The integer after `"key":` in a JSON text; -1 when absent. */
static long json_int(const char *json, const char *key)
{
    char pattern[128];
    long v = -1;
    snprintf(pattern, sizeof pattern, "\"%s\":", key);
    const char *p = json ? strstr(json, pattern) : NULL;
    if (p == NULL || sscanf(p + strlen(pattern), "%ld", &v) != 1) {
        return -1;
    }
    return v;
}

/* Copies the string value after `"key":"` in `json` into buf; 0 on success. */
static int json_str(const char *json, const char *key, char *buf, size_t len)
{
    char pattern[128];
    snprintf(pattern, sizeof pattern, "\"%s\":\"", key);
    const char *p = json ? strstr(json, pattern) : NULL;
    if (p == NULL || len == 0) {
        return -1;
    }
    p += strlen(pattern);
    const char *end = strchr(p, '"');
    if (end == NULL || (size_t)(end - p) >= len) {
        return -1;
    }
    memcpy(buf, p, (size_t)(end - p));
    buf[end - p] = '\0';
    return 0;
}

/* Settings for a small simulated tenant; the caller adds to them and starts it. */
static qg_sim_config *sim_config(uint32_t machines)
{
    qg_sim_config *c = NULL;
    CHECK_OK(qg_sim_config_new(&c));
    if (c != NULL) {
        CHECK_OK(qg_sim_config_set_machines(c, machines));
    }
    return c;
}

/* Starts a simulator on a free port and frees the settings. NULL on failure. */
static qg_sim *start_sim(qg_sim_config *c)
{
    qg_sim *s = NULL;
    if (c == NULL) {
        return NULL;
    }
    CHECK_OK(qg_sim_start(c, 0, &s));
    qg_sim_config_free(c);
    return s;
}

/* One field of the simulator's info into buf ("" on failure). */
static const char *sim_text(qg_sim *s, uint32_t field, char *buf, size_t len)
{
    size_t written = 0;
    buf[0] = '\0';
    CHECK_OK(qg_sim_info(s, field, buf, len, &written));
    return buf;
}

/* The simulator's request log as JSON (free with qg_string_free); NULL on failure. */
static char *sim_log(qg_sim *s)
{
    char *log = NULL;
    CHECK_OK(qg_sim_log_json(s, &log));
    return log;
}

/* The simulator's figures as JSON (free with qg_string_free); NULL on failure. */
static char *sim_stats(qg_sim *s)
{
    char *st = NULL;
    CHECK_OK(qg_sim_stats_json(s, &st));
    return st;
}

/* One number of the simulator's figures; -1 when it cannot be read. */
static long sim_stat(qg_sim *s, const char *key)
{
    char *st = sim_stats(s);
    long v = json_int(st, key);
    qg_string_free(st);
    return v;
}

/* Like sim_stat without counting a check, for polling loops. */
static long sim_stat_polled(qg_sim *s, const char *key)
{
    char *st = NULL;
    long v = qg_sim_stats_json(s, &st) == QG_OK ? json_int(st, key) : -1;
    qg_string_free(st);
    return v;
}

/* How many requests the simulator's log has whose path contains `needle`. */
static int sim_log_count(qg_sim *s, const char *needle)
{
    char *log = sim_log(s);
    int n = count_of(log, needle);
    qg_string_free(log);
    return n;
}

/* A builder with the short timeouts, pointed at the simulator with its credentials
 * (unless `s` is NULL). */
static qg_client_builder *sim_builder(qg_sim *s)
{
    char url[256], tenant[256], client[256], secret[256];
    qg_client_builder *b = NULL;
    CHECK_OK(qg_client_builder_new(&b));
    if (b == NULL) {
        return NULL;
    }
    CHECK_OK(qg_client_builder_set_timeout_ms(b, EXCHANGE_TIMEOUT_MS));
    CHECK_OK(qg_client_builder_set_connect_timeout_ms(b, 2000));
    if (s == NULL) {
        return b;
    }
    CHECK_OK(qg_client_builder_set_base_url(b, sim_text(s, QG_SIM_URL, url, sizeof url)));
    CHECK_OK(qg_client_builder_set_authority(b, sim_text(s, QG_SIM_AUTHORITY, url, sizeof url)));
    CHECK_OK(qg_client_builder_set_tenant_id(b, sim_text(s, QG_SIM_TENANT_ID, tenant, sizeof tenant)));
    CHECK_OK(qg_client_builder_set_client_id(b, sim_text(s, QG_SIM_CLIENT_ID, client, sizeof client)));
    CHECK_OK(qg_client_builder_set_client_secret(b, sim_text(s, QG_SIM_CLIENT_SECRET, secret, sizeof secret)));
    return b;
}

/* Builds a client and frees the builder. NULL on failure. */
static qg_client *build(qg_client_builder *b)
{
    qg_client *c = NULL;
    if (b == NULL) {
        return NULL;
    }
    CHECK_OK(qg_client_builder_build(b, &c));
    qg_client_builder_free(b);
    return c;
}

static qg_client *sim_client(qg_sim *s) { return build(sim_builder(s)); }

static qg_request *new_request(const char *method, const char *path)
{
    qg_request *r = NULL;
    CHECK_OK(qg_request_new(method, path, &r));
    return r;
}

/* Sends `r`; the response, or NULL (with the code in *rc when rc is not NULL). */
static qg_response *send_request(qg_client *c, const qg_request *r, qg_result *rc)
{
    qg_response *resp = NULL;
    qg_result code = (c != NULL && r != NULL) ? qg_client_send(c, r, &resp) : QG_ERR_NULL_ARGUMENT;
    if (rc != NULL) {
        *rc = code;
    }
    return code == QG_OK ? resp : NULL;
}

/* Sends a request of `method` to `path` with an optional JSON body; the status, or 0. */
static unsigned send_simple(qg_client *c, const char *method, const char *path, const char *json)
{
    qg_request *r = new_request(method, path);
    unsigned status = 0;
    if (r != NULL && json != NULL) {
        CHECK_OK(qg_request_set_body(r, (const uint8_t *)json, strlen(json), NULL));
    }
    qg_result rc = QG_OK;
    qg_response *resp = send_request(c, r, &rc);
    CHECK_MSG(resp != NULL, "%s %s: %s", method, path, qg_result_str(rc));
    if (resp != NULL) {
        uint16_t s = 0;
        CHECK_OK(qg_response_status(resp, &s));
        status = s;
    }
    qg_response_free(resp);
    qg_request_free(r);
    return status;
}

/* The code of sending a request of `method` to `path` (the response is freed). */
static qg_result send_rc(qg_client *c, const char *method, const char *path)
{
    qg_request *r = new_request(method, path);
    qg_result rc = QG_OK;
    qg_response_free(send_request(c, r, &rc));
    qg_request_free(r);
    return rc;
}

static uint16_t status_of(const qg_response *resp)
{
    uint16_t s = 0;
    CHECK_OK(qg_response_status(resp, &s));
    return s;
}

/* The body as a NUL-terminated copy (free with free()); never NULL. */
static char *body_of(const qg_response *resp)
{
    const uint8_t *data = NULL;
    size_t len = 0;
    CHECK_OK(qg_response_body(resp, &data, &len));
    char *text = malloc(len + 1);
    if (text == NULL) {
        abort();
    }
    if (data != NULL && len > 0) {
        memcpy(text, data, len);
    }
    text[len] = '\0';
    return text;
}

/* A header's value as a NUL-terminated string in buf ("" when absent). */
static const char *header_of(const qg_response *resp, const char *name, char *buf, size_t len)
{
    const uint8_t *v = NULL;
    size_t n = 0;
    buf[0] = '\0';
    if (qg_response_header(resp, name, &v, &n) == QG_OK && n < len) {
        memcpy(buf, v, n);
        buf[n] = '\0';
    }
    return buf;
}

/* One error detail of a response into buf. */
static const char *response_detail(const qg_response *resp, uint32_t field, char *buf, size_t len)
{
    size_t written = 0;
    buf[0] = '\0';
    CHECK_OK(qg_response_error_detail(resp, field, buf, len, &written));
    return buf;
}

/* One error detail of the calling thread's last failure into buf. */
static const char *last_detail(uint32_t field, char *buf, size_t len)
{
    size_t written = 0;
    buf[0] = '\0';
    CHECK_OK(qg_last_error_detail(field, buf, len, &written));
    return buf;
}

/* The id of the simulated machine at `index` in list order, into buf (40 characters). */
static const char *machine_id(qg_client *c, unsigned index, char *buf, size_t len)
{
    char path[64];
    buf[0] = '\0';
    snprintf(path, sizeof path, "/api/machines?$top=1&$skip=%u", index);
    qg_request *r = new_request("GET", path);
    qg_response *resp = send_request(c, r, NULL);
    if (resp != NULL) {
        char *body = body_of(resp);
        CHECK_MSG(json_str(body, "id", buf, len) == 0, "no machine id in %.200s", body);
        free(body);
    }
    qg_response_free(resp);
    qg_request_free(r);
    return buf;
}

/* The statistics of a client as JSON (free with qg_string_free). */
static char *client_stats(qg_client *c)
{
    char *st = NULL;
    CHECK_OK(qg_client_stats_json(c, &st));
    return st;
}

static long client_stat(qg_client *c, const char *key)
{
    char *st = client_stats(c);
    long v = json_int(st, key);
    qg_string_free(st);
    return v;
}

/* ------------------------------------------------------------------ tests ---- */

/* The simulator's own API: settings, start, info, log, figures, stop. */
static void test_sim_api(void)
{
    qg_sim_config *c = SENTINEL;
    qg_sim *s = SENTINEL;
    char buf[256], url[256];
    size_t written = 0;

    CHECK_RC(qg_sim_config_new(NULL), QG_ERR_NULL_ARGUMENT);
    CHECK_OK(qg_sim_config_new(&c));
    CHECK(c != NULL && c != SENTINEL);

    /* NULL settings. */
    CHECK_RC(qg_sim_config_set_machines(NULL, 1), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_sim_config_set_limit(NULL, NULL, 1, 1.0), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_sim_config_set_time_scale(NULL, 1.0), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_sim_config_set_token_lifetime_ms(NULL, 1000), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_sim_config_set_faults(NULL, 0, 0, 0), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_sim_config_set_retry_after_style(NULL, QG_SIM_RETRY_AFTER_SECONDS), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_sim_config_set_inbound_jitter_ms(NULL, 0), QG_ERR_NULL_ARGUMENT);

    /* Bad values. */
    CHECK_RC(qg_sim_config_set_limit(c, NULL, 0, 1.0), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_sim_config_set_limit(c, NULL, 1, 0.0), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_sim_config_set_limit(c, NULL, 1, -1.0), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_sim_config_set_limit(c, NULL, 1, NAN), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_sim_config_set_limit(c, NULL, 1, INFINITY), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_sim_config_set_limit_ms(NULL, NULL, 1, 1000), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_sim_config_set_limit_ms(c, NULL, 0, 1000), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_sim_config_set_limit_ms(c, NULL, 1, 0), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_sim_config_set_limit(c, "\xff\xfe", 1, 1.0), QG_ERR_INVALID_ARGUMENT);
    last_error_text(buf, sizeof buf);
    CHECK_MSG(contains(buf, "UTF-8"), "invalid UTF-8 is named: \"%s\"", buf);
    CHECK_RC(qg_sim_config_set_time_scale(c, 0.0), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_sim_config_set_time_scale(c, -0.5), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_sim_config_set_time_scale(c, NAN), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_sim_config_set_time_scale(c, INFINITY), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_sim_config_set_token_lifetime_ms(c, 0), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_sim_config_set_faults(c, 1.5, 0, 0), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_sim_config_set_faults(c, -0.1, 0, 0), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_sim_config_set_faults(c, 0, 1.01, 0), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_sim_config_set_faults(c, NAN, 0, 0), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_sim_config_set_faults(c, 0, NAN, 0), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_sim_config_set_retry_after_style(c, 6), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_sim_config_set_retry_after_style(c, 0xFFFFFFFFu), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_sim_config_set_inbound_jitter_ms(c, 10001), QG_ERR_INVALID_ARGUMENT);
    last_error_text(buf, sizeof buf);
    CHECK_MSG(contains(buf, "inbound_jitter"), "the setting is named: \"%s\"", buf);
    CHECK_RC(qg_sim_config_set_inbound_jitter_ms(c, UINT64_MAX), QG_ERR_INVALID_ARGUMENT);

    /* Good values, every Retry-After style among them. */
    CHECK_OK(qg_sim_config_set_machines(c, 7));
    CHECK_OK(qg_sim_config_set_limit_ms(c, NULL, 1000, 60000));
    CHECK_OK(qg_sim_config_set_limit(c, "hunting", 45, 60.0)); /* deprecated, still works */
    CHECK_OK(qg_sim_config_set_time_scale(c, 1.0));
    CHECK_OK(qg_sim_config_set_token_lifetime_ms(c, 3599000));
    CHECK_OK(qg_sim_config_set_faults(c, 0.0, 0.0, 0));
    CHECK_OK(qg_sim_config_set_faults(c, 1.0, 1.0, 0));
    CHECK_OK(qg_sim_config_set_faults(c, 0.0, 0.0, 0));
    CHECK_OK(qg_sim_config_set_inbound_jitter_ms(c, 10000));
    CHECK_OK(qg_sim_config_set_inbound_jitter_ms(c, 0));
    const uint32_t styles[] = {QG_SIM_RETRY_AFTER_HTTP_DATE, QG_SIM_RETRY_AFTER_MS, QG_SIM_RETRY_AFTER_X_MS,
                               QG_SIM_RETRY_AFTER_BODY_ONLY, QG_SIM_RETRY_AFTER_NONE,
                               QG_SIM_RETRY_AFTER_SECONDS};
    for (size_t i = 0; i < ARRAY_LEN(styles); i++) {
        CHECK_OK(qg_sim_config_set_retry_after_style(c, styles[i]));
    }

    /* Start: NULLs are refused and leave *out alone. */
    CHECK_RC(qg_sim_start(NULL, 0, &s), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_sim_start(c, 0, NULL), QG_ERR_NULL_ARGUMENT);
    CHECK(s == SENTINEL);
    CHECK_OK(qg_sim_start(c, 0, &s));
    CHECK(s != NULL && s != SENTINEL);
    if (s == NULL || s == SENTINEL) {
        qg_sim_config_free(c);
        return;
    }

    /* Info. */
    CHECK_OK(qg_sim_info(s, QG_SIM_URL, url, sizeof url, &written));
    CHECK_U64(written, ==, strlen(url));
    CHECK_MSG(strncmp(url, "http://127.0.0.1:", 17) == 0, "the URL is on the loopback: \"%s\"", url);
    unsigned port = 0;
    CHECK_MSG(sscanf(url, "http://127.0.0.1:%u", &port) == 1 && port > 0 && port < 65536, "port of \"%s\"", url);
    CHECK_OK(qg_sim_info(s, QG_SIM_AUTHORITY, buf, sizeof buf, &written));
    CHECK_MSG(strcmp(buf, url) == 0, "authority \"%s\" is the URL \"%s\"", buf, url);
    const uint32_t fields[] = {QG_SIM_TENANT_ID, QG_SIM_CLIENT_ID, QG_SIM_CLIENT_SECRET};
    for (size_t i = 0; i < ARRAY_LEN(fields); i++) {
        written = 0;
        CHECK_OK(qg_sim_info(s, fields[i], buf, sizeof buf, &written));
        CHECK_MSG(written > 0 && written == strlen(buf), "field %" PRIu32 ": \"%s\"", fields[i], buf);
    }
    /* Buffer conventions: the size asked for, one byte short, NULLs, an unknown field. */
    written = 0;
    CHECK_RC(qg_sim_info(s, QG_SIM_URL, NULL, 0, &written), QG_ERR_BUFFER_TOO_SMALL);
    CHECK_U64(written, ==, strlen(url));
    written = 0;
    CHECK_RC(qg_sim_info(s, QG_SIM_URL, buf, strlen(url), &written), QG_ERR_BUFFER_TOO_SMALL);
    CHECK_U64(written, ==, strlen(url));
    CHECK_RC(qg_sim_info(NULL, QG_SIM_URL, buf, sizeof buf, &written), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_sim_info(s, QG_SIM_URL, buf, sizeof buf, NULL), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_sim_info(s, QG_SIM_URL, NULL, sizeof buf, &written), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_sim_info(s, 5, buf, sizeof buf, &written), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_sim_info(s, 0xFFFFFFFFu, buf, sizeof buf, &written), QG_ERR_INVALID_ARGUMENT);

    /* A taken port cannot be bound; the settings are not consumed by a start. */
    qg_sim *second = SENTINEL;
    CHECK_RC(qg_sim_start(c, (uint16_t)port, &second), QG_ERR_IO);
    CHECK(second == SENTINEL);
    qg_sim_config_free(c);

    /* Log and figures before any request. */
    char *log = SENTINEL, *st = SENTINEL;
    CHECK_OK(qg_sim_log_json(s, &log));
    CHECK_MSG(log != NULL && strcmp(log, "[]") == 0, "empty log: %s", log ? log : "(null)");
    qg_string_free(log);
    CHECK_OK(qg_sim_stats_json(s, &st));
    CHECK_MSG(json_int(st, "requests") == 0 && json_int(st, "throttled") == 0 && json_int(st, "resets") == 0 &&
                  json_int(st, "errors_503") == 0 && json_int(st, "token_requests") == 0,
              "no figures yet: %s", st ? st : "(null)");
    CHECK(st != NULL && contains(st, "\"by_status\":") && contains(st, "\"max_in_window\":"));
    qg_string_free(st);
    CHECK_RC(qg_sim_log_json(NULL, &log), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_sim_log_json(s, NULL), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_sim_stats_json(NULL, &st), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_sim_stats_json(s, NULL), QG_ERR_NULL_ARGUMENT);

    /* One call: a token request and one API request, both logged with their fields. */
    qg_client *client = sim_client(s);
    CHECK_U64(send_simple(client, "GET", "/api/machines?$top=2", NULL), ==, 200);
    log = sim_log(s);
    CHECK_MSG(log != NULL && count_of(log, "\"at_ms\":") == 2 && contains(log, "\"path\":\"/api/machines?$top=2\"") &&
                  contains(log, "\"method\":\"GET\"") && contains(log, "\"status\":200") &&
                  contains(log, "\"class\":\"default\"") && contains(log, "\"class\":\"token\"") &&
                  contains(log, "\"counted\":true") && contains(log, "\"reset\":false") &&
                  contains(log, "\"retry_after_ms\":null") && contains(log, "oauth2/v2.0/token"),
              "log: %s", log ? log : "(null)");
    qg_string_free(log);
    st = sim_stats(s);
    CHECK_MSG(json_int(st, "requests") == 2 && json_int(st, "token_requests") == 1 &&
                  json_int(st, "throttled") == 0 && contains(st, "\"200\":2"),
              "figures: %s", st ? st : "(null)");
    qg_string_free(st);

    /* Stop, twice; then log and figures are refused and leave *out alone. */
    CHECK_OK(qg_sim_stop(s));
    CHECK_OK(qg_sim_stop(s));
    CHECK_RC(qg_sim_stop(NULL), QG_ERR_NULL_ARGUMENT);
    log = SENTINEL;
    st = SENTINEL;
    CHECK_RC(qg_sim_log_json(s, &log), QG_ERR_CLOSED);
    CHECK(log == SENTINEL);
    CHECK_RC(qg_sim_stats_json(s, &st), QG_ERR_CLOSED);
    CHECK(st == SENTINEL);
    /* "Later calls on it give QG_ERR_CLOSED" (qg_sim_stop): qg_sim_info is one of them. */
    CHECK_RC(qg_sim_info(s, QG_SIM_URL, buf, sizeof buf, &written), QG_ERR_CLOSED);

    /* The port is closed: a call fails without an answer. */
    qg_client_builder *b = sim_builder(NULL);
    CHECK_OK(qg_client_builder_set_base_url(b, url));
    CHECK_OK(qg_client_builder_set_access_token(b, "any-token"));
    CHECK_OK(qg_client_builder_set_max_attempts(b, 1));
    qg_client *late = build(b);
    CHECK_RC(send_rc(late, "GET", "/api/machines"), QG_ERR_TRANSPORT);
    qg_client_free(late);

    qg_client_free(client);
    qg_sim_free(s);
    qg_sim_free(NULL);
    qg_sim_config_free(NULL);
}

/*
 * A token lifetime under a second is a valid setting ("above 0"), and the simulator's
 * tokens must stay usable: a call succeeds (the client refreshes the token as often as
 * it needs). Today the simulator answers "expires_in": 0 (whole seconds, rounded down),
 * which the client rightly refuses, so every call fails with QG_ERR_AUTH.
 */
static void test_short_token_lifetime(void)
{
    qg_sim_config *cfg = sim_config(3);
    CHECK_OK(qg_sim_config_set_token_lifetime_ms(cfg, 500));
    qg_sim *s = start_sim(cfg);
    qg_client *c = sim_client(s);
    CHECK_RC(send_rc(c, "GET", "/api/machines?$top=1"), QG_OK);
    qg_client_free(c);
    qg_sim_free(s);
}

/* Every setter of the builder with NULLs and bad values; missing credentials; bad URLs. */
static void test_builder_arguments(void)
{
    qg_client_builder *b = SENTINEL;
    qg_client *c = SENTINEL;
    char err[512];

    CHECK_RC(qg_client_builder_new(NULL), QG_ERR_NULL_ARGUMENT);
    CHECK_OK(qg_client_builder_new(&b));
    CHECK(b != NULL && b != SENTINEL);

    /* A NULL builder. */
    CHECK_RC(qg_client_builder_set_base_url(NULL, "http://x"), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_set_authority(NULL, "http://x"), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_set_tenant_id(NULL, "t"), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_set_client_id(NULL, "c"), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_set_client_secret(NULL, "s"), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_set_access_token(NULL, "t"), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_set_scope(NULL, "s"), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_set_resource(NULL, "r"), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_set_proxy(NULL, NULL), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_set_proxy(NULL, "http://127.0.0.1:1"), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_set_timeout_ms(NULL, 1000), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_set_connect_timeout_ms(NULL, 1000), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_set_max_body_bytes(NULL, 1000), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_set_max_attempts(NULL, 3), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_set_max_quota_wait_ms(NULL, 1000), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_set_margin_ms(NULL, 15), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_add_default_rate(NULL, 1, 1000), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_add_route(NULL, "GET", "/api/x", 1, 1000), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_set_limiter(NULL, NULL), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_build(NULL, &c), QG_ERR_NULL_ARGUMENT);
    CHECK(c == SENTINEL);
    last_error_text(err, sizeof err);
    CHECK_MSG(strcmp(err, "builder is NULL") == 0, "the NULL argument is named: \"%s\"", err);

    /* NULL strings. */
    CHECK_RC(qg_client_builder_set_base_url(b, NULL), QG_ERR_NULL_ARGUMENT);
    last_error_text(err, sizeof err);
    CHECK_MSG(strcmp(err, "url is NULL") == 0, "the NULL argument is named: \"%s\"", err);
    CHECK_RC(qg_client_builder_set_authority(b, NULL), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_set_tenant_id(b, NULL), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_set_client_id(b, NULL), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_set_client_secret(b, NULL), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_set_access_token(b, NULL), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_set_scope(b, NULL), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_set_resource(b, NULL), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_add_route(b, "GET", NULL, 1, 1000), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_set_limiter(b, NULL), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_build(b, NULL), QG_ERR_NULL_ARGUMENT);

    /* Invalid UTF-8 in every string, with a message that says so. */
    const char *bad_utf8 = "ab\xc3\x28";
    qg_result (*const setters[])(qg_client_builder *, const char *) = {
        qg_client_builder_set_base_url,      qg_client_builder_set_authority,
        qg_client_builder_set_tenant_id,     qg_client_builder_set_client_id,
        qg_client_builder_set_client_secret, qg_client_builder_set_access_token,
        qg_client_builder_set_scope,         qg_client_builder_set_resource,
        qg_client_builder_set_proxy,
    };
    for (size_t i = 0; i < ARRAY_LEN(setters); i++) {
        CHECK_RC(setters[i](b, bad_utf8), QG_ERR_INVALID_ARGUMENT);
        last_error_text(err, sizeof err);
        CHECK_MSG(contains(err, "UTF-8"), "setter %zu: \"%s\"", i, err);
    }
    CHECK_RC(qg_client_builder_add_route(b, "\xff", "/api/x", 1, 1000), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_client_builder_add_route(b, NULL, "/api/\xff", 1, 1000), QG_ERR_INVALID_ARGUMENT);

    /* Zero timeouts, attempts, rates. */
    CHECK_RC(qg_client_builder_set_timeout_ms(b, 0), QG_ERR_INVALID_ARGUMENT);
    last_error_text(err, sizeof err);
    CHECK_MSG(contains(err, "timeout"), "\"%s\"", err);
    CHECK_RC(qg_client_builder_set_connect_timeout_ms(b, 0), QG_ERR_INVALID_ARGUMENT);
    last_error_text(err, sizeof err);
    CHECK_MSG(contains(err, "timeout"), "\"%s\"", err);
    CHECK_RC(qg_client_builder_set_max_attempts(b, 0), QG_ERR_INVALID_ARGUMENT);
    last_error_text(err, sizeof err);
    CHECK_MSG(contains(err, "attempts"), "\"%s\"", err);
    CHECK_RC(qg_client_builder_add_default_rate(b, 0, 1000), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_client_builder_add_default_rate(b, 10, 0), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_client_builder_add_route(b, "GET", "/api/x", 0, 1000), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_client_builder_add_route(b, "GET", "/api/x", 1, 0), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_client_builder_add_route(b, "GET", "api/x", 1, 1000), QG_ERR_INVALID_ARGUMENT);
    last_error_text(err, sizeof err);
    CHECK_MSG(contains(err, "'/'"), "a pattern without '/' is named: \"%s\"", err);
    CHECK_RC(qg_client_builder_add_route(b, "GET", "", 1, 1000), QG_ERR_INVALID_ARGUMENT);

    /* Good values. */
    CHECK_OK(qg_client_builder_set_timeout_ms(b, 1));
    CHECK_OK(qg_client_builder_set_timeout_ms(b, EXCHANGE_TIMEOUT_MS));
    CHECK_OK(qg_client_builder_set_connect_timeout_ms(b, 2000));
    CHECK_OK(qg_client_builder_set_max_attempts(b, 1));
    CHECK_OK(qg_client_builder_set_max_body_bytes(b, 0));
    CHECK_OK(qg_client_builder_set_max_body_bytes(b, 1u << 20));
    CHECK_OK(qg_client_builder_set_max_quota_wait_ms(b, 0));
    CHECK_OK(qg_client_builder_set_max_quota_wait_ms(b, 60000));
    CHECK_OK(qg_client_builder_set_margin_ms(b, 0));
    CHECK_OK(qg_client_builder_set_margin_ms(b, 15));
    CHECK_OK(qg_client_builder_add_default_rate(b, 100, 60000));
    CHECK_OK(qg_client_builder_add_route(b, NULL, "/api/machines/{id}", 5, 1000));
    CHECK_OK(qg_client_builder_add_route(b, "post", "/api/machines/*/isolate", 5, 1000));
    CHECK_OK(qg_client_builder_add_route(b, "post", "/api/machines/*/isolate", 50, 60000));
    CHECK_OK(qg_client_builder_set_proxy(b, NULL));

    /* Missing credentials: a clear message, nothing written. */
    c = SENTINEL;
    CHECK_RC(qg_client_builder_build(b, &c), QG_ERR_INVALID_ARGUMENT);
    CHECK(c == SENTINEL);
    last_error_text(err, sizeof err);
    CHECK_MSG(contains(err, "credentials are missing"), "\"%s\"", err);
    CHECK_OK(qg_client_builder_set_tenant_id(b, "tenant"));
    CHECK_OK(qg_client_builder_set_client_id(b, "app"));
    CHECK_RC(qg_client_builder_build(b, &c), QG_ERR_INVALID_ARGUMENT); /* no secret yet */
    last_error_text(err, sizeof err);
    CHECK_MSG(contains(err, "credentials are missing"), "\"%s\"", err);
    CHECK_OK(qg_client_builder_set_client_secret(b, ""));
    CHECK_RC(qg_client_builder_build(b, &c), QG_ERR_INVALID_ARGUMENT);
    last_error_text(err, sizeof err);
    CHECK_MSG(contains(err, "must not be empty"), "\"%s\"", err);
    CHECK_OK(qg_client_builder_set_client_secret(b, "secret"));
    CHECK_OK(qg_client_builder_set_tenant_id(b, "a/b"));
    CHECK_RC(qg_client_builder_build(b, &c), QG_ERR_INVALID_ARGUMENT);
    last_error_text(err, sizeof err);
    CHECK_MSG(contains(err, "tenant id"), "\"%s\"", err);
    CHECK_OK(qg_client_builder_set_tenant_id(b, "tenant"));

    /* Complete: it builds (nothing is sent), and the builder can be built again. */
    CHECK_OK(qg_client_builder_build(b, &c));
    CHECK(c != NULL && c != SENTINEL);
    if (c != SENTINEL) {
        qg_client_free(c);
    }
    qg_client *again = NULL;
    CHECK_OK(qg_client_builder_build(b, &again));
    qg_client_free(again);

    /* Bad URLs. */
    const char *bad_bases[] = {"not a url", "ftp://example.com", "example.com", "", "http://"};
    for (size_t i = 0; i < ARRAY_LEN(bad_bases); i++) {
        c = SENTINEL;
        CHECK_OK(qg_client_builder_set_base_url(b, bad_bases[i]));
        CHECK_RC(qg_client_builder_build(b, &c), QG_ERR_INVALID_ARGUMENT);
        CHECK(c == SENTINEL);
        last_error_text(err, sizeof err);
        CHECK_MSG(contains(err, "base URL"), "base URL \"%s\": \"%s\"", bad_bases[i], err);
    }
    CHECK_OK(qg_client_builder_set_base_url(b, "https://api.example.com/"));
    const char *bad_authorities[] = {"login.example.com", "ftp://login.example.com", ""};
    for (size_t i = 0; i < ARRAY_LEN(bad_authorities); i++) {
        c = SENTINEL;
        CHECK_OK(qg_client_builder_set_authority(b, bad_authorities[i]));
        CHECK_RC(qg_client_builder_build(b, &c), QG_ERR_INVALID_ARGUMENT);
        CHECK(c == SENTINEL);
        last_error_text(err, sizeof err);
        CHECK_MSG(contains(err, "authority"), "authority \"%s\": \"%s\"", bad_authorities[i], err);
    }
    CHECK_OK(qg_client_builder_set_authority(b, "https://login.example.com"));
    c = SENTINEL;
    CHECK_OK(qg_client_builder_set_proxy(b, "http://[::1"));
    CHECK_RC(qg_client_builder_build(b, &c), QG_ERR_INVALID_ARGUMENT);
    CHECK(c == SENTINEL);
    last_error_text(err, sizeof err);
    CHECK_MSG(contains(err, "proxy"), "\"%s\"", err);
    CHECK_OK(qg_client_builder_set_proxy(b, NULL));

    /* A fixed token instead of client credentials; an empty one is refused. */
    qg_client_builder *t = NULL;
    CHECK_OK(qg_client_builder_new(&t));
    CHECK_OK(qg_client_builder_set_access_token(t, ""));
    c = SENTINEL;
    CHECK_RC(qg_client_builder_build(t, &c), QG_ERR_INVALID_ARGUMENT);
    CHECK(c == SENTINEL);
    CHECK_OK(qg_client_builder_set_access_token(t, "a-token"));
    c = NULL;
    CHECK_OK(qg_client_builder_build(t, &c));
    qg_client_free(c);
    qg_client_builder_free(t);

    qg_client_builder_free(b);
    qg_client_builder_free(NULL);
    qg_client_free(NULL);
}

/* The setters change what the client does, seen from the simulator. */
static void test_builder_settings_take_effect(void)
{
    qg_sim *s = start_sim(sim_config(5));
    char url[256], err[512];
    sim_text(s, QG_SIM_URL, url, sizeof url);

    /* One builder, reused: two clients, then a third after more changes. */
    qg_client_builder *b = sim_builder(s);
    qg_client *c1 = NULL, *c2 = NULL, *c3 = NULL;
    CHECK_OK(qg_client_builder_build(b, &c1));
    CHECK_OK(qg_client_builder_build(b, &c2));
    CHECK_U64(send_simple(c1, "GET", "/api/machines?$top=1", NULL), ==, 200);
    CHECK_U64(send_simple(c2, "GET", "/api/machines?$top=1", NULL), ==, 200);
    CHECK_MSG(sim_stat(s, "token_requests") == 2, "each client fetched its own token");

    /* A route of 1 call per 10 s with a quota wait of 300 ms: the second call to a
     * matching path is refused as throttled, without reaching the server; other paths
     * are not limited by it. */
    CHECK_OK(qg_client_builder_add_route(b, "GET", "/api/machines/{id}", 1, 10000));
    CHECK_OK(qg_client_builder_set_max_quota_wait_ms(b, 300));
    CHECK_OK(qg_client_builder_build(b, &c3));
    char id[64];
    char path[128];
    machine_id(c3, 0, id, sizeof id);
    snprintf(path, sizeof path, "/api/machines/%s", id);
    CHECK_U64(send_simple(c3, "GET", path, NULL), ==, 200);
    int before = sim_log_count(s, id);
    double t0 = now_ms();
    CHECK_RC(send_rc(c3, "GET", path), QG_ERR_THROTTLED);
    CHECK_DBL(now_ms() - t0, <, 2000);
    CHECK_U64(sim_log_count(s, id), ==, before);
    CHECK_U64(send_simple(c3, "GET", "/api/machines?$top=1", NULL), ==, 200);
    CHECK_U64(send_simple(c1, "GET", path, NULL), ==, 200); /* c1 was built before the route */

    /* A second rate for the same method and pattern (in other cases) applies together
     * with the first: 5 per 10 s and 1 per 10 s admit one call. */
    qg_client_builder *rb = sim_builder(s);
    CHECK_OK(qg_client_builder_set_max_quota_wait_ms(rb, 300));
    CHECK_OK(qg_client_builder_add_route(rb, "GET", "/api/alerts", 5, 10000));
    CHECK_OK(qg_client_builder_add_route(rb, "get", "/API/Alerts", 1, 10000));
    qg_client *routed = build(rb);
    CHECK_U64(send_simple(routed, "GET", "/api/alerts?$top=1", NULL), ==, 200);
    CHECK_RC(send_rc(routed, "GET", "/api/alerts?$top=1"), QG_ERR_THROTTLED);
    qg_client_free(routed);

    /* Default rates: the first replaces the built-in ones, a second applies with it. */
    qg_client_builder *db = sim_builder(s);
    CHECK_OK(qg_client_builder_set_max_quota_wait_ms(db, 300));
    CHECK_OK(qg_client_builder_add_default_rate(db, 100, 60000));
    CHECK_OK(qg_client_builder_add_default_rate(db, 1, 10000));
    qg_client *defaults = build(db);
    CHECK_U64(send_simple(defaults, "GET", "/api/machines?$top=1", NULL), ==, 200);
    CHECK_RC(send_rc(defaults, "GET", "/api/machines?$top=1"), QG_ERR_THROTTLED);
    char *dst = client_stats(defaults);
    CHECK_MSG(dst != NULL && contains(dst, "{\"used\":1,\"calls\":100,\"window_ms\":60000}") &&
                  contains(dst, "{\"used\":1,\"calls\":1,\"window_ms\":10000}") && !contains(dst, "1500"),
              "windows: %s", dst ? dst : "(null)");
    qg_string_free(dst);
    qg_client_free(defaults);

    /* A v2 scope of our own; a bad scope is refused by the token endpoint (QG_ERR_AUTH). */
    qg_client_builder *sb = sim_builder(s);
    char scope[300];
    snprintf(scope, sizeof scope, "%s/.default", url);
    CHECK_OK(qg_client_builder_set_scope(sb, scope));
    qg_client *scoped = NULL;
    CHECK_OK(qg_client_builder_build(sb, &scoped));
    CHECK_U64(send_simple(scoped, "GET", "/api/machines?$top=1", NULL), ==, 200);
    CHECK_OK(qg_client_builder_set_scope(sb, "api://no-default-suffix"));
    qg_client *badscope = NULL;
    CHECK_OK(qg_client_builder_build(sb, &badscope));
    CHECK_RC(send_rc(badscope, "GET", "/api/machines?$top=1"), QG_ERR_AUTH);
    last_error_text(err, sizeof err);
    CHECK_MSG(contains(err, "invalid_scope"), "\"%s\"", err);
    qg_client_free(scoped);
    qg_client_free(badscope);

    /* A v1 resource goes to the v1 token endpoint. */
    CHECK_U64(sim_log_count(s, "/oauth2/token\""), ==, 0);
    CHECK_OK(qg_client_builder_set_resource(sb, "https://api.securitycenter.microsoft.com"));
    qg_client *v1 = build(sb);
    CHECK_U64(send_simple(v1, "GET", "/api/machines?$top=1", NULL), ==, 200);
    CHECK_U64(sim_log_count(s, "/oauth2/token\""), ==, 1);
    qg_client_free(v1);

    /* A fixed access token is sent as is: no token request, and the simulator's 401
     * comes back as the answer (a fixed token cannot be refreshed). */
    qg_client_builder *tb = sim_builder(NULL);
    CHECK_OK(qg_client_builder_set_base_url(tb, url));
    CHECK_OK(qg_client_builder_set_access_token(tb, "not-a-token-of-the-simulator"));
    qg_client *fixed = build(tb);
    long tokens = sim_stat(s, "token_requests");
    CHECK_U64(send_simple(fixed, "GET", "/api/machines?$top=1", NULL), ==, 401);
    CHECK_U64(sim_stat(s, "token_requests"), ==, tokens);
    qg_client_free(fixed);

    /* A proxy is used: one on a closed port fails the call without reaching the
     * simulator; NULL goes back to the environment, and the call works again. */
    qg_client_builder *pb = sim_builder(s);
    CHECK_OK(qg_client_builder_set_max_attempts(pb, 1));
    CHECK_OK(qg_client_builder_set_proxy(pb, "http://127.0.0.1:9"));
    qg_client *proxied = NULL;
    CHECK_OK(qg_client_builder_build(pb, &proxied));
    long requests = sim_stat(s, "requests");
    qg_result rc = send_rc(proxied, "GET", "/api/machines?$top=1");
    CHECK_MSG(rc == QG_ERR_AUTH || rc == QG_ERR_TRANSPORT, "through a dead proxy: %s", qg_result_str(rc));
    CHECK_U64(sim_stat(s, "requests"), ==, requests);
    CHECK_OK(qg_client_builder_set_proxy(pb, NULL));
    qg_client *direct = build(pb);
    CHECK_U64(send_simple(direct, "GET", "/api/machines?$top=1", NULL), ==, 200);
    qg_client_free(proxied);
    qg_client_free(direct);

    qg_client_builder_free(b);
    qg_client_free(c1);
    qg_client_free(c2);
    qg_client_free(c3);
    qg_sim_free(s);
}

/* The bucket key of a client's only bucket, from its statistics; 0 on success. */
static int only_bucket_key(qg_client *c, char *buf, size_t len)
{
    char *st = client_stats(c);
    const char *p = st ? strstr(st, "\"buckets\":{\"") : NULL;
    int rc = -1;
    if (p != NULL) {
        p += strlen("\"buckets\":{\"");
        const char *end = strchr(p, '"');
        if (end != NULL && (size_t)(end - p) < len) {
            memcpy(buf, p, (size_t)(end - p));
            buf[end - p] = '\0';
            rc = 0;
        }
    }
    qg_string_free(st);
    return rc;
}

/* Two clients and direct limiter calls share one qg_limiter. */
static void test_shared_limiter(void)
{
    qg_sim *s = start_sim(sim_config(5));
    qg_limiter_builder *lb = NULL;
    qg_limiter *l = NULL;
    CHECK_OK(qg_limiter_builder_new(&lb));
    CHECK_OK(qg_limiter_builder_add_rate(lb, 3, 10000));
    CHECK_OK(qg_limiter_builder_build(lb, &l));
    qg_limiter_builder_free(lb);

    qg_client_builder *b = sim_builder(s);
    CHECK_OK(qg_client_builder_add_default_rate(b, 3, 10000));
    CHECK_OK(qg_client_builder_set_max_quota_wait_ms(b, 300));
    CHECK_OK(qg_client_builder_set_limiter(b, l));
    qg_client *a = NULL, *c = NULL;
    CHECK_OK(qg_client_builder_build(b, &a));
    CHECK_OK(qg_client_builder_build(b, &c));
    qg_client_builder_free(b);

    /* A own client without the shared limiter, for contrast. */
    qg_client_builder *ob = sim_builder(s);
    CHECK_OK(qg_client_builder_add_default_rate(ob, 3, 10000));
    CHECK_OK(qg_client_builder_set_max_quota_wait_ms(ob, 300));
    qg_client *own = build(ob);

    CHECK_U64(send_simple(a, "GET", "/api/machines?$top=1", NULL), ==, 200);
    char key[512] = "";
    CHECK(only_bucket_key(a, key, sizeof key) == 0);
    /* A direct call takes the second unit of the same bucket. */
    uint64_t wait = 1;
    CHECK_OK(qg_limiter_try_acquire(l, key, 1, &wait));
    CHECK_U64(wait, ==, 0);
    /* The other client takes the third. */
    CHECK_U64(send_simple(c, "GET", "/api/machines?$top=1", NULL), ==, 200);
    /* The quota is used up for both clients and for direct calls. */
    double t0 = now_ms();
    CHECK_RC(send_rc(a, "GET", "/api/machines?$top=1"), QG_ERR_THROTTLED);
    CHECK_RC(send_rc(c, "GET", "/api/machines?$top=1"), QG_ERR_THROTTLED);
    CHECK_DBL(now_ms() - t0, <, 3000);
    CHECK_RC(qg_limiter_try_acquire(l, key, 1, &wait), QG_ERR_WOULD_BLOCK);
    CHECK_U64(wait, >, 5000);
    /* Closing a client leaves the shared limiter open. */
    CHECK_OK(qg_client_close(a));
    CHECK_RC(send_rc(a, "GET", "/api/machines?$top=1"), QG_ERR_CLOSED);
    CHECK_OK(qg_limiter_try_acquire(l, "another key", 1, NULL));
    /* The clients keep the limiter alive after its handle is freed. */
    qg_limiter_free(l);
    CHECK_RC(send_rc(c, "GET", "/api/machines?$top=1"), QG_ERR_THROTTLED);
    /* A client with a limiter of its own still has its quota. */
    CHECK_U64(send_simple(own, "GET", "/api/machines?$top=1", NULL), ==, 200);
    CHECK_U64(sim_stat(s, "throttled"), ==, 0);

    qg_client_free(a);
    qg_client_free(c);
    qg_client_free(own);
    qg_sim_free(s);
}

/* qg_request_*: arguments, query encoding, headers, bodies, targets. */
static void test_requests(void)
{
    qg_request *r = SENTINEL;
    char err[512], buf[256];

    /* Arguments. */
    CHECK_RC(qg_request_new(NULL, "/api/machines", &r), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_request_new("GET", NULL, &r), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_request_new("GET", "/api/machines", NULL), QG_ERR_NULL_ARGUMENT);
    CHECK(r == SENTINEL);
    const char *bad_methods[] = {"", "G T", "GET\r\n", "GET/1", "\xff"};
    for (size_t i = 0; i < ARRAY_LEN(bad_methods); i++) {
        CHECK_RC(qg_request_new(bad_methods[i], "/api/machines", &r), QG_ERR_INVALID_ARGUMENT);
    }
    CHECK(r == SENTINEL);
    CHECK_RC(qg_request_new("GET", "/api/\xc3", &r), QG_ERR_INVALID_ARGUMENT);
    CHECK(r == SENTINEL);
    CHECK_OK(qg_request_new("get", "/api/machines", &r));
    CHECK(r != NULL && r != SENTINEL);

    CHECK_RC(qg_request_add_query(NULL, "a", "b"), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_request_add_query(r, NULL, "b"), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_request_add_query(r, "a", NULL), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_request_add_query(r, "\xff", "b"), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_request_add_query(r, "a", "\xff"), QG_ERR_INVALID_ARGUMENT);

    CHECK_RC(qg_request_set_header(NULL, "a", "b"), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_request_set_header(r, NULL, "b"), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_request_set_header(r, "a", NULL), QG_ERR_NULL_ARGUMENT);
    const char *bad_names[] = {"", "Bad Name", "a:b", "tab\there", "new\nline", "del\x7f", "caf\xc3\xa9", "\xff"};
    for (size_t i = 0; i < ARRAY_LEN(bad_names); i++) {
        CHECK_RC(qg_request_set_header(r, bad_names[i], "v"), QG_ERR_INVALID_ARGUMENT);
        last_error_text(err, sizeof err);
        CHECK_MSG(contains(err, "header name") || contains(err, "UTF-8"), "name %zu: \"%s\"", i, err);
    }
    const char *bad_values[] = {"a\r\nX-Injected: 1", "a\nb", "a\rb", "\xff"};
    for (size_t i = 0; i < ARRAY_LEN(bad_values); i++) {
        CHECK_RC(qg_request_set_header(r, "X-Test", bad_values[i]), QG_ERR_INVALID_ARGUMENT);
        last_error_text(err, sizeof err);
        CHECK_MSG(contains(err, "control character") || contains(err, "UTF-8"), "value %zu: \"%s\"", i, err);
    }
    CHECK_OK(qg_request_set_header(r, "X-Empty", ""));

    CHECK_RC(qg_request_set_body(NULL, NULL, 0, NULL), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_request_set_body(r, NULL, 5, NULL), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_request_set_body(r, (const uint8_t *)"{}", 2, "\xff"), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_request_cancel(NULL), QG_ERR_NULL_ARGUMENT);
    qg_request_free(r);
    qg_request_free(NULL);

    /* Query encoding, seen in the paths the simulator received. */
    qg_sim *s = start_sim(sim_config(9));
    qg_client *c = sim_client(s);
    char url[256];
    sim_text(s, QG_SIM_URL, url, sizeof url);
    r = new_request("GET", "/api/machines");
    CHECK_OK(qg_request_add_query(r, "$top", "2"));
    CHECK_OK(qg_request_add_query(r, "$filter", "healthStatus eq 'Active'"));
    CHECK_OK(qg_request_add_query(r, "x y", "a&b=c+d/\xc3\xa9~-._"));
    qg_response *resp = send_request(c, r, NULL);
    CHECK(resp != NULL && status_of(resp) == 200);
    if (resp != NULL) {
        char *body = body_of(resp);
        CHECK_MSG(count_of(body, "\"computerDnsName\"") == 2, "$top=2 gave: %.300s", body);
        free(body);
    }
    qg_response_free(resp);
    char *log = sim_log(s);
    const char *want = "\"path\":\"/api/machines?$top=2&$filter=healthStatus%20eq%20%27Active%27"
                       "&x%20y=a%26b%3Dc%2Bd%2F%C3%A9~-._\"";
    CHECK_MSG(log != NULL && contains(log, want), "want %s in %s", want, log ? log : "(null)");
    qg_string_free(log);
    qg_request_free(r);

    /* A path with its own query gets the added parameters after '&'. */
    r = new_request("GET", "/api/machines?$top=1");
    CHECK_OK(qg_request_add_query(r, "$skip", "3"));
    CHECK_U64(status_of(resp = send_request(c, r, NULL)), ==, 200);
    qg_response_free(resp);
    CHECK_U64(sim_log_count(s, "\"path\":\"/api/machines?$top=1&$skip=3\""), ==, 1);
    qg_request_free(r);

    /* Headers: a later value replaces an earlier one of the same name (in any case);
     * the simulator echoes client-request-id. */
    r = new_request("GET", "/api/machines?$top=1");
    CHECK_OK(qg_request_set_header(r, "client-request-id", "first"));
    CHECK_OK(qg_request_set_header(r, "Client-Request-ID", "c-abi-test-42"));
    CHECK_OK(qg_request_set_header(r, "Accept", "application/json"));
    resp = send_request(c, r, NULL);
    CHECK(resp != NULL);
    if (resp != NULL) {
        header_of(resp, "client-request-id", buf, sizeof buf);
        CHECK_MSG(strcmp(buf, "c-abi-test-42") == 0, "client-request-id came back as \"%s\"", buf);
    }
    qg_response_free(resp);
    qg_request_free(r);

    /* "The client sets Authorization itself" (qg_request_set_header): a caller's
     * Authorization header is refused, or gives way to the client's token; it must not
     * reach the server beside the client's and make the call fail with 401. */
    r = new_request("GET", "/api/machines?$top=1");
    qg_result set = qg_request_set_header(r, "Authorization", "Bearer not-the-clients-token");
    CHECK_MSG(set == QG_OK || set == QG_ERR_INVALID_ARGUMENT, "%s", qg_result_str(set));
    long tokens_before = sim_stat(s, "token_requests");
    resp = send_request(c, r, NULL);
    CHECK(resp != NULL);
    if (resp != NULL) {
        CHECK_MSG(status_of(resp) == 200, "the server saw the caller's Authorization: status %u",
                  (unsigned)status_of(resp));
    }
    CHECK_MSG(sim_stat(s, "token_requests") == tokens_before, "the client's valid token was not refreshed");
    qg_response_free(resp);
    qg_request_free(r);

    /* An absolute URL on the API host is used as given; one elsewhere is refused before
     * anything is sent, and so is a relative path without '/'. */
    char target[400];
    snprintf(target, sizeof target, "%s/api/machines?$top=1&$skip=4", url);
    r = new_request("GET", target);
    CHECK_U64(status_of(resp = send_request(c, r, NULL)), ==, 200);
    qg_response_free(resp);
    qg_request_free(r);
    CHECK_U64(sim_log_count(s, "\"path\":\"/api/machines?$top=1&$skip=4\""), ==, 1);
    long requests = sim_stat(s, "requests");
    resp = SENTINEL;
    r = new_request("GET", "http://example.invalid/api/machines");
    CHECK_RC(qg_client_send(c, r, &resp), QG_ERR_INVALID_ARGUMENT);
    CHECK(resp == SENTINEL);
    last_error_text(err, sizeof err);
    CHECK_MSG(contains(err, "not on the API host"), "\"%s\"", err);
    qg_request_free(r);
    snprintf(target, sizeof target, "%s.evil.example/api/machines", url);
    r = new_request("GET", target);
    CHECK_RC(qg_client_send(c, r, &resp), QG_ERR_INVALID_ARGUMENT);
    qg_request_free(r);
    r = new_request("GET", "api/machines");
    CHECK_RC(qg_client_send(c, r, &resp), QG_ERR_INVALID_ARGUMENT);
    qg_request_free(r);
    CHECK_U64(sim_stat(s, "requests"), ==, requests);

    /* qg_client_send's own NULLs. */
    r = new_request("GET", "/api/machines?$top=1");
    CHECK_RC(qg_client_send(NULL, r, &resp), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_send(c, NULL, &resp), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_send(c, r, NULL), QG_ERR_NULL_ARGUMENT);
    CHECK(resp == SENTINEL);
    qg_request_free(r);

    qg_client_free(c);
    qg_sim_free(s);
}

/* GET and POST, and every qg_response_* getter, on answers of 200, 201, 400 and 404. */
static void test_send_and_responses(void)
{
    qg_sim *s = start_sim(sim_config(9));
    qg_client *c = sim_client(s);
    char id[64], path[160], buf[512];
    machine_id(c, 2, id, sizeof id);
    CHECK_U64(strlen(id), ==, 40);

    /* A GET of a list. */
    qg_request *r = new_request("GET", "/api/machines?$top=3");
    qg_response *resp = send_request(c, r, NULL);
    CHECK(resp != NULL);
    if (resp != NULL) {
        CHECK_U64(status_of(resp), ==, 200);
        char *body = body_of(resp);
        CHECK_MSG(contains(body, "\"value\":[") && contains(body, "\"@odata.nextLink\":") &&
                      count_of(body, "\"computerDnsName\"") == 3,
                  "%.300s", body);
        free(body);

        /* Headers: case-insensitive, the same bytes whatever the case asked for. */
        const uint8_t *v1 = NULL, *v2 = NULL, *v3 = NULL;
        size_t n1 = 0, n2 = 0, n3 = 0;
        CHECK_OK(qg_response_header(resp, "content-type", &v1, &n1));
        CHECK_OK(qg_response_header(resp, "Content-Type", &v2, &n2));
        CHECK_OK(qg_response_header(resp, "CONTENT-TYPE", &v3, &n3));
        CHECK(v1 != NULL && v1 == v2 && v2 == v3 && n1 == n2 && n2 == n3);
        CHECK(v1 != NULL && n1 >= 16 && memcmp(v1, "application/json", 16) == 0);

        /* Missing header: QG_ERR_NOT_FOUND, the name in the message, outs untouched. */
        const uint8_t *nv = SENTINEL;
        size_t nn = 777;
        CHECK_RC(qg_response_header(resp, "x-not-there", &nv, &nn), QG_ERR_NOT_FOUND);
        CHECK(nv == SENTINEL && nn == 777);
        last_error_text(buf, sizeof buf);
        CHECK_MSG(contains(buf, "x-not-there"), "\"%s\"", buf);

        /* Every header by index, names in lower case, the request id among them. */
        size_t count = 0;
        CHECK_OK(qg_response_header_count(resp, &count));
        CHECK_U64(count, >=, 4);
        int lower = 1, seen_request_id = 0;
        for (size_t i = 0; i < count; i++) {
            const uint8_t *name = NULL, *value = NULL;
            size_t name_len = 0, value_len = 0;
            CHECK_OK(qg_response_header_at(resp, i, &name, &name_len, &value, &value_len));
            if (name == NULL || name_len == 0) {
                lower = 0;
                continue;
            }
            for (size_t k = 0; k < name_len; k++) {
                if (name[k] >= 'A' && name[k] <= 'Z') {
                    lower = 0;
                }
            }
            if (name_len == 10 && memcmp(name, "request-id", 10) == 0) {
                seen_request_id = value_len > 0;
                /* The same value by name. */
                const uint8_t *byname = NULL;
                size_t byname_len = 0;
                CHECK_OK(qg_response_header(resp, "Request-Id", &byname, &byname_len));
                CHECK(byname_len == value_len && byname != NULL && memcmp(byname, value, value_len) == 0);
            }
        }
        CHECK_MSG(lower, "header names are in lower case");
        CHECK_MSG(seen_request_id, "a request-id header is among the %zu", count);
        const uint8_t *hn = SENTINEL, *hv = SENTINEL;
        size_t hnl = 777, hvl = 777;
        CHECK_RC(qg_response_header_at(resp, count, &hn, &hnl, &hv, &hvl), QG_ERR_NOT_FOUND);
        CHECK_RC(qg_response_header_at(resp, SIZE_MAX, &hn, &hnl, &hv, &hvl), QG_ERR_NOT_FOUND);
        CHECK(hn == SENTINEL && hv == SENTINEL && hnl == 777 && hvl == 777);

        /* Attempts and the details of a success. */
        uint32_t attempts = 0;
        CHECK_OK(qg_response_attempts(resp, &attempts));
        CHECK_U64(attempts, ==, 1);
        CHECK(strcmp(response_detail(resp, QG_DETAIL_HTTP_STATUS, buf, sizeof buf), "200") == 0);
        CHECK(strcmp(response_detail(resp, QG_DETAIL_SERVER_CODE, buf, sizeof buf), "") == 0);
        CHECK(strcmp(response_detail(resp, QG_DETAIL_RETRY_AFTER_MS, buf, sizeof buf), "") == 0);
        CHECK(strcmp(response_detail(resp, QG_DETAIL_ATTEMPTS, buf, sizeof buf), "1") == 0);

        /* NULLs and unknown fields. */
        uint16_t st = 0;
        const uint8_t *d = NULL;
        size_t dl = 0, written = 0;
        CHECK_RC(qg_response_status(NULL, &st), QG_ERR_NULL_ARGUMENT);
        CHECK_RC(qg_response_status(resp, NULL), QG_ERR_NULL_ARGUMENT);
        CHECK_RC(qg_response_body(NULL, &d, &dl), QG_ERR_NULL_ARGUMENT);
        CHECK_RC(qg_response_body(resp, NULL, &dl), QG_ERR_NULL_ARGUMENT);
        CHECK_RC(qg_response_body(resp, &d, NULL), QG_ERR_NULL_ARGUMENT);
        CHECK_RC(qg_response_header(NULL, "a", &d, &dl), QG_ERR_NULL_ARGUMENT);
        CHECK_RC(qg_response_header(resp, NULL, &d, &dl), QG_ERR_NULL_ARGUMENT);
        CHECK_RC(qg_response_header(resp, "a", NULL, &dl), QG_ERR_NULL_ARGUMENT);
        CHECK_RC(qg_response_header(resp, "a", &d, NULL), QG_ERR_NULL_ARGUMENT);
        CHECK_RC(qg_response_header(resp, "\xff", &d, &dl), QG_ERR_INVALID_ARGUMENT);
        CHECK_RC(qg_response_header_count(NULL, &written), QG_ERR_NULL_ARGUMENT);
        CHECK_RC(qg_response_header_count(resp, NULL), QG_ERR_NULL_ARGUMENT);
        CHECK_RC(qg_response_header_at(NULL, 0, &hn, &hnl, &hv, &hvl), QG_ERR_NULL_ARGUMENT);
        CHECK_RC(qg_response_header_at(resp, 0, NULL, &hnl, &hv, &hvl), QG_ERR_NULL_ARGUMENT);
        CHECK_RC(qg_response_header_at(resp, 0, &hn, NULL, &hv, &hvl), QG_ERR_NULL_ARGUMENT);
        CHECK_RC(qg_response_header_at(resp, 0, &hn, &hnl, NULL, &hvl), QG_ERR_NULL_ARGUMENT);
        CHECK_RC(qg_response_header_at(resp, 0, &hn, &hnl, &hv, NULL), QG_ERR_NULL_ARGUMENT);
        CHECK_RC(qg_response_attempts(NULL, &attempts), QG_ERR_NULL_ARGUMENT);
        CHECK_RC(qg_response_attempts(resp, NULL), QG_ERR_NULL_ARGUMENT);
        CHECK_RC(qg_response_error_detail(NULL, 0, buf, sizeof buf, &written), QG_ERR_NULL_ARGUMENT);
        CHECK_RC(qg_response_error_detail(resp, 0, buf, sizeof buf, NULL), QG_ERR_NULL_ARGUMENT);
        CHECK_RC(qg_response_error_detail(resp, QG_DETAIL_SUMMARY + 1, buf, sizeof buf, &written),
                 QG_ERR_INVALID_ARGUMENT);
        CHECK_RC(qg_response_error_detail(resp, 0xFFFFFFFFu, buf, sizeof buf, &written), QG_ERR_INVALID_ARGUMENT);
        written = 0;
        CHECK_RC(qg_response_error_detail(resp, QG_DETAIL_HTTP_STATUS, NULL, 0, &written), QG_ERR_BUFFER_TOO_SMALL);
        CHECK_U64(written, ==, 3);
        /* A too-small buffer never replaces the thread's last error. */
        char before[512], after[512];
        last_error_text(before, sizeof before);
        CHECK_RC(qg_response_error_detail(resp, QG_DETAIL_HTTP_STATUS, buf, 3, &written), QG_ERR_BUFFER_TOO_SMALL);
        last_error_text(after, sizeof after);
        CHECK_MSG(strcmp(before, after) == 0, "\"%s\" became \"%s\"", before, after);
    }
    qg_response_free(resp);

    /* The same request object can be sent again. */
    resp = send_request(c, r, NULL);
    CHECK(resp != NULL && status_of(resp) == 200);
    qg_response_free(resp);
    qg_request_free(r);

    /* One machine. */
    snprintf(path, sizeof path, "/api/machines/%s", id);
    r = new_request("GET", path);
    resp = send_request(c, r, NULL);
    CHECK(resp != NULL && status_of(resp) == 200);
    if (resp != NULL) {
        char *body = body_of(resp);
        char got[64];
        CHECK_MSG(json_str(body, "id", got, sizeof got) == 0 && strcmp(got, id) == 0, "%.300s", body);
        free(body);
    }
    qg_response_free(resp);
    qg_request_free(r);

    /* A 404 is an answer (QG_OK) with the server's details. */
    r = new_request("GET", "/api/machines/0000000000000000000000000000000000c0ffee");
    resp = send_request(c, r, NULL);
    CHECK(resp != NULL);
    if (resp != NULL) {
        char target[256], request_id[256], header[256];
        CHECK_U64(status_of(resp), ==, 404);
        CHECK(strcmp(response_detail(resp, QG_DETAIL_HTTP_STATUS, buf, sizeof buf), "404") == 0);
        response_detail(resp, QG_DETAIL_SERVER_CODE, buf, sizeof buf);
        CHECK_MSG(strcmp(buf, "ResourceNotFound") == 0, "code \"%s\"", buf);
        response_detail(resp, QG_DETAIL_SERVER_MESSAGE, buf, sizeof buf);
        CHECK_MSG(contains(buf, "was not found"), "message \"%s\"", buf);
        response_detail(resp, QG_DETAIL_TARGET, target, sizeof target);
        response_detail(resp, QG_DETAIL_REQUEST_ID, request_id, sizeof request_id);
        header_of(resp, "request-id", header, sizeof header);
        CHECK_MSG(target[0] != '\0' && request_id[0] != '\0', "target \"%s\", request id \"%s\"", target,
                  request_id);
        CHECK_MSG(strcmp(request_id, header) == 0, "request id \"%s\" is the header's \"%s\"", request_id, header);
        CHECK(strcmp(response_detail(resp, QG_DETAIL_RETRY_AFTER_MS, buf, sizeof buf), "") == 0);
        CHECK(strcmp(response_detail(resp, QG_DETAIL_ATTEMPTS, buf, sizeof buf), "1") == 0);
        response_detail(resp, QG_DETAIL_SUMMARY, buf, sizeof buf);
        CHECK_MSG(contains(buf, "404") && contains(buf, "ResourceNotFound") && contains(buf, target),
                  "summary \"%s\"", buf);
        char *body = body_of(resp);
        CHECK_MSG(contains(body, "\"ResourceNotFound\""), "%.300s", body);
        free(body);
    }
    qg_response_free(resp);
    qg_request_free(r);

    /* A path the API does not have: 404 NotFound. */
    r = new_request("GET", "/api/nothing-here");
    resp = send_request(c, r, NULL);
    CHECK(resp != NULL && status_of(resp) == 404);
    if (resp != NULL) {
        response_detail(resp, QG_DETAIL_SERVER_CODE, buf, sizeof buf);
        CHECK_MSG(strcmp(buf, "NotFound") == 0, "code \"%s\"", buf);
    }
    qg_response_free(resp);
    qg_request_free(r);

    /* POST isolate with a body: 201, and the body reached the server. */
    snprintf(path, sizeof path, "/api/machines/%s/isolate", id);
    r = new_request("POST", path);
    const char *isolate = "{\"Comment\":\"isolated from C\",\"IsolationType\":\"Selective\"}";
    CHECK_OK(qg_request_set_body(r, (const uint8_t *)isolate, strlen(isolate), NULL));
    resp = send_request(c, r, NULL);
    CHECK(resp != NULL);
    if (resp != NULL) {
        CHECK_U64(status_of(resp), ==, 201);
        char *body = body_of(resp);
        CHECK_MSG(contains(body, "\"isolationType\":\"Selective\"") &&
                      contains(body, "\"requestorComment\":\"isolated from C\"") && contains(body, id),
                  "%.400s", body);
        free(body);
    }
    qg_response_free(resp);
    /* Only the first `len` bytes are the body, with a content type of our own. */
    const char *padded = "{\"Comment\":\"cut\"}TRAILING GARBAGE";
    CHECK_OK(qg_request_set_body(r, (const uint8_t *)padded, strlen("{\"Comment\":\"cut\"}"), "application/json; charset=utf-8"));
    CHECK_U64(status_of(resp = send_request(c, r, NULL)), ==, 201);
    qg_response_free(resp);
    /* An empty body is sent as empty: the server refuses it with 400. */
    CHECK_OK(qg_request_set_body(r, NULL, 0, NULL));
    resp = send_request(c, r, NULL);
    CHECK(resp != NULL && status_of(resp) == 400);
    if (resp != NULL) {
        response_detail(resp, QG_DETAIL_SERVER_CODE, buf, sizeof buf);
        CHECK_MSG(strcmp(buf, "InvalidRequestBody") == 0, "code \"%s\"", buf);
    }
    qg_response_free(resp);
    qg_request_free(r);
    CHECK_U64(sim_log_count(s, "/isolate\""), ==, 3);

    /* POST tags: the tag is in the machine that comes back. */
    snprintf(path, sizeof path, "/api/machines/%s/tags", id);
    CHECK_U64(send_simple(c, "POST", path, "{\"Value\":\"c-abi-tag\",\"Action\":\"Add\"}"), ==, 200);
    snprintf(path, sizeof path, "/api/machines/%s", id);
    r = new_request("GET", path);
    resp = send_request(c, r, NULL);
    if (resp != NULL) {
        char *body = body_of(resp);
        CHECK_MSG(contains(body, "\"c-abi-tag\""), "%.400s", body);
        free(body);
    }
    qg_response_free(resp);
    qg_request_free(r);

    /* An answer with an empty body lends a non-NULL pointer and a length of 0. */
    r = new_request("POST", "/api/alerts/batchUpdate");
    const char *batch = "{\"alertIds\":[\"da637\"],\"status\":\"Resolved\"}";
    CHECK_OK(qg_request_set_body(r, (const uint8_t *)batch, strlen(batch), NULL));
    resp = send_request(c, r, NULL);
    CHECK(resp != NULL && status_of(resp) == 200);
    if (resp != NULL) {
        const uint8_t *d = NULL;
        size_t dl = 99;
        CHECK_OK(qg_response_body(resp, &d, &dl));
        CHECK(d != NULL && dl == 0);
    }
    qg_response_free(resp);
    qg_request_free(r);
    qg_response_free(NULL);

    qg_client_free(c);
    qg_sim_free(s);
}

struct hammer {
    qg_client *client;
    int calls;
    int ok;
    qg_result rc;
    unsigned status;
};

static void *hammer_main(void *arg)
{
    struct hammer *h = arg;
    qg_request *r = NULL;
    if (qg_request_new("GET", "/api/machines?$top=1", &r) != QG_OK) {
        h->rc = QG_ERR_PANIC;
        return NULL;
    }
    for (int i = 0; i < h->calls; i++) {
        qg_response *resp = NULL;
        uint16_t status = 0;
        h->rc = qg_client_send(h->client, r, &resp);
        if (h->rc != QG_OK) {
            break;
        }
        (void)qg_response_status(resp, &status);
        qg_response_free(resp);
        h->status = status;
        if (status != 200) {
            break;
        }
        h->ok++;
    }
    qg_request_free(r);
    return NULL;
}

/* Runs `threads` threads of `calls` GETs each on one client; returns the calls that got a 200. */
static int hammer(qg_client *c, int threads, int calls)
{
    struct hammer h[16];
    pthread_t t[16];
    int ok = 0;
    if (threads > 16) {
        threads = 16;
    }
    for (int i = 0; i < threads; i++) {
        h[i] = (struct hammer){c, calls, 0, QG_OK, 0};
        CHECK(pthread_create(&t[i], NULL, hammer_main, &h[i]) == 0);
    }
    for (int i = 0; i < threads; i++) {
        CHECK(pthread_join(t[i], NULL) == 0);
        CHECK_MSG(h[i].rc == QG_OK && h[i].ok == calls, "thread %d: %d of %d calls, %s, status %u", i, h[i].ok,
                  calls, qg_result_str(h[i].rc), h[i].status);
        ok += h[i].ok;
    }
    return ok;
}

/* The peak of the first window of `class` in the simulator's figures; -1 if absent. */
static long sim_peak(qg_sim *s, const char *class)
{
    char *st = sim_stats(s);
    char pattern[64];
    long peak = -1;
    snprintf(pattern, sizeof pattern, "\"%s\":[", class);
    const char *p = st ? strstr(st, pattern) : NULL;
    if (p != NULL) {
        peak = json_int(p, "peak");
    }
    qg_string_free(st);
    return peak;
}

/* A client configured like the server keeps the quota from 8 threads: no 429 at all. */
static void test_quota_kept_by_many_threads(void)
{
    qg_sim_config *cfg = sim_config(5);
    CHECK_OK(qg_sim_config_set_limit(cfg, NULL, 10, 0.5));
    qg_sim *s = start_sim(cfg);
    qg_client_builder *b = sim_builder(s);
    /* 10 per 500 ms like the server, with a margin for the time between admission here
     * and the server's count (thread scheduling; much longer under valgrind). */
    const uint64_t margin_ms = UNDER_VALGRIND() ? 2000 : 250;
    CHECK_OK(qg_client_builder_add_default_rate(b, 10, 500));
    CHECK_OK(qg_client_builder_set_margin_ms(b, margin_ms));
    qg_client *c = build(b);

    /* One call first: the token, and code paths that valgrind translates once, would
     * otherwise delay the first calls of the burst far more than the later ones. */
    CHECK_U64(send_simple(c, "GET", "/api/machines?$top=1", NULL), ==, 200);
    double t0 = now_ms();
    int ok = hammer(c, 8, 4);
    double took = now_ms() - t0;
    CHECK_U64(ok, ==, 32);
    char *st = sim_stats(s);
    CHECK_MSG(json_int(st, "throttled") == 0, "no 429: %s", st ? st : "(null)");
    CHECK_MSG(json_int(st, "requests") == 34 && json_int(st, "token_requests") == 1 && contains(st, "\"200\":34"),
              "33 calls and one token request, all answered 200: %s", st ? st : "(null)");
    qg_string_free(st);
    long peak = sim_peak(s, "default");
    CHECK_MSG(peak >= 1 && peak <= 10, "the server saw at most 10 calls in any 500 ms: %ld", peak);
    /* 33 calls at 10 per 500 ms need more than three full windows after the first call. */
    CHECK_DBL(took, >=, 1000);
    CHECK_DBL(took, <, (UNDER_VALGRIND() ? 20000.0 : 10000.0));

    char *cs = client_stats(c);
    CHECK_MSG(json_int(cs, "transport_failures") == 0 && json_int(cs, "retries") == 0,
              "every exchange was answered at the first attempt: %s", cs ? cs : "(null)");
    CHECK_MSG(json_int(cs, "requests") == 33 && json_int(cs, "throttled") == 0 && json_int(cs, "token_requests") == 1,
              "33 requests, no 429, one token: %s", cs ? cs : "(null)");
    CHECK_MSG(json_int(cs, "admitted_calls") == 33 && json_int(cs, "waited_calls") > 0,
              "33 admitted, some after a wait: %s", cs ? cs : "(null)");
    CHECK_MSG(json_int(cs, "calls") == 10 && json_int(cs, "window_ms") == (long)(500 + margin_ms),
              "the window is widened by the margin: %s", cs ? cs : "(null)");
    qg_string_free(cs);

    qg_client_free(c);
    qg_sim_free(s);
}

/* A server stricter than the client costs few 429s: the client learns its limit. */
static void test_stricter_server_costs_few_429s(void)
{
    qg_sim_config *cfg = sim_config(5);
    CHECK_OK(qg_sim_config_set_limit(cfg, NULL, 5, 0.5));
    CHECK_OK(qg_sim_config_set_retry_after_style(cfg, QG_SIM_RETRY_AFTER_BODY_ONLY));
    qg_sim *s = start_sim(cfg);
    qg_client_builder *b = sim_builder(s);
    CHECK_OK(qg_client_builder_add_default_rate(b, 50, 500));
    qg_client *c = build(b);

    int ok = 0;
    for (int i = 0; i < 12; i++) {
        ok += send_simple(c, "GET", "/api/machines?$top=1", NULL) == 200;
    }
    CHECK_U64(ok, ==, 12);
    long throttled = sim_stat(s, "throttled");
    CHECK_MSG(throttled >= 1 && throttled <= 2, "the server answered %ld 429s", throttled);
    char *cs = client_stats(c);
    CHECK_MSG(json_int(cs, "learned_limits") >= 1 && json_int(cs, "throttled") == throttled &&
                  contains(cs, "\"calls\":5"),
              "client stats: %s", cs ? cs : "(null)");
    qg_string_free(cs);
    long peak = sim_peak(s, "default");
    CHECK_MSG(peak >= 1 && peak <= 5, "the server's limit held: peak %ld", peak);

    qg_client_free(c);
    qg_sim_free(s);
}

/* When the attempts run out on a 429, the call fails with QG_ERR_THROTTLED and the
 * server's details, the wait it asked for among them. */
static void test_throttled_details(void)
{
    qg_sim_config *cfg = sim_config(3);
    CHECK_OK(qg_sim_config_set_limit(cfg, NULL, 1, 10.0));
    qg_sim *s = start_sim(cfg);
    qg_client_builder *b = sim_builder(s);
    CHECK_OK(qg_client_builder_set_max_attempts(b, 1));
    qg_client *c = build(b);
    char buf[512];

    CHECK_U64(send_simple(c, "GET", "/api/machines?$top=1", NULL), ==, 200);
    double t0 = now_ms();
    CHECK_RC(send_rc(c, "GET", "/api/machines?$top=1"), QG_ERR_THROTTLED);
    CHECK_DBL(now_ms() - t0, <, 3000);
    CHECK_MSG(strcmp(last_detail(QG_DETAIL_HTTP_STATUS, buf, sizeof buf), "429") == 0, "status \"%s\"", buf);
    CHECK_MSG(strcmp(last_detail(QG_DETAIL_SERVER_CODE, buf, sizeof buf), "TooManyRequests") == 0, "code \"%s\"",
              buf);
    last_detail(QG_DETAIL_SERVER_MESSAGE, buf, sizeof buf);
    CHECK_MSG(contains(buf, "maximum allowed 1 per"), "message \"%s\"", buf);
    long wait = -1;
    last_detail(QG_DETAIL_RETRY_AFTER_MS, buf, sizeof buf);
    CHECK_MSG(sscanf(buf, "%ld", &wait) == 1 && wait > 5000 && wait <= 10000, "retry after \"%s\" ms", buf);
    CHECK_MSG(strcmp(last_detail(QG_DETAIL_ATTEMPTS, buf, sizeof buf), "1") == 0, "attempts \"%s\"", buf);
    CHECK_MSG(last_detail(QG_DETAIL_REQUEST_ID, buf, sizeof buf)[0] != '\0', "a request id");
    CHECK_U64(sim_stat(s, "throttled"), ==, 1);
    CHECK_U64(client_stat(c, "throttled"), ==, 1);
    CHECK_U64(client_stat(c, "pauses"), ==, 1);

    qg_client_free(c);
    qg_sim_free(s);
}

/* qg_client_pages, qg_pages_next and qg_pages_next_item. */
static void test_paging(void)
{
    qg_sim *s = start_sim(sim_config(23));
    qg_client *c = sim_client(s);
    char buf[256];

    qg_request *first = new_request("GET", "/api/machines");
    CHECK_OK(qg_request_add_query(first, "$top", "5"));
    CHECK_OK(qg_request_add_query(first, "$filter", "healthStatus eq 'Active'"));

    /* NULLs. */
    qg_pages *p = SENTINEL;
    CHECK_RC(qg_client_pages(NULL, first, &p), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_pages(c, NULL, &p), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_pages(c, first, NULL), QG_ERR_NULL_ARGUMENT);
    CHECK(p == SENTINEL);

    /* Pages: 23 machines, 5 a page, make 5 pages; then QG_DONE, and again. */
    p = NULL;
    CHECK_OK(qg_client_pages(c, first, &p));
    CHECK_U64(sim_stat(s, "requests"), ==, 0); /* nothing sent before the first next */
    int pages = 0, items_in_pages = 0;
    qg_result rc;
    qg_response *resp = NULL;
    while ((rc = qg_pages_next(p, &resp)) == QG_OK && pages < 50) {
        pages++;
        CHECK_U64(status_of(resp), ==, 200);
        char *body = body_of(resp);
        items_in_pages += count_of(body, "\"computerDnsName\"");
        free(body);
        qg_response_free(resp);
        resp = NULL;
    }
    CHECK_RC(rc, QG_DONE);
    CHECK_U64(pages, ==, 5);
    CHECK_U64(items_in_pages, ==, 23);
    CHECK_RC(qg_pages_next(p, &resp), QG_DONE);
    CHECK_RC(qg_pages_next(NULL, &resp), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_pages_next(p, NULL), QG_ERR_NULL_ARGUMENT);
    qg_pages_free(p);
    /* Every page kept the filter exactly as the first request encoded it. */
    CHECK_U64(sim_log_count(s, "$filter=healthStatus%20eq%20%27Active%27"), ==, 5);
    CHECK_U64(sim_log_count(s, "$skip=20"), ==, 1);

    /* Items: all 23, each a JSON object with an "id"; then QG_DONE. */
    p = NULL;
    CHECK_OK(qg_client_pages(c, first, &p));
    int items = 0, with_id = 0;
    char *item = NULL;
    while ((rc = qg_pages_next_item(p, &item)) == QG_OK && items < 1000) {
        items++;
        with_id += item != NULL && item[0] == '{' && contains(item, "\"id\":\"");
        qg_string_free(item);
        item = NULL;
    }
    CHECK_RC(rc, QG_DONE);
    CHECK_U64(items, ==, 23);
    CHECK_U64(with_id, ==, 23);
    CHECK_RC(qg_pages_next_item(p, &item), QG_DONE);
    CHECK_RC(qg_pages_next_item(NULL, &item), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_pages_next_item(p, NULL), QG_ERR_NULL_ARGUMENT);
    qg_pages_free(p);
    qg_request_free(first);
    qg_string_free(NULL);
    qg_pages_free(NULL);

    /* An error status ends paging with QG_ERR_HTTP_STATUS and the server's details. */
    first = new_request("GET", "/api/nothing-here");
    p = NULL;
    CHECK_OK(qg_client_pages(c, first, &p));
    resp = SENTINEL;
    CHECK_RC(qg_pages_next(p, &resp), QG_ERR_HTTP_STATUS);
    CHECK(resp == SENTINEL);
    CHECK_MSG(strcmp(last_detail(QG_DETAIL_HTTP_STATUS, buf, sizeof buf), "404") == 0, "status \"%s\"", buf);
    CHECK_MSG(strcmp(last_detail(QG_DETAIL_SERVER_CODE, buf, sizeof buf), "NotFound") == 0, "code \"%s\"", buf);
    CHECK_MSG(last_detail(QG_DETAIL_REQUEST_ID, buf, sizeof buf)[0] != '\0', "a request id");
    CHECK_MSG(last_detail(QG_DETAIL_TARGET, buf, sizeof buf)[0] != '\0', "a target");
    CHECK_MSG(strcmp(last_detail(QG_DETAIL_ATTEMPTS, buf, sizeof buf), "1") == 0, "attempts \"%s\"", buf);
    last_error_text(buf, sizeof buf);
    CHECK_MSG(contains(buf, "404"), "the message names the status: \"%s\"", buf);
    char summary[512];
    last_detail(QG_DETAIL_SUMMARY, summary, sizeof summary);
    CHECK_MSG(strcmp(summary, buf) == 0, "the summary \"%s\" is the message \"%s\"", summary, buf);
    qg_pages_free(p);
    p = NULL;
    CHECK_OK(qg_client_pages(c, first, &p));
    item = SENTINEL;
    CHECK_RC(qg_pages_next_item(p, &item), QG_ERR_HTTP_STATUS);
    CHECK(item == SENTINEL);
    CHECK_MSG(strcmp(last_detail(QG_DETAIL_HTTP_STATUS, buf, sizeof buf), "404") == 0, "status \"%s\"", buf);
    qg_pages_free(p);
    qg_request_free(first);

    /* Reading a detail never changes the last error; an unknown field is refused. */
    size_t written = 0;
    CHECK_RC(qg_last_error_detail(QG_DETAIL_SUMMARY + 1, buf, sizeof buf, &written), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_last_error_detail(QG_DETAIL_HTTP_STATUS, buf, sizeof buf, NULL), QG_ERR_NULL_ARGUMENT);
    written = 0;
    CHECK_RC(qg_last_error_detail(QG_DETAIL_HTTP_STATUS, NULL, 0, &written), QG_ERR_BUFFER_TOO_SMALL);
    CHECK_U64(written, ==, 3);
    CHECK(strcmp(last_detail(QG_DETAIL_HTTP_STATUS, buf, sizeof buf), "404") == 0);

    /* An answer that is not a list: qg_pages_next_item refuses it. */
    char id[64], path[128];
    machine_id(c, 0, id, sizeof id);
    snprintf(path, sizeof path, "/api/machines/%s", id);
    first = new_request("GET", path);
    p = NULL;
    CHECK_OK(qg_client_pages(c, first, &p));
    CHECK_RC(qg_pages_next_item(p, &item), QG_ERR_INVALID_ARGUMENT);
    last_error_text(buf, sizeof buf);
    CHECK_MSG(contains(buf, "value"), "\"%s\"", buf);
    qg_pages_free(p);
    qg_request_free(first);

    qg_client_free(c);
    qg_sim_free(s);
}

/* A storm of 503s: GETs are retried until they succeed. */
#define GETS_IN_503_STORM 10
static void test_gets_survive_503s(void)
{
    qg_sim_config *cfg = sim_config(5);
    CHECK_OK(qg_sim_config_set_limit(cfg, NULL, 100000, 60.0));
    CHECK_OK(qg_sim_config_set_faults(cfg, 0.3, 0.0, 0));
    qg_sim *s = start_sim(cfg);
    qg_client_builder *b = sim_builder(s);
    CHECK_OK(qg_client_builder_add_default_rate(b, 100000, 60000));
    qg_client *c = build(b);

    /* One thread: the simulator draws its faults in the order of the calls from a fixed
     * seed, so the same calls meet the same 503s on every run. */
    int ok = 0;
    for (int i = 0; i < GETS_IN_503_STORM; i++) {
        ok += send_simple(c, "GET", "/api/machines?$top=1", NULL) == 200;
    }
    CHECK_U64(ok, ==, GETS_IN_503_STORM);
    char *st = sim_stats(s);
    CHECK_MSG(json_int(st, "errors_503") > 0 && contains(st, "\"503\":"), "503s were served: %s",
              st ? st : "(null)");
    qg_string_free(st);
    CHECK_MSG(client_stat(c, "retries") > 0, "the client retried");
    CHECK_U64(client_stat(c, "requests"), ==, GETS_IN_503_STORM + client_stat(c, "retries"));

    qg_client_free(c);
    qg_sim_free(s);
}

/* A POST whose connection is reset after it was processed is reported, never repeated. */
static void test_ambiguous_post_is_not_repeated(void)
{
    /* The machine's id first, from a simulator without faults (ids depend on the index only). */
    char id[64], path[160], buf[512];
    qg_sim *plain = start_sim(sim_config(3));
    qg_client *pc = sim_client(plain);
    machine_id(pc, 1, id, sizeof id);
    qg_client_free(pc);
    qg_sim_free(plain);

    qg_sim_config *cfg = sim_config(3);
    CHECK_OK(qg_sim_config_set_faults(cfg, 0.0, 1.0, 0));
    qg_sim *s = start_sim(cfg);
    qg_client_builder *b = sim_builder(s);
    CHECK_OK(qg_client_builder_set_max_attempts(b, 2));
    qg_client *c = build(b);

    snprintf(path, sizeof path, "/api/machines/%s/isolate", id);
    qg_request *r = new_request("POST", path);
    const char *isolate = "{\"Comment\":\"reset test\",\"IsolationType\":\"Full\"}";
    CHECK_OK(qg_request_set_body(r, (const uint8_t *)isolate, strlen(isolate), NULL));
    qg_response *resp = SENTINEL;
    CHECK_RC(qg_client_send(c, r, &resp), QG_ERR_TRANSPORT);
    CHECK(resp == SENTINEL);
    last_error_text(buf, sizeof buf);
    CHECK_MSG(contains(buf, "not repeated"), "\"%s\"", buf);
    CHECK_MSG(strcmp(last_detail(QG_DETAIL_ATTEMPTS, buf, sizeof buf), "1") == 0, "attempts \"%s\"", buf);
    qg_request_free(r);
    CHECK_U64(sim_log_count(s, "/isolate\""), ==, 1);
    CHECK_U64(sim_stat(s, "resets"), ==, 1);

    /* A GET under the same resets is retried up to the attempts, then fails. */
    double t0 = now_ms();
    CHECK_RC(send_rc(c, "GET", "/api/machines?$top=1"), QG_ERR_TRANSPORT);
    CHECK_DBL(now_ms() - t0, <, 5000);
    CHECK_MSG(strcmp(last_detail(QG_DETAIL_ATTEMPTS, buf, sizeof buf), "2") == 0, "attempts \"%s\"", buf);
    CHECK_U64(sim_log_count(s, "\"path\":\"/api/machines?$top=1\""), ==, 2);

    qg_client_free(c);
    qg_sim_free(s);
}

/* An answer over the body limit fails with QG_ERR_BODY_TOO_LARGE. */
static void test_body_limit(void)
{
    qg_sim *s = start_sim(sim_config(9));
    qg_client_builder *b = sim_builder(s);
    CHECK_OK(qg_client_builder_set_max_body_bytes(b, 100));
    qg_client *small = NULL;
    CHECK_OK(qg_client_builder_build(b, &small));
    CHECK_OK(qg_client_builder_set_max_body_bytes(b, 1u << 20));
    qg_client *big = build(b);

    qg_response *resp = SENTINEL;
    qg_request *r = new_request("GET", "/api/machines?$top=5");
    CHECK_RC(qg_client_send(small, r, &resp), QG_ERR_BODY_TOO_LARGE);
    CHECK(resp == SENTINEL);
    char err[512];
    last_error_text(err, sizeof err);
    CHECK_MSG(contains(err, "100"), "the limit is named: \"%s\"", err);
    resp = send_request(big, r, NULL);
    CHECK(resp != NULL && status_of(resp) == 200);
    if (resp != NULL) {
        const uint8_t *d = NULL;
        size_t dl = 0;
        CHECK_OK(qg_response_body(resp, &d, &dl));
        CHECK_U64(dl, >, 100);
    }
    qg_response_free(resp);
    qg_request_free(r);
    qg_client_free(small);
    qg_client_free(big);
    qg_sim_free(s);
}

/* A slow server and a short timeout: QG_ERR_TIMEOUT (or QG_ERR_AUTH: the token endpoint
 * is slow too), quickly; a patient client on the same server gets its answer. */
static void test_slow_server_times_out(void)
{
    qg_sim_config *cfg = sim_config(3);
    CHECK_OK(qg_sim_config_set_faults(cfg, 0.0, 0.0, 300));
    qg_sim *s = start_sim(cfg);
    qg_client_builder *b = sim_builder(s);
    CHECK_OK(qg_client_builder_set_timeout_ms(b, 100));
    CHECK_OK(qg_client_builder_set_max_attempts(b, 2));
    qg_client *impatient = build(b);

    double t0 = now_ms();
    qg_result rc = send_rc(impatient, "GET", "/api/machines?$top=1");
    CHECK_MSG(rc == QG_ERR_TIMEOUT || rc == QG_ERR_AUTH, "%s", qg_result_str(rc));
    CHECK_DBL(now_ms() - t0, <, 3000);
    char err[512];
    last_error_text(err, sizeof err);
    CHECK_MSG(contains(err, "imeout") || contains(err, "timed out"), "the timeout is named: \"%s\"", err);

    qg_client *patient = sim_client(s);
    CHECK_U64(send_simple(patient, "GET", "/api/machines?$top=1", NULL), ==, 200);

    qg_client_free(impatient);
    qg_client_free(patient);
    qg_sim_free(s);
}

struct blocked_send {
    qg_client *client;
    const qg_request *request;
    qg_result rc;
    double returned_at;
    char error[256];
};

static void *blocked_send_main(void *arg)
{
    struct blocked_send *b = arg;
    qg_response *resp = NULL;
    b->rc = qg_client_send(b->client, b->request, &resp);
    b->returned_at = now_ms();
    last_error_text(b->error, sizeof b->error);
    qg_response_free(resp);
    return NULL;
}

/* A send waiting for quota (1 call per 10 s, the second call) ends at once when its
 * request is cancelled, or when the client is closed, from another thread. */
static void test_cancel_and_close_while_waiting(void)
{
    qg_sim *s = start_sim(sim_config(3));
    qg_client_builder *b = sim_builder(s);
    CHECK_OK(qg_client_builder_add_default_rate(b, 1, 10000));
    qg_client *c = build(b);
    CHECK_U64(send_simple(c, "GET", "/api/machines?$top=1", NULL), ==, 200);

    /* Cancel. */
    qg_request *r = new_request("GET", "/api/machines?$top=1");
    struct blocked_send bs = {c, r, QG_OK, 0, ""};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, blocked_send_main, &bs) == 0);
    sleep_ms(300);
    double cancelled_at = now_ms();
    CHECK_OK(qg_request_cancel(r));
    CHECK(pthread_join(t, NULL) == 0);
    CHECK_MSG(bs.rc == QG_ERR_CANCELLED, "%s: %s", qg_result_str(bs.rc), bs.error);
    CHECK_MSG(bs.returned_at >= cancelled_at, "the send waited until the cancel");
    CHECK_MSG(bs.returned_at - cancelled_at < 200, "returned %.0f ms after the cancel", bs.returned_at - cancelled_at);
    /* A cancelled request stays cancelled; cancelling again is fine. */
    CHECK_OK(qg_request_cancel(r));
    double t0 = now_ms();
    qg_response *resp = SENTINEL;
    CHECK_RC(qg_client_send(c, r, &resp), QG_ERR_CANCELLED);
    CHECK(resp == SENTINEL);
    CHECK_DBL(now_ms() - t0, <, 3000);
    qg_request_free(r);
    CHECK_U64(sim_log_count(s, "\"path\":\"/api/machines?$top=1\""), ==, 1);

    /* Pages keep the cancel handle of the request they were made from. */
    r = new_request("GET", "/api/machines");
    qg_pages *cp = NULL;
    CHECK_OK(qg_client_pages(c, r, &cp));
    CHECK_OK(qg_request_cancel(r));
    resp = SENTINEL;
    CHECK_RC(qg_pages_next(cp, &resp), QG_ERR_CANCELLED);
    CHECK(resp == SENTINEL);
    qg_pages_free(cp);
    qg_request_free(r);

    /* Close. */
    r = new_request("GET", "/api/machines?$top=1");
    bs = (struct blocked_send){c, r, QG_OK, 0, ""};
    CHECK(pthread_create(&t, NULL, blocked_send_main, &bs) == 0);
    sleep_ms(300);
    double closed_at = now_ms();
    CHECK_OK(qg_client_close(c));
    CHECK(pthread_join(t, NULL) == 0);
    CHECK_MSG(bs.rc == QG_ERR_CLOSED, "%s: %s", qg_result_str(bs.rc), bs.error);
    CHECK_MSG(bs.returned_at >= closed_at, "the send waited until the close");
    CHECK_MSG(bs.returned_at - closed_at < 200, "returned %.0f ms after the close", bs.returned_at - closed_at);
    qg_request_free(r);
    /* Later calls fail the same way; closing again is fine. */
    CHECK_RC(send_rc(c, "GET", "/api/nothing-here"), QG_ERR_CLOSED);
    CHECK_OK(qg_client_close(c));
    CHECK_RC(qg_client_close(NULL), QG_ERR_NULL_ARGUMENT);
    r = new_request("GET", "/api/machines");
    qg_pages *p = NULL;
    CHECK_OK(qg_client_pages(c, r, &p));
    char *item = NULL;
    CHECK_RC(qg_pages_next_item(p, &item), QG_ERR_CLOSED);
    qg_pages_free(p);
    qg_request_free(r);
    CHECK_U64(sim_log_count(s, "\"path\":\"/api/machines?$top=1\""), ==, 1);
    /* The statistics are still there after the close. */
    char *st = client_stats(c);
    CHECK_MSG(json_int(st, "requests") == 1, "%s", st ? st : "(null)");
    qg_string_free(st);

    qg_client_free(c);
    qg_sim_free(s);
}

/* A send that backs off between 503s ends at once when its request is cancelled. */
static void test_cancel_during_backoff(void)
{
    qg_sim_config *cfg = sim_config(3);
    CHECK_OK(qg_sim_config_set_faults(cfg, 1.0, 0.0, 0));
    qg_sim *s = start_sim(cfg);
    qg_client *c = sim_client(s);
    qg_request *r = new_request("GET", "/api/machines?$top=1");
    struct blocked_send bs = {c, r, QG_OK, 0, ""};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, blocked_send_main, &bs) == 0);
    /* The backoffs after the first 503s (up to 0.5 s, 1 s, 2 s, ...) outlast this. */
    double t0 = now_ms();
    while (sim_stat_polled(s, "errors_503") < 2 && now_ms() - t0 < 5000) {
        sleep_ms(5);
    }
    double cancelled_at = now_ms();
    CHECK_OK(qg_request_cancel(r));
    CHECK(pthread_join(t, NULL) == 0);
    CHECK_MSG(bs.rc == QG_ERR_CANCELLED, "%s: %s", qg_result_str(bs.rc), bs.error);
    CHECK_MSG(bs.returned_at - cancelled_at < 200, "returned %.0f ms after the cancel", bs.returned_at - cancelled_at);
    CHECK_MSG(sim_stat(s, "errors_503") >= 2, "the call was retried after 503s");
    qg_request_free(r);
    qg_client_free(c);
    qg_sim_free(s);
}

/*
 * Cancel and close while the token is being fetched (the token endpoint is slow): a
 * send that waits for another thread's fetch ends at once; the send that fetches ends
 * when its exchange with the token endpoint is over, and then must not send its API
 * request: qg_client_close says calls waiting for a token end with QG_ERR_CLOSED and
 * later calls fail the same way, and a cancelled request must not reach the API (here
 * an isolation). Today the fetching send goes on and sends the API request.
 */
static void test_cancel_and_close_while_fetching_the_token(void)
{
    char id[64], path[160];
    qg_sim *plain = start_sim(sim_config(3));
    qg_client *pc = sim_client(plain);
    machine_id(pc, 0, id, sizeof id);
    qg_client_free(pc);
    qg_sim_free(plain);

    qg_sim_config *cfg = sim_config(3);
    CHECK_OK(qg_sim_config_set_faults(cfg, 0.0, 0.0, 300));
    qg_sim *s = start_sim(cfg);

    /* Cancel: the isolation is cancelled while its client fetches the token. */
    qg_client *c = sim_client(s);
    snprintf(path, sizeof path, "/api/machines/%s/isolate", id);
    qg_request *r = new_request("POST", path);
    const char *isolate = "{\"Comment\":\"cancelled\",\"IsolationType\":\"Full\"}";
    CHECK_OK(qg_request_set_body(r, (const uint8_t *)isolate, strlen(isolate), NULL));
    struct blocked_send a = {c, r, QG_OK, 0, ""};
    pthread_t ta, tb;
    CHECK(pthread_create(&ta, NULL, blocked_send_main, &a) == 0);
    sleep_ms(150);
    CHECK_OK(qg_request_cancel(r));
    CHECK(pthread_join(ta, NULL) == 0);
    CHECK_MSG(a.rc == QG_ERR_CANCELLED, "the cancelled isolation: %s: %s", qg_result_str(a.rc), a.error);
    CHECK_MSG(sim_log_count(s, "/isolate\"") == 0, "a cancelled isolation reached the API");
    qg_request_free(r);
    qg_client_free(c);

    /* Close: A fetches the token, B waits for it. */
    c = sim_client(s);
    qg_request *ra = new_request("GET", "/api/machines?$top=2");
    qg_request *rb = new_request("GET", "/api/machines?$top=3");
    a = (struct blocked_send){c, ra, QG_OK, 0, ""};
    struct blocked_send b = {c, rb, QG_OK, 0, ""};
    CHECK(pthread_create(&ta, NULL, blocked_send_main, &a) == 0);
    sleep_ms(100);
    CHECK(pthread_create(&tb, NULL, blocked_send_main, &b) == 0);
    sleep_ms(100);
    double closed_at = now_ms();
    CHECK_OK(qg_client_close(c));
    CHECK(pthread_join(tb, NULL) == 0);
    CHECK(pthread_join(ta, NULL) == 0);
    CHECK_MSG(b.rc == QG_ERR_CLOSED, "the send waiting for the token: %s: %s", qg_result_str(b.rc), b.error);
    CHECK_MSG(b.returned_at - closed_at < 200, "returned %.0f ms after the close", b.returned_at - closed_at);
    CHECK_MSG(a.rc == QG_ERR_CLOSED, "the send fetching the token: %s: %s", qg_result_str(a.rc), a.error);
    CHECK_MSG(sim_log_count(s, "\"path\":\"/api/machines?$top=") == 0, "an API request was sent after the close");
    qg_request_free(ra);
    qg_request_free(rb);
    qg_client_free(c);
    qg_sim_free(s);
}

/* qg_client_stats_json and qg_string_free. */
static void test_client_stats(void)
{
    qg_sim *s = start_sim(sim_config(3));
    qg_client *c = sim_client(s);
    char *st = SENTINEL;
    CHECK_RC(qg_client_stats_json(NULL, &st), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_stats_json(c, NULL), QG_ERR_NULL_ARGUMENT);
    CHECK(st == SENTINEL);
    CHECK_OK(qg_client_stats_json(c, &st));
    CHECK_MSG(st != NULL && st[0] == '{' && json_int(st, "requests") == 0 && json_int(st, "token_requests") == 0 &&
                  contains(st, "\"buckets\":{}"),
              "before any call: %s", st ? st : "(null)");
    qg_string_free(st);
    CHECK_U64(send_simple(c, "GET", "/api/machines?$top=1", NULL), ==, 200);
    CHECK_U64(send_simple(c, "GET", "/api/machines?$top=1", NULL), ==, 200);
    st = client_stats(c);
    const char *keys[] = {"\"requests\":2",         "\"retries\":0",         "\"throttled\":0",
                          "\"token_requests\":1",   "\"transport_failures\":0", "\"learned_limits\":0",
                          "\"admitted_calls\":2",   "\"waited_calls\":",     "\"total_wait_ms\":",
                          "\"longest_wait_ms\":",   "\"pauses\":0",          "\"windows\":[",
                          "\"used\":2",             "\"calls\":100",         "\"window_ms\":60000"};
    for (size_t i = 0; i < ARRAY_LEN(keys); i++) {
        CHECK_MSG(st != NULL && contains(st, keys[i]), "%s in %s", keys[i], st ? st : "(null)");
    }
    qg_string_free(st);
    qg_string_free(NULL);
    qg_client_free(c);
    qg_sim_free(s);
}

/* What the log callback saw. */
struct log_sink {
    atomic_int messages;
    atomic_int waiting;       /* messages about waiting for quota */
    atomic_int above_level;   /* messages more verbose than asked for */
    atomic_int secret_seen;   /* messages with the secret of test_secret_never_shown */
    atomic_uint max_level;
};

static const char *const g_secret = "wrong-secret-xyz";

static void log_to_sink(uint32_t level, const char *message, void *user_data)
{
    struct log_sink *sink = user_data;
    atomic_fetch_add(&sink->messages, 1);
    if (level > atomic_load(&sink->max_level)) {
        atomic_fetch_add(&sink->above_level, 1);
    }
    if (message != NULL && strstr(message, "waiting") != NULL) {
        atomic_fetch_add(&sink->waiting, 1);
    }
    if (message != NULL && strstr(message, g_secret) != NULL) {
        atomic_fetch_add(&sink->secret_seen, 1);
    }
}

static void reset_sink(struct log_sink *sink, uint32_t max_level)
{
    atomic_store(&sink->messages, 0);
    atomic_store(&sink->waiting, 0);
    atomic_store(&sink->above_level, 0);
    atomic_store(&sink->secret_seen, 0);
    atomic_store(&sink->max_level, max_level);
}

/* qg_set_logger: messages while a call waits at QG_LOG_DEBUG, none above the level, none
 * after NULL. */
static void test_logger(void)
{
    static struct log_sink sink;
    reset_sink(&sink, QG_LOG_DEBUG);
    CHECK_RC(qg_set_logger(log_to_sink, 6, &sink), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_set_logger(log_to_sink, 0xFFFFFFFFu, &sink), QG_ERR_INVALID_ARGUMENT);
    char err[256];
    last_error_text(err, sizeof err);
    CHECK_MSG(contains(err, "level"), "\"%s\"", err);

    /* A client whose quota (1 call per 150 ms) is also taken by direct limiter calls, so
     * that a call can be made to wait however slowly the test runs. */
    qg_sim *s = start_sim(sim_config(3));
    qg_limiter *l = NULL;
    qg_limiter_builder *lb = NULL;
    CHECK_OK(qg_limiter_builder_new(&lb));
    CHECK_OK(qg_limiter_builder_add_rate(lb, 1, 150));
    CHECK_OK(qg_limiter_builder_build(lb, &l));
    qg_limiter_builder_free(lb);
    qg_client_builder *b = sim_builder(s);
    CHECK_OK(qg_client_builder_add_default_rate(b, 1, 150));
    CHECK_OK(qg_client_builder_set_limiter(b, l));
    qg_client *c = build(b);
    CHECK_U64(send_simple(c, "GET", "/api/machines?$top=1", NULL), ==, 200);
    char key[512] = "";
    CHECK(only_bucket_key(c, key, sizeof key) == 0);

    /* Debug: the next call waits for quota, and says so. */
    CHECK_OK(qg_set_logger(log_to_sink, QG_LOG_DEBUG, &sink));
    CHECK_OK(qg_limiter_acquire(l, key, 1, 5000));
    CHECK_U64(send_simple(c, "GET", "/api/machines?$top=1", NULL), ==, 200);
    CHECK_MSG(atomic_load(&sink.messages) >= 2, "%d messages", atomic_load(&sink.messages));
    CHECK_MSG(atomic_load(&sink.waiting) >= 1, "a message about the wait");
    CHECK_U64(atomic_load(&sink.above_level), ==, 0);

    /* Warnings only: a call that waits logs nothing. */
    reset_sink(&sink, QG_LOG_WARN);
    CHECK_OK(qg_set_logger(log_to_sink, QG_LOG_WARN, &sink));
    CHECK_OK(qg_limiter_acquire(l, key, 1, 5000));
    CHECK_U64(send_simple(c, "GET", "/api/machines?$top=1", NULL), ==, 200);
    CHECK_U64(atomic_load(&sink.messages), ==, 0);

    /* NULL stops; a call that waits logs nothing. */
    reset_sink(&sink, QG_LOG_TRACE);
    CHECK_OK(qg_set_logger(log_to_sink, QG_LOG_TRACE, &sink));
    CHECK_OK(qg_set_logger(NULL, QG_LOG_TRACE, NULL));
    CHECK_OK(qg_limiter_acquire(l, key, 1, 5000));
    CHECK_U64(send_simple(c, "GET", "/api/machines?$top=1", NULL), ==, 200);
    CHECK_U64(atomic_load(&sink.messages), ==, 0);
    CHECK_OK(qg_set_logger(NULL, QG_LOG_ERROR, NULL));

    qg_limiter_free(l);
    qg_client_free(c);
    qg_sim_free(s);
}

/* A wrong secret: QG_ERR_AUTH, and the secret is in no error text, detail or log line. */
static void test_secret_never_shown(void)
{
    static struct log_sink sink;
    qg_sim *s = start_sim(sim_config(3));
    qg_client_builder *b = sim_builder(s);
    CHECK_OK(qg_client_builder_set_client_secret(b, g_secret));
    CHECK_OK(qg_client_builder_set_max_attempts(b, 2));
    qg_client *c = build(b);

    reset_sink(&sink, QG_LOG_TRACE);
    CHECK_OK(qg_set_logger(log_to_sink, QG_LOG_TRACE, &sink));
    qg_response *resp = SENTINEL;
    qg_request *r = new_request("GET", "/api/machines?$top=1");
    CHECK_RC(qg_client_send(c, r, &resp), QG_ERR_AUTH);
    CHECK(resp == SENTINEL);
    CHECK_OK(qg_set_logger(NULL, 0, NULL));
    qg_request_free(r);

    char text[1024];
    size_t written = 0;
    CHECK_OK(qg_last_error_message(text, sizeof text, &written));
    CHECK_MSG(written > 0 && !contains(text, g_secret), "message: \"%s\"", text);
    CHECK_MSG(contains(text, "refused"), "the refusal is named: \"%s\"", text);
    for (uint32_t field = QG_DETAIL_HTTP_STATUS; field <= QG_DETAIL_SUMMARY; field++) {
        last_detail(field, text, sizeof text);
        CHECK_MSG(!contains(text, g_secret), "detail %" PRIu32 ": \"%s\"", field, text);
    }
    CHECK(strcmp(last_detail(QG_DETAIL_HTTP_STATUS, text, sizeof text), "401") == 0);
    CHECK_MSG(strcmp(last_detail(QG_DETAIL_SERVER_CODE, text, sizeof text), "invalid_client") == 0, "code \"%s\"",
              text);
    CHECK_U64(atomic_load(&sink.secret_seen), ==, 0);
    char *st = client_stats(c);
    CHECK(st != NULL && !contains(st, g_secret));
    qg_string_free(st);
    CHECK_U64(sim_stat(s, "requests"), ==, 1); /* the token request only */

    qg_client_free(c);
    qg_sim_free(s);
}

/* A request's deadline bounds the whole call: a call that would wait 60 s for quota
 * fails with QG_ERR_TIMEOUT at once, not after the quota-wait budget; a negative
 * deadline means none, and a deadline that holds changes nothing. */
static void test_request_deadline(void)
{
    qg_sim *s = start_sim(sim_config(10));
    qg_client_builder *b = sim_builder(s);
    CHECK_OK(qg_client_builder_add_default_rate(b, 1, 60000));
    CHECK_OK(qg_client_builder_set_max_quota_wait_ms(b, 3000));
    qg_client *c = build(b);
    qg_request *r = new_request("GET", "/api/machines");
    CHECK_RC(qg_request_set_deadline_ms(NULL, 1000), QG_ERR_NULL_ARGUMENT);
    CHECK_OK(qg_request_set_deadline_ms(r, 20000));
    qg_result rc = QG_OK;
    qg_response_free(send_request(c, r, &rc));
    CHECK_RC(rc, QG_OK);

    CHECK_OK(qg_request_set_deadline_ms(r, 1000));
    double t0 = now_ms();
    qg_response_free(send_request(c, r, &rc));
    CHECK_RC(rc, QG_ERR_TIMEOUT);
    CHECK_DBL(now_ms() - t0, <, 1200);
    char text[512];
    size_t written = 0;
    CHECK_OK(qg_last_error_message(text, sizeof text, &written));
    CHECK_MSG(contains(text, "deadline of 1.000 s"), "message: \"%s\"", text);

    /* No deadline: the quota-wait budget refuses the call instead. */
    CHECK_OK(qg_request_set_deadline_ms(r, -1));
    qg_response_free(send_request(c, r, &rc));
    CHECK_RC(rc, QG_ERR_THROTTLED);

    qg_request_free(r);
    qg_client_free(c);
    qg_sim_free(s);
}

/* The scope a host's credential is asked for: the API's, in the v2 form. */
static void test_token_scope(void)
{
    qg_client_builder *b = sim_builder(NULL);
    CHECK_OK(qg_client_builder_set_base_url(b, "https://api.example"));
    CHECK_OK(qg_client_builder_set_access_token(b, "t"));
    qg_client *c = build(b);
    char scope[128];
    size_t written = 0;
    CHECK_RC(qg_client_token_scope(NULL, scope, sizeof scope, &written), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_token_scope(c, scope, 4, &written), QG_ERR_BUFFER_TOO_SMALL);
    CHECK_OK(qg_client_token_scope(c, scope, sizeof scope, &written));
    CHECK_MSG(strcmp(scope, "https://api.example/.default") == 0, "scope \"%s\"", scope);
    qg_client_free(c);
}

/* ------------------------------------------------------------------- main ---- */

static const struct test g_tests[] = {
    {"sim_api", test_sim_api},
    {"short_token_lifetime", test_short_token_lifetime},
    {"builder_arguments", test_builder_arguments},
    {"builder_settings_take_effect", test_builder_settings_take_effect},
    {"shared_limiter", test_shared_limiter},
    {"requests", test_requests},
    {"send_and_responses", test_send_and_responses},
    {"quota_kept_by_many_threads", test_quota_kept_by_many_threads},
    {"stricter_server_costs_few_429s", test_stricter_server_costs_few_429s},
    {"throttled_details", test_throttled_details},
    {"paging", test_paging},
    {"gets_survive_503s", test_gets_survive_503s},
    {"ambiguous_post_is_not_repeated", test_ambiguous_post_is_not_repeated},
    {"body_limit", test_body_limit},
    {"slow_server_times_out", test_slow_server_times_out},
    {"cancel_and_close_while_waiting", test_cancel_and_close_while_waiting},
    {"cancel_during_backoff", test_cancel_during_backoff},
    {"cancel_and_close_while_fetching_the_token", test_cancel_and_close_while_fetching_the_token},
    {"client_stats", test_client_stats},
    {"logger", test_logger},
    {"secret_never_shown", test_secret_never_shown},
    {"request_deadline", test_request_deadline},
    {"token_scope", test_token_scope},
};

int main(int argc, char **argv)
{
    return harness_main(argc, argv, g_tests, ARRAY_LEN(g_tests));
}
