/*
 * The C ABI where a careless host or a hostile server would hurt: plain HTTP off
 * loopback, credentials in URLs, header values the wire refuses, a token provider's
 * buffer, paging links that loop, paging after a failure, calls back into the library
 * from its callbacks, and the last error after a success.
 *
 * The harness (tests/c/harness.h) counts checks and ends with one line
 * "N passed, N failed"; run with test names as arguments to run only those tests.
 */
#define _POSIX_C_SOURCE 200809L

#include "harness.h"


#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Something to point a sentinel out-pointer at: out-parameters are written only on success. */
static char g_sentinel_object;
#define SENTINEL_CLIENT ((const qg_client *)(const void *)&g_sentinel_object)

/* ---------------------------------------------------------------- helpers ---- */

/* A builder for `base_url` (also the authority) with client-secret credentials and a
 * short exchange timeout. */
static qg_client_builder *builder_for(const char *base_url, const char *tenant, const char *client,
                                      const char *secret)
{
    qg_client_builder *b = NULL;
    CHECK_OK(qg_client_builder_new(&b));
    CHECK_OK(qg_client_builder_set_base_url(b, base_url));
    CHECK_OK(qg_client_builder_set_authority(b, base_url));
    CHECK_OK(qg_client_builder_set_tenant_id(b, tenant));
    CHECK_OK(qg_client_builder_set_client_id(b, client));
    CHECK_OK(qg_client_builder_set_client_secret(b, secret));
    CHECK_OK(qg_client_builder_set_timeout_ms(b, 5000));
    return b;
}

/* The calling thread's last error text. */
static const char *last_error(char *buf, size_t len)
{
    last_error_text(buf, len);
    return buf;
}

/* ------------------------------------------------------------------ tests ---- */

/* http:// off loopback sends the secret and tokens in clear: refused unless allowed. */
static void test_plain_http_off_loopback(void)
{
    char err[512];
    const char *off_loopback[] = {"http://api.example.com", "http://10.0.0.7:8080"};
    for (size_t i = 0; i < ARRAY_LEN(off_loopback); i++) {
        qg_client_builder *b = builder_for(off_loopback[i], "t", "c", "s");
        const qg_client *c = SENTINEL_CLIENT;
        CHECK_RC(qg_client_builder_build(b, &c), QG_ERR_INVALID_ARGUMENT);
        CHECK(c == SENTINEL_CLIENT);
        last_error(err, sizeof err);
        CHECK_MSG(contains(err, "is not a loopback host") && contains(err, "unencrypted") &&
                      contains(err, "allow_insecure_http"),
                  "%s", err);
        CHECK_RC(qg_client_builder_set_allow_insecure_http(b, 2), QG_ERR_INVALID_ARGUMENT);
        CHECK_OK(qg_client_builder_set_allow_insecure_http(b, 1));
        c = NULL;
        CHECK_OK(qg_client_builder_build(b, &c));
        qg_client_free(c);
        CHECK_OK(qg_client_builder_set_allow_insecure_http(b, 0));
        CHECK_RC(qg_client_builder_build(b, &c), QG_ERR_INVALID_ARGUMENT);
        qg_client_builder_free(b);
    }
    CHECK_RC(qg_client_builder_set_allow_insecure_http(NULL, 1), QG_ERR_NULL_ARGUMENT);

    /* Loopback, as the simulator serves, needs no opt-in. */
    qg_client_builder *b = builder_for("http://127.0.0.1:9", "t", "c", "s");
    const qg_client *c = NULL;
    CHECK_OK(qg_client_builder_build(b, &c));
    qg_client_free(c);
    qg_client_builder_free(b);
}

/* A user:password@ in a URL is refused, and never quoted. */
static void test_user_information_in_urls(void)
{
    char err[512];
    const char *urls[] = {"https://admin:hunter2@api.example.com", "http://admin:hunter2@127.0.0.1:9",
                          "https://ad/min:hunter2@api.example.com"};
    for (size_t i = 0; i < ARRAY_LEN(urls); i++) {
        qg_client_builder *b = builder_for(urls[i], "t", "c", "s");
        const qg_client *c = NULL;
        CHECK_RC(qg_client_builder_build(b, &c), QG_ERR_INVALID_ARGUMENT);
        last_error(err, sizeof err);
        CHECK_MSG(contains(err, "user name or password") && !contains(err, "hunter2") &&
                      !contains(err, "admin"),
                  "%s", err);
        qg_client_builder_free(b);
    }
}

/* Header names and values RFC 9110 refuses fail at once, before any quota is taken
 * (they used to pass here, fail on the wire and be retried as "not sent"). */
static void test_headers_the_wire_refuses(void)
{
    qg_request *r = NULL;
    CHECK_OK(qg_request_new("GET", "/api/machines", &r));
    const char *bad_names[] = {"X(A", "X A", "", "X:A", "X\x01"};
    for (size_t i = 0; i < ARRAY_LEN(bad_names); i++) {
        CHECK_RC(qg_request_set_header(r, bad_names[i], "v"), QG_ERR_INVALID_ARGUMENT);
    }
    const char *bad_values[] = {"a\x01b", "a\x7f", "a\r\nX-Injected: 1", "\x1b[31m"};
    for (size_t i = 0; i < ARRAY_LEN(bad_values); i++) {
        CHECK_RC(qg_request_set_header(r, "X-Test", bad_values[i]), QG_ERR_INVALID_ARGUMENT);
    }
    CHECK_OK(qg_request_set_header(r, "X-Test", "a b\tc"));
    CHECK_OK(qg_request_set_header(r, "x!#$%&'*+-.^_`|~9", "Gr\xc3\xbc\xc3\x9f"));
    qg_request_free(r);
}

/* ------------------------------------------------------------------- main ---- */

static const struct test g_tests[] = {
    {"plain_http_off_loopback", test_plain_http_off_loopback},
    {"user_information_in_urls", test_user_information_in_urls},
    {"headers_the_wire_refuses", test_headers_the_wire_refuses},
};

int main(int argc, char **argv)
{
    return harness_main(argc, argv, g_tests, ARRAY_LEN(g_tests));
}
