/*
 * Tests of the C ABI's credentials, clouds and in-flight caps, against the library's
 * simulator, through include/quotagate.h only: cloud names, a token callback called
 * from several threads (and asked for a larger buffer), certificate credentials from
 * PEM and PFX files, and a cap on calls in flight.
 *
 * Run from the repository's root (the test certificates are read from tests/data). The
 * program ends with exactly one line "N passed, N failed" and a non-zero exit on any
 * failure. Run with test names as arguments to run only those tests.
 */
#define _POSIX_C_SOURCE 200809L

#include "quotagate.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- harness ---- */

static atomic_int g_passed;
static atomic_int g_failed;
static const char *g_test = "";

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (cond) {                                                                      \
            atomic_fetch_add(&g_passed, 1);                                              \
        } else {                                                                         \
            char err_[512];                                                              \
            size_t n_ = 0;                                                               \
            if (qg_last_error_message(err_, sizeof err_, &n_) != QG_OK) err_[0] = 0;     \
            printf("FAIL %s:%d [%s]: %s\n     last error: \"%s\"\n", __FILE__, __LINE__,  \
                   g_test, #cond, err_);                                                 \
            fflush(stdout);                                                              \
            atomic_fetch_add(&g_failed, 1);                                              \
        }                                                                                \
    } while (0)

#define CHECK_RC(call, want) CHECK((call) == (want))

/* ------------------------------------------------------------------ helpers ---- */

/* The whole file as a NUL-terminated string (free it), or NULL. */
static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = calloc(1, 65536);
    size_t n = buf ? fread(buf, 1, 65535, f) : 0;
    fclose(f);
    if (buf && n == 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

/* A simulator that knows tests/data/app.crt for "cert-app", with live response calls
 * that take `live_ms`. */
static qg_sim *start_sim(uint64_t live_ms)
{
    qg_sim_config *cfg = NULL;
    qg_sim *sim = NULL;
    char *pem = read_file("tests/data/app.crt");
    CHECK(pem != NULL);
    CHECK_RC(qg_sim_config_new(&cfg), QG_OK);
    if (pem) CHECK_RC(qg_sim_config_add_certificate_client(cfg, "cert-app", pem), QG_OK);
    CHECK_RC(qg_sim_config_set_live_response_delay_ms(cfg, live_ms), QG_OK);
    CHECK_RC(qg_sim_config_set_limit_ms(cfg, "live_response", 10000, 60000), QG_OK);
    CHECK_RC(qg_sim_start(cfg, 0, &sim), QG_OK);
    qg_sim_config_free(cfg);
    free(pem);
    return sim;
}

/* A builder pointed at the simulator, with a 3 s limit per exchange. */
static qg_client_builder *sim_builder(qg_sim *sim)
{
    char url[256] = "";
    size_t n = 0;
    qg_client_builder *b = NULL;
    CHECK_RC(qg_client_builder_new(&b), QG_OK);
    CHECK_RC(qg_sim_info(sim, QG_SIM_URL, url, sizeof url, &n), QG_OK);
    CHECK_RC(qg_client_builder_set_base_url(b, url), QG_OK);
    CHECK_RC(qg_client_builder_set_authority(b, url), QG_OK);
    CHECK_RC(qg_client_builder_set_timeout_ms(b, 3000), QG_OK);
    return b;
}

/* Sends one request and returns its status (0 on failure). */
static uint16_t send_status(qg_client *c, const char *method, const char *path,
                            const char *json)
{
    qg_request *r = NULL;
    qg_response *resp = NULL;
    uint16_t status = 0;
    if (qg_request_new(method, path, &r) != QG_OK) return 0;
    if (json) qg_request_set_body(r, (const uint8_t *)json, strlen(json), "application/json");
    if (qg_client_send(c, r, &resp) == QG_OK) {
        qg_response_status(resp, &status);
        qg_response_free(resp);
    }
    qg_request_free(r);
    return status;
}

static qg_client *build(qg_client_builder *b)
{
    qg_client *c = NULL;
    CHECK_RC(qg_client_builder_build(b, &c), QG_OK);
    qg_client_builder_free(b);
    return c;
}

/* -------------------------------------------------------------------- tests ---- */

static void test_clouds(void)
{
    qg_client_builder *b = NULL;
    CHECK_RC(qg_client_builder_new(&b), QG_OK);
    CHECK_RC(qg_client_builder_set_cloud(b, "gcc-high"), QG_OK);
    CHECK_RC(qg_client_builder_set_cloud(b, "EU"), QG_OK);
    CHECK_RC(qg_client_builder_set_cloud(b, "atlantis"), QG_ERR_INVALID_ARGUMENT);
    char err[512];
    size_t n = 0;
    CHECK_RC(qg_last_error_message(err, sizeof err, &n), QG_OK);
    CHECK(strstr(err, "gcc-high") != NULL && strstr(err, "dod") != NULL);
    CHECK_RC(qg_client_builder_set_cloud(b, NULL), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_set_access_token(b, "t"), QG_OK);
    qg_client *c = build(b);
    qg_client_free(c);
}

struct token_source {
    qg_sim *sim;
    atomic_int calls;
    atomic_int asked_for_more;
};

static qg_result give_token(void *user_data, char *buf, size_t len, size_t *written,
                            uint64_t *expires_in_ms)
{
    struct token_source *src = user_data;
    atomic_fetch_add(&src->calls, 1);
    /* The first call claims a larger token, to see the library call again. */
    if (len < 5000 && atomic_fetch_add(&src->asked_for_more, 1) == 0) {
        *written = 5000;
        return QG_ERR_BUFFER_TOO_SMALL;
    }
    char token[512];
    size_t n = 0;
    qg_result rc = qg_sim_issue_token(src->sim, "c-app", token, sizeof token, &n);
    if (rc != QG_OK || n > len) {
        const char *why = "the simulator gave no token";
        memcpy(buf, why, strlen(why));
        *written = strlen(why);
        return QG_ERR_AUTH;
    }
    memcpy(buf, token, n);
    *written = n;
    *expires_in_ms = 3600 * 1000;
    return QG_OK;
}

/* Writes a token, then fails anyway: the buffer must never reach an error text. */
static qg_result refuse_token(void *user_data, char *buf, size_t len, size_t *written,
                              uint64_t *expires_in_ms)
{
    (void)user_data;
    (void)expires_in_ms;
    const char *token = "eyJ0eXAiOiJKV1Qi.written-then-refused";
    size_t n = strlen(token) < len ? strlen(token) : len;
    memcpy(buf, token, n);
    *written = n;
    return QG_ERR_AUTH;
}

static void *get_machines(void *arg)
{
    qg_client *c = arg;
    for (int i = 0; i < 5; i++) {
        CHECK(send_status(c, "GET", "/api/machines?$top=1", NULL) == 200);
    }
    return NULL;
}

/* Four threads that need a token at once. */
static void get_machines_from_threads(qg_client *c)
{
    pthread_t threads[4];
    for (int i = 0; i < 4; i++) pthread_create(&threads[i], NULL, get_machines, (void *)c);
    for (int i = 0; i < 4; i++) pthread_join(threads[i], NULL);
}

/* Sends GET /api/machines, which must fail with QG_ERR_AUTH, and copies the last
 * error's message into err. */
static void get_machines_failing_auth(qg_client *c, char *err, size_t cap)
{
    qg_request *r = NULL;
    qg_response *resp = NULL;
    size_t n = 0;
    CHECK_RC(qg_request_new("GET", "/api/machines", &r), QG_OK);
    CHECK_RC(qg_client_send(c, r, &resp), QG_ERR_AUTH);
    CHECK_RC(qg_last_error_message(err, cap, &n), QG_OK);
    qg_request_free(r);
}

static void test_token_provider(void)
{
    qg_sim *sim = start_sim(0);
    if (!sim) return;
    struct token_source src = {.sim = sim};
    qg_client_builder *b = sim_builder(sim);
    CHECK_RC(qg_client_builder_set_token_provider(b, give_token, &src), QG_OK);
    CHECK_RC(qg_client_builder_set_token_provider(b, NULL, &src), QG_ERR_NULL_ARGUMENT);
    qg_client *c = build(b);
    get_machines_from_threads(c);
    /* One token for every thread: the call that asked for more room, and the one that
     * filled it. */
    CHECK(atomic_load(&src.calls) == 2);
    qg_client_free(c);

    b = sim_builder(sim);
    CHECK_RC(qg_client_builder_set_token_provider(b, refuse_token, NULL), QG_OK);
    c = build(b);
    char err[512];
    get_machines_failing_auth(c, err, sizeof err);
    CHECK(strstr(err, "the token provider failed") != NULL && strstr(err, "303") == NULL);
    /* The provider's buffer, which may hold its token, is never quoted. */
    CHECK(strstr(err, "written-then-refused") == NULL && strstr(err, "eyJ0eXAi") == NULL);
    qg_client_free(c);
    qg_sim_free(sim);
}

/* A token source: hands the simulator's token to the sink. user_data: the source's
 * state; mode 0 gives the token, 1 fails after handing it over, 2 returns QG_OK with
 * nothing handed over. */
struct sink_source {
    qg_sim *sim;
    int mode;
    atomic_int calls;
};

static qg_result source_token(void *user_data, qg_token_sink *sink)
{
    struct sink_source *src = user_data;
    atomic_fetch_add(&src->calls, 1);
    if (src->mode == 2) return QG_OK;
    char token[512];
    size_t n = 0;
    if (qg_sim_issue_token(src->sim, "c-app", token, sizeof token, &n) != QG_OK) return QG_ERR_AUTH;
    /* What the sink refuses, before the token it takes. */
    CHECK_RC(qg_token_sink_set(sink, token, 0, 1000), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_token_sink_set(sink, token, n, 0), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_token_sink_set(sink, "\xff\xfe", 2, 1000), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_token_sink_set(sink, NULL, n, 1000), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_token_sink_set(NULL, token, n, 1000), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_token_sink_set(sink, token, n, 3600 * 1000), QG_OK);
    return src->mode == 1 ? QG_ERR_AUTH : QG_OK;
}

static void test_token_source(void)
{
    qg_sim *sim = start_sim(0);
    if (!sim) return;
    struct sink_source src = {.sim = sim};
    qg_client_builder *b = sim_builder(sim);
    CHECK_RC(qg_client_builder_set_token_source(b, NULL, &src), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_set_token_source(b, source_token, &src), QG_OK);
    qg_client *c = build(b);
    get_machines_from_threads(c);
    CHECK(atomic_load(&src.calls) == 1); /* one token for every thread */
    qg_client_free(c);

    for (int mode = 1; mode <= 2; mode++) {
        struct sink_source failing = {.sim = sim, .mode = mode};
        b = sim_builder(sim);
        CHECK_RC(qg_client_builder_set_token_source(b, source_token, &failing), QG_OK);
        c = build(b);
        char err[512];
        get_machines_failing_auth(c, err, sizeof err);
        CHECK(strstr(err, "eyJ") == NULL);
        if (mode == 2) CHECK(strstr(err, "without handing a token") != NULL);
        qg_client_free(c);
    }
    qg_sim_free(sim);
}

static void test_library_facts(void)
{
    /* The clouds the builder takes, listed by the library. */
    size_t count = 0;
    for (const char *name; (name = qg_cloud_name(count)) != NULL; count++) {
        qg_client_builder *b = NULL;
        CHECK_RC(qg_client_builder_new(&b), QG_OK);
        CHECK_RC(qg_client_builder_set_cloud(b, name), QG_OK);
        qg_client_builder_free(b);
    }
    CHECK(count == 11);
    CHECK(strcmp(qg_cloud_name(0), "commercial") == 0);
    CHECK(strcmp(qg_cloud_name(9), "gcc-high") == 0);
    uint64_t v = 0;
    CHECK_RC(qg_default_value(QG_DEFAULT_HUNTING_BUDGET_PER_HOUR_MS, &v), QG_OK);
    CHECK(v == 600000);
    CHECK_RC(qg_default_value(QG_DEFAULT_HUNTING_BUDGET_PER_DAY_MS, &v), QG_OK);
    CHECK(v == 10800000);
    CHECK_RC(qg_default_value(QG_DEFAULT_MAX_PAGES, &v), QG_OK);
    CHECK(v == 100000);
    CHECK_RC(qg_default_value(QG_DEFAULT_MAX_BODY_BYTES, &v), QG_OK);
    CHECK(v == 256u << 20);
    CHECK_RC(qg_default_value(999, &v), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_default_value(QG_DEFAULT_MAX_PAGES, NULL), QG_ERR_NULL_ARGUMENT);
}

static void test_certificates(void)
{
    qg_sim *sim = start_sim(0);
    if (!sim) return;
    char tenant[128] = "";
    size_t n = 0;
    CHECK_RC(qg_sim_info(sim, QG_SIM_TENANT_ID, tenant, sizeof tenant, &n), QG_OK);
    for (int i = 0; i < 6; i++) {
        qg_client_builder *b = sim_builder(sim);
        CHECK_RC(qg_client_builder_set_tenant_id(b, tenant), QG_OK);
        CHECK_RC(qg_client_builder_set_client_id(b, "cert-app"), QG_OK);
        if (i == 0) {
            CHECK_RC(qg_client_builder_set_certificate_pem_files(b, "tests/data/app.crt",
                                                                 "tests/data/app.key"),
                     QG_OK);
        } else if (i == 1) {
            CHECK_RC(qg_client_builder_set_certificate_pem_files(b, "tests/data/app.pem", NULL),
                     QG_OK);
            CHECK_RC(qg_client_builder_set_assertion_algorithm(b, QG_ASSERTION_RS256), QG_OK);
        } else if (i == 2) {
            CHECK_RC(qg_client_builder_set_certificate_pfx_file(b, "tests/data/app.pfx",
                                                                "quotagate"),
                     QG_OK);
        } else if (i == 3) {
            /* One setter for both kinds, told apart by content. */
            CHECK_RC(qg_client_builder_set_certificate_file(b, "tests/data/app.pfx", NULL,
                                                            "quotagate"),
                     QG_OK);
        } else if (i == 4) {
            CHECK_RC(qg_client_builder_set_certificate_file(b, "tests/data/app.pem", NULL, NULL),
                     QG_OK);
        } else {
            CHECK_RC(qg_client_builder_set_certificate_file(b, "tests/data/app.crt",
                                                            "tests/data/app.key", NULL),
                     QG_OK);
        }
        qg_client *c = build(b);
        CHECK(send_status(c, "GET", "/api/machines?$top=1", NULL) == 200);
        qg_client_free(c);
    }
    qg_client_builder *b = sim_builder(sim);
    CHECK_RC(qg_client_builder_set_certificate_pem_files(b, "tests/data/app.crt",
                                                         "tests/data/other.key"),
             QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_client_builder_set_certificate_pfx_file(b, "tests/data/app.pfx", "wrong"),
             QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_client_builder_set_certificate_pem_files(b, "tests/data/none.crt", NULL),
             QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_client_builder_set_certificate_file(b, "tests/data/app.pfx", "tests/data/app.key",
                                                    "quotagate"),
             QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_client_builder_set_certificate_file(b, "tests/data/app.pem", NULL, "quotagate"),
             QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_client_builder_set_certificate_file(b, NULL, NULL, NULL), QG_ERR_NULL_ARGUMENT);
    CHECK_RC(qg_client_builder_set_assertion_algorithm(b, 42), QG_ERR_INVALID_ARGUMENT);
    /* An unregistered certificate is refused by the simulator. */
    CHECK_RC(qg_client_builder_set_tenant_id(b, tenant), QG_OK);
    CHECK_RC(qg_client_builder_set_client_id(b, "cert-app"), QG_OK);
    CHECK_RC(qg_client_builder_set_certificate_pem_files(b, "tests/data/other.crt",
                                                         "tests/data/other.key"),
             QG_OK);
    qg_client *c = build(b);
    qg_request *r = NULL;
    qg_response *resp = NULL;
    CHECK_RC(qg_request_new("GET", "/api/machines", &r), QG_OK);
    CHECK_RC(qg_client_send(c, r, &resp), QG_ERR_AUTH);
    qg_request_free(r);
    qg_client_free(c);
    qg_sim_free(sim);
}

struct live_call {
    qg_client *client;
    char path[256];
};

static void *live_response(void *arg)
{
    const struct live_call *call = arg;
    CHECK(send_status(call->client, "POST", call->path,
                      "{\"Commands\":[{\"type\":\"RunScript\"}],\"Comment\":\"c\"}") == 201);
    return NULL;
}

/* The id of the first machine, read from the list (0 on failure). */
static int first_machine_id(qg_client *c, char *id, size_t len)
{
    qg_request *r = NULL;
    qg_response *resp = NULL;
    const uint8_t *body = NULL;
    size_t n = 0;
    int ok = 0;
    if (qg_request_new("GET", "/api/machines?$top=1", &r) != QG_OK) return 0;
    if (qg_client_send(c, r, &resp) == QG_OK && qg_response_body(resp, &body, &n) == QG_OK) {
        char text[4096] = "";
        memcpy(text, body, n < sizeof text - 1 ? n : sizeof text - 1);
        const char *at = strstr(text, "\"id\":\"");
        if (at) {
            at += strlen("\"id\":\"");
            size_t k = strcspn(at, "\"");
            if (k < len) {
                memcpy(id, at, k);
                id[k] = 0;
                ok = 1;
            }
        }
    }
    qg_response_free(resp);
    qg_request_free(r);
    return ok;
}

static void test_max_in_flight(void)
{
    qg_sim *sim = start_sim(300);
    if (!sim) return;
    char tenant[128] = "", id[128] = "", secret[128] = "";
    size_t n = 0;
    qg_sim_info(sim, QG_SIM_TENANT_ID, tenant, sizeof tenant, &n);
    qg_sim_info(sim, QG_SIM_CLIENT_ID, id, sizeof id, &n);
    qg_sim_info(sim, QG_SIM_CLIENT_SECRET, secret, sizeof secret, &n);
    qg_client_builder *b = sim_builder(sim);
    qg_client_builder_set_tenant_id(b, tenant);
    qg_client_builder_set_client_id(b, id);
    qg_client_builder_set_client_secret(b, secret);
    const char *pattern = "/api/machines/{id}/runliveresponse";
    CHECK_RC(qg_client_builder_add_route(b, "POST", pattern, 10000, 60000), QG_OK);
    CHECK_RC(qg_client_builder_set_max_in_flight(b, "POST", pattern, 2), QG_OK);
    CHECK_RC(qg_client_builder_set_max_in_flight(b, "POST", "relative", 2),
             QG_ERR_INVALID_ARGUMENT);
    qg_client *c = build(b);
    struct live_call call = {.client = c};
    char machine[128] = "";
    CHECK(first_machine_id(c, machine, sizeof machine));
    snprintf(call.path, sizeof call.path, "/api/machines/%s/runliveresponse", machine);
    pthread_t threads[5];
    for (int i = 0; i < 5; i++) pthread_create(&threads[i], NULL, live_response, &call);
    for (int i = 0; i < 5; i++) pthread_join(threads[i], NULL);
    char *json = NULL;
    CHECK_RC(qg_sim_stats_json(sim, &json), QG_OK);
    CHECK(json && strstr(json, "\"max_in_flight\":{\"live_response\":") != NULL);
    const char *at = json ? strstr(json, "\"live_response\":") : NULL;
    int peak = at ? atoi(at + strlen("\"live_response\":")) : 0;
    CHECK(peak >= 1 && peak <= 2);
    qg_string_free(json);
    CHECK_RC(qg_client_stats_json(c, &json), QG_OK);
    CHECK(json && strstr(json, "runliveresponse\":2}") != NULL);
    qg_string_free(json);
    qg_client_free(c);
    qg_sim_free(sim);
}

static void test_hunting_budget_settings(void)
{
    qg_client_builder *b = NULL;
    CHECK_RC(qg_client_builder_new(&b), QG_OK);
    CHECK_RC(qg_client_builder_set_hunting_budget_ms(b, 600000, 10800000), QG_OK);
    CHECK_RC(qg_client_builder_set_hunting_budget_policy(b, QG_HUNTING_BUDGET_FAIL), QG_OK);
    CHECK_RC(qg_client_builder_set_hunting_budget_policy(b, 7), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_client_builder_set_hunting_budget_ms(NULL, 1, 1), QG_ERR_NULL_ARGUMENT);
    qg_client_builder_free(b);
}

/* --------------------------------------------------------------------- main ---- */

struct test {
    const char *name;
    void (*run)(void);
};

int main(int argc, char **argv)
{
    static const struct test tests[] = {
        {"clouds", test_clouds},
        {"token_provider", test_token_provider},
        {"token_source", test_token_source},
        {"library_facts", test_library_facts},
        {"certificates", test_certificates},
        {"max_in_flight", test_max_in_flight},
        {"hunting_budget_settings", test_hunting_budget_settings},
    };
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        int wanted = argc < 2;
        for (int a = 1; a < argc; a++) wanted |= strcmp(argv[a], tests[i].name) == 0;
        if (!wanted) continue;
        g_test = tests[i].name;
        tests[i].run();
    }
    printf("%d passed, %d failed\n", atomic_load(&g_passed), atomic_load(&g_failed));
    return atomic_load(&g_failed) ? 1 : 0;
}
