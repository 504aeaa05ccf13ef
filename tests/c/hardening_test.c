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

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>


#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Something to point a sentinel out-pointer at: out-parameters are written only on success. */
static char g_sentinel_object;
#define SENTINEL_CLIENT ((qg_client *)(const void *)&g_sentinel_object)
#define SENTINEL_ITEM ((char *)(void *)&g_sentinel_object)

/* ---------------------------------------------------------------- helpers ---- */

struct sim_identity {
    char url[128];
    char tenant[128];
    char client[128];
    char secret[128];
};

/* Starts a simulator with `machines` machines and a share of 503s, and fills `id`; NULL
 * on failure. */
static qg_sim *start_sim(uint32_t machines, double error_503_rate, struct sim_identity *id)
{
    qg_sim_config *cfg = NULL;
    qg_sim *s = NULL;
    size_t n = 0;
    CHECK_OK(qg_sim_config_new(&cfg));
    CHECK_OK(qg_sim_config_set_machines(cfg, machines));
    CHECK_OK(qg_sim_config_set_faults(cfg, error_503_rate, 0.0, 0));
    CHECK_OK(qg_sim_start(cfg, 0, &s));
    qg_sim_config_free(cfg);
    if (s == NULL) {
        return NULL;
    }
    CHECK_OK(qg_sim_info(s, QG_SIM_URL, id->url, sizeof id->url, &n));
    CHECK_OK(qg_sim_info(s, QG_SIM_TENANT_ID, id->tenant, sizeof id->tenant, &n));
    CHECK_OK(qg_sim_info(s, QG_SIM_CLIENT_ID, id->client, sizeof id->client, &n));
    CHECK_OK(qg_sim_info(s, QG_SIM_CLIENT_SECRET, id->secret, sizeof id->secret, &n));
    return s;
}

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

static qg_client_builder *sim_builder(const struct sim_identity *id)
{
    return builder_for(id->url, id->tenant, id->client, id->secret);
}

/* The calling thread's last error text. */
static const char *last_error(char *buf, size_t len)
{
    last_error_text(buf, len);
    return buf;
}

/* ------------------------------------------------------ a scripted server ---- */

/*
 * A loopback HTTP/1.1 server for answers the simulator never gives: token requests get
 * an hour's token, GET /api/loop a page whose next link is itself, GET /api/cycle/N a
 * page that links to /api/cycle/((N+1)%3). Each connection has a thread; stop() shuts
 * every socket and joins them all.
 */
#define MAX_CONNECTIONS 16

struct script;

struct connection {
    struct script *sv;
    int fd;
    pthread_t thread;
};

struct script {
    int listener;
    unsigned short port;
    pthread_t acceptor;
    struct connection connections[MAX_CONNECTIONS];
    int accepted;
    atomic_int api_requests;
    atomic_int stopping;
};

static void script_answer(struct script *sv, int fd, const char *target)
{
    char body[512], head[256];
    if (strstr(target, "/oauth2/") != NULL) {
        snprintf(body, sizeof body, "{\"token_type\":\"Bearer\",\"expires_in\":3599,\"access_token\":\"t\"}");
    } else {
        int n = atomic_fetch_add(&sv->api_requests, 1);
        unsigned cycle = 0;
        if (strncmp(target, "/api/loop", 9) == 0) {
            snprintf(body, sizeof body,
                     "{\"value\":[],\"@odata.nextLink\":\"http://127.0.0.1:%u/api/loop\"}", sv->port);
        } else if (sscanf(target, "/api/cycle/%u", &cycle) == 1) {
            snprintf(body, sizeof body,
                     "{\"value\":[%d],\"@odata.nextLink\":\"http://127.0.0.1:%u/api/cycle/%u\"}", n, sv->port,
                     (cycle + 1) % 3);
        } else {
            snprintf(body, sizeof body, "{\"error\":{\"code\":\"NotFound\"}}");
        }
    }
    int h = snprintf(head, sizeof head,
                     "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %zu\r\n\r\n",
                     strlen(body));
    if (write(fd, head, (size_t)h) < 0 || write(fd, body, strlen(body)) < 0) {
        return;
    }
}

/* Serves one connection: requests one after another until the peer closes. */
static void *script_serve(void *arg)
{
    struct connection *conn = arg;
    struct script *sv = conn->sv;
    int fd = conn->fd;
    char buf[8192] = "";
    size_t used = 0;
    for (;;) {
        char *end = NULL;
        while ((end = strstr(buf, "\r\n\r\n")) == NULL || used == 0) {
            ssize_t n = read(fd, buf + used, sizeof buf - 1 - used);
            if (n <= 0) {
                return NULL;
            }
            used += (size_t)n;
            buf[used] = '\0';
        }
        size_t head_len = (size_t)(end - buf) + 4, body_len = 0;
        const char *cl = strstr(buf, "content-length:");
        if (cl != NULL && cl < end) {
            body_len = (size_t)strtoul(cl + 15, NULL, 10);
        }
        while (used < head_len + body_len) {
            ssize_t n = read(fd, buf + used, sizeof buf - 1 - used);
            if (n <= 0) {
                return NULL;
            }
            used += (size_t)n;
            buf[used] = '\0';
        }
        char target[512] = "";
        if (sscanf(buf, "%*s %511s", target) != 1) {
            return NULL;
        }
        script_answer(sv, fd, target);
        memmove(buf, buf + head_len + body_len, used - head_len - body_len);
        used -= head_len + body_len;
        buf[used] = '\0';
    }
}

static void *script_accept(void *arg)
{
    struct script *sv = arg;
    for (;;) {
        int fd = accept(sv->listener, NULL, NULL);
        if (fd < 0 || atomic_load(&sv->stopping)) {
            if (fd >= 0) {
                close(fd);
            }
            return NULL;
        }
        if (sv->accepted >= MAX_CONNECTIONS) {
            close(fd);
            continue;
        }
        struct connection *conn = &sv->connections[sv->accepted];
        conn->sv = sv;
        conn->fd = fd;
        if (pthread_create(&conn->thread, NULL, script_serve, conn) == 0) {
            sv->accepted++;
        } else {
            CHECK_MSG(0, "cannot start a connection thread");
            close(fd);
        }
    }
}

static int script_start(struct script *sv)
{
    struct sockaddr_in addr;
    socklen_t len = sizeof addr;
    memset(sv, 0, sizeof *sv);
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sv->listener = socket(AF_INET, SOCK_STREAM, 0);
    if (sv->listener < 0 || bind(sv->listener, (struct sockaddr *)&addr, sizeof addr) != 0 ||
        listen(sv->listener, 16) != 0 || getsockname(sv->listener, (struct sockaddr *)&addr, &len) != 0) {
        CHECK_MSG(0, "cannot listen on loopback");
        return -1;
    }
    sv->port = ntohs(addr.sin_port);
    CHECK(pthread_create(&sv->acceptor, NULL, script_accept, sv) == 0);
    return 0;
}

static void script_stop(struct script *sv)
{
    atomic_store(&sv->stopping, 1);
    shutdown(sv->listener, SHUT_RDWR);
    pthread_join(sv->acceptor, NULL);
    close(sv->listener);
    /* The acceptor has ended: `accepted` no longer changes. */
    for (int i = 0; i < sv->accepted; i++) {
        shutdown(sv->connections[i].fd, SHUT_RDWR);
        pthread_join(sv->connections[i].thread, NULL);
        close(sv->connections[i].fd);
    }
}

static qg_client *script_client(const struct script *sv, uint64_t max_pages)
{
    char url[64];
    qg_client *c = NULL;
    snprintf(url, sizeof url, "http://127.0.0.1:%u", sv->port);
    qg_client_builder *b = builder_for(url, "t", "c", "s");
    if (max_pages > 0) {
        CHECK_OK(qg_client_builder_set_max_pages(b, max_pages));
    }
    CHECK_OK(qg_client_builder_build(b, &c));
    qg_client_builder_free(b);
    return c;
}

/* Pages of `path`, or NULL; frees nothing (the caller frees pages and request). */
static qg_pages *pages_of(qg_client *c, const char *path, qg_request **req)
{
    qg_pages *p = NULL;
    CHECK_OK(qg_request_new("GET", path, req));
    CHECK_OK(qg_client_pages(c, *req, &p));
    return p;
}

/* ------------------------------------------------------------------ tests ---- */

/* http:// off loopback sends the secret and tokens in clear: refused unless allowed. */
static void test_plain_http_off_loopback(void)
{
    char err[512];
    const char *off_loopback[] = {"http://api.example.com", "http://10.0.0.7:8080"};
    for (size_t i = 0; i < ARRAY_LEN(off_loopback); i++) {
        qg_client_builder *b = builder_for(off_loopback[i], "t", "c", "s");
        qg_client *c = SENTINEL_CLIENT;
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
    qg_client *c = NULL;
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
        qg_client *c = NULL;
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

/* A next link to the page itself once made one qg_pages_next_item send request after
 * request and never return. */
static void test_paging_loops_end(void)
{
    struct script sv;
    char err[512];
    if (script_start(&sv) != 0) {
        return;
    }
    qg_client *c = script_client(&sv, 0);
    qg_request *req = NULL;
    qg_pages *p = pages_of(c, "/api/loop", &req);
    char *item = SENTINEL_ITEM;
    double t0 = now_ms();
    CHECK_RC(qg_pages_next_item(p, &item), QG_ERR_PAGING);
    CHECK(item == SENTINEL_ITEM);
    CHECK_MSG(contains(last_error(err, sizeof err), "already fetched"), "%s", err);
    CHECK_U64(atomic_load(&sv.api_requests), ==, 1);
    CHECK_DBL(now_ms() - t0, <, 5000.0);
    /* Asked again, the run gives the same failure, never QG_DONE. */
    CHECK_RC(qg_pages_next_item(p, &item), QG_ERR_PAGING);
    qg_response *resp = NULL;
    CHECK_RC(qg_pages_next(p, &resp), QG_ERR_PAGING);
    CHECK_U64(atomic_load(&sv.api_requests), ==, 1);
    qg_pages_free(p);
    qg_request_free(req);

    /* A cycle of three links ends at the first page seen twice. */
    atomic_store(&sv.api_requests, 0);
    p = pages_of(c, "/api/cycle/0", &req);
    int items = 0;
    qg_result rc;
    while ((rc = qg_pages_next_item(p, &item)) == QG_OK) {
        qg_string_free(item);
        items++;
    }
    CHECK_RC(rc, QG_ERR_PAGING);
    CHECK_U64(items, ==, 3);
    CHECK_U64(atomic_load(&sv.api_requests), ==, 3);
    qg_pages_free(p);
    qg_request_free(req);
    qg_client_free(c);

    /* The page limit ends a list whose links never repeat (the cycle's, from page 0,
     * repeats only at the fourth page). */
    c = script_client(&sv, 2);
    p = pages_of(c, "/api/cycle/0", &req);
    items = 0;
    while ((rc = qg_pages_next_item(p, &item)) == QG_OK) {
        qg_string_free(item);
        items++;
    }
    CHECK_RC(rc, QG_ERR_PAGING);
    CHECK_MSG(contains(last_error(err, sizeof err), "more than 2 pages"), "%s", err);
    CHECK_U64(items, ==, 2);
    qg_pages_free(p);
    qg_request_free(req);
    qg_client_free(c);
    qg_client_builder *b = builder_for("http://127.0.0.1:9", "t", "c", "s");
    CHECK_RC(qg_client_builder_set_max_pages(b, 0), QG_ERR_INVALID_ARGUMENT);
    CHECK_RC(qg_client_builder_set_max_pages(NULL, 1), QG_ERR_NULL_ARGUMENT);
    qg_client_builder_free(b);
    script_stop(&sv);
}

/* After a failed page, the next call used to return QG_DONE, and the README's loop took
 * a partial list for a whole one. */
static void test_paging_after_a_failure_never_says_done(void)
{
    struct sim_identity id;
    qg_sim *s = start_sim(5, 1.0, &id); /* every API call answers 503 */
    if (s == NULL) {
        return;
    }
    qg_client_builder *b = sim_builder(&id);
    qg_client *c = NULL;
    CHECK_OK(qg_client_builder_set_max_attempts(b, 1));
    CHECK_OK(qg_client_builder_build(b, &c));
    qg_client_builder_free(b);
    qg_request *req = NULL;
    qg_pages *p = pages_of(c, "/api/machines", &req);
    char *item = NULL;
    qg_result rc;
    while ((rc = qg_pages_next_item(p, &item)) == QG_OK) {
        qg_string_free(item);
    }
    CHECK_RC(rc, QG_ERR_HTTP_STATUS);
    char status[16];
    size_t n = 0;
    CHECK_OK(qg_last_error_detail(QG_DETAIL_HTTP_STATUS, status, sizeof status, &n));
    CHECK_MSG(strcmp(status, "503") == 0, "status %s", status);
    for (int i = 0; i < 3; i++) {
        CHECK_RC(qg_pages_next_item(p, &item), QG_ERR_HTTP_STATUS);
    }
    qg_response *resp = NULL;
    CHECK_RC(qg_pages_next(p, &resp), QG_ERR_HTTP_STATUS);
    qg_pages_free(p);
    qg_request_free(req);
    qg_client_free(c);
    qg_sim_free(s);
}

/* A token provider that sends with its own client used to wait for itself for ever. */
struct nested_send {
    qg_client *client;
    atomic_int calls;
    atomic_uint nested_rc;
};

static qg_result send_from_the_provider(void *user_data, char *buf, size_t len, size_t *written,
                                        uint64_t *expires_in_ms)
{
    struct nested_send *ns = user_data;
    qg_request *r = NULL;
    qg_response *resp = NULL;
    (void)buf;
    (void)len;
    (void)written;
    (void)expires_in_ms;
    atomic_fetch_add(&ns->calls, 1);
    /* Other library calls are fine here; a send with this very client is not. */
    atomic_store(&ns->nested_rc, qg_request_new("GET", "/api/machines", &r));
    if (r != NULL) {
        atomic_store(&ns->nested_rc, qg_client_send(ns->client, r, &resp));
        qg_response_free(resp);
        qg_request_free(r);
    }
    return QG_ERR_AUTH;
}

static void test_a_token_provider_calling_its_client_fails_at_once(void)
{
    struct nested_send ns = {0};
    char err[512];
    qg_client_builder *b = NULL;
    CHECK_OK(qg_client_builder_new(&b));
    CHECK_OK(qg_client_builder_set_base_url(b, "http://127.0.0.1:9"));
    CHECK_OK(qg_client_builder_set_token_provider(b, send_from_the_provider, &ns));
    CHECK_OK(qg_client_builder_build(b, &ns.client));
    qg_client_builder_free(b);
    qg_request *r = NULL;
    qg_response *resp = NULL;
    CHECK_OK(qg_request_new("GET", "/api/machines", &r));
    double t0 = now_ms();
    CHECK_RC(qg_client_send(ns.client, r, &resp), QG_ERR_AUTH);
    CHECK_DBL(now_ms() - t0, <, 5000.0);
    CHECK_U64(atomic_load(&ns.calls), ==, 1);
    CHECK_RC(atomic_load(&ns.nested_rc), QG_ERR_REENTRANT_CALL);
    CHECK_MSG(strcmp(qg_result_str(QG_ERR_REENTRANT_CALL), "unknown result code") != 0, "described");
    /* Outside the callback, the same thread may call the library again. */
    CHECK_RC(qg_client_send(ns.client, r, &resp), QG_ERR_AUTH);
    last_error(err, sizeof err);
    CHECK_MSG(contains(err, "the token provider failed"), "%s", err);
    qg_request_free(r);
    qg_client_free(ns.client);
}

/* A log callback that replaces the logger used to deadlock on the logger's own lock. */
static atomic_uint g_logger_nested_rc;
static atomic_int g_logger_records;

static void replace_the_logger(uint32_t level, const char *message, void *user_data)
{
    (void)level;
    (void)message;
    (void)user_data;
    if (atomic_fetch_add(&g_logger_records, 1) == 0) {
        atomic_store(&g_logger_nested_rc, qg_set_logger(NULL, 0, NULL));
    }
}

static void test_a_log_callback_replacing_the_logger_fails_at_once(void)
{
    struct sim_identity id;
    qg_sim *s = start_sim(3, 0.0, &id);
    if (s == NULL) {
        return;
    }
    qg_client *c = NULL;
    qg_client_builder *b = sim_builder(&id);
    CHECK_OK(qg_client_builder_build(b, &c));
    qg_client_builder_free(b);
    atomic_store(&g_logger_nested_rc, QG_OK);
    atomic_store(&g_logger_records, 0);
    CHECK_OK(qg_set_logger(replace_the_logger, QG_LOG_DEBUG, NULL));
    qg_request *r = NULL;
    qg_response *resp = NULL;
    CHECK_OK(qg_request_new("GET", "/api/machines", &r));
    double t0 = now_ms();
    CHECK_OK(qg_client_send(c, r, &resp));
    CHECK_DBL(now_ms() - t0, <, 5000.0);
    CHECK(atomic_load(&g_logger_records) > 0);
    CHECK_RC(atomic_load(&g_logger_nested_rc), QG_ERR_REENTRANT_CALL);
    CHECK_OK(qg_set_logger(NULL, 0, NULL));
    qg_response_free(resp);
    qg_request_free(r);
    qg_client_free(c);
    qg_sim_free(s);
}

/* The header says the last error text is meaningful only right after a failure: a
 * successful call leaves it as it was. */
static void test_the_last_error_stays_after_a_success(void)
{
    char before[512], after[512];
    qg_request *r = NULL;
    CHECK_RC(qg_request_new("", "/api/machines", &r), QG_ERR_INVALID_ARGUMENT);
    last_error(before, sizeof before);
    CHECK(before[0] != '\0');
    CHECK_OK(qg_request_new("GET", "/api/machines", &r));
    CHECK_OK(qg_request_set_header(r, "X-Test", "ok"));
    last_error(after, sizeof after);
    CHECK_MSG(strcmp(before, after) == 0, "\"%s\" became \"%s\"", before, after);
    qg_request_free(r);
}

/* ------------------------------------------------------------------- main ---- */

static const struct test g_tests[] = {
    {"plain_http_off_loopback", test_plain_http_off_loopback},
    {"user_information_in_urls", test_user_information_in_urls},
    {"headers_the_wire_refuses", test_headers_the_wire_refuses},
    {"paging_loops_end", test_paging_loops_end},
    {"paging_after_a_failure_never_says_done", test_paging_after_a_failure_never_says_done},
    {"a_token_provider_calling_its_client_fails_at_once", test_a_token_provider_calling_its_client_fails_at_once},
    {"a_log_callback_replacing_the_logger_fails_at_once", test_a_log_callback_replacing_the_logger_fails_at_once},
    {"the_last_error_stays_after_a_success", test_the_last_error_stays_after_a_success},
};

int main(int argc, char **argv)
{
    return harness_main(argc, argv, g_tests, ARRAY_LEN(g_tests));
}
