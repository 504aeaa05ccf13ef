/*
 * Lists every machine of a tenant through quotagate: each call waits for its quota,
 * tokens are cached, 429s are waited out, pages are followed. Every result is checked.
 *
 * With QUOTAGATE_TENANT_ID, QUOTAGATE_CLIENT_ID and QUOTAGATE_CLIENT_SECRET set it talks
 * to the real API; without them it starts the library's simulator of the API.
 *
 *   scripts/install --prefix /usr/local
 *   cc -std=c11 examples/c/throttled_calls.c $(pkg-config --cflags --libs quotagate) \
 *      -o throttled_calls && ./throttled_calls
 */
#include <quotagate.h>
#include <stdio.h>
#include <stdlib.h>

static int fail(const char *what, qg_result rc)
{
    char msg[512];
    size_t n = 0;
    if (qg_last_error_message(msg, sizeof msg, &n) != QG_OK) {
        msg[0] = '\0';
    }
    fprintf(stderr, "%s failed: %s (%s)\n", what, qg_result_str(rc), msg);
    return 1;
}

/* Runs a call; on failure reports it and leaves through `done`, which frees everything. */
#define TRY(call)                                                                                  \
    do {                                                                                           \
        if ((rc = (call)) != QG_OK) {                                                              \
            status = fail(#call, rc);                                                              \
            goto done;                                                                             \
        }                                                                                          \
    } while (0)

static const char *env(const char *name)
{
    const char *value = getenv(name);
    return value ? value : "";
}

int main(void)
{
    int status = 0;
    qg_result rc;
    qg_client_builder *b = NULL;
    qg_client *client = NULL;
    qg_request *req = NULL;
    qg_pages *pages = NULL;
    char *item = NULL, *stats = NULL;
    size_t count = 0;
#if defined(QG_FEATURE_SIM)
    qg_sim *sim = NULL;
    qg_sim_config *cfg = NULL;
    char url[256] = "", tenant[128] = "", client_id[128] = "", secret[128] = "";
    size_t n = 0;
#endif

    TRY(qg_version_compatible(QG_VERSION_NUMBER));
    TRY(qg_client_builder_new(&b));
    if (getenv("QUOTAGATE_TENANT_ID")) {
        TRY(qg_client_builder_set_tenant_id(b, env("QUOTAGATE_TENANT_ID")));
        TRY(qg_client_builder_set_client_id(b, env("QUOTAGATE_CLIENT_ID")));
        TRY(qg_client_builder_set_client_secret(b, env("QUOTAGATE_CLIENT_SECRET")));
    } else {
#if defined(QG_FEATURE_SIM)
        /* No credentials: serve the API locally, with 60 s windows lasting 600 ms. */
        TRY(qg_sim_config_new(&cfg));
        TRY(qg_sim_config_set_time_scale(cfg, 0.01));
        TRY(qg_sim_start(cfg, 0, &sim));
        TRY(qg_sim_info(sim, QG_SIM_URL, url, sizeof url, &n));
        TRY(qg_sim_info(sim, QG_SIM_TENANT_ID, tenant, sizeof tenant, &n));
        TRY(qg_sim_info(sim, QG_SIM_CLIENT_ID, client_id, sizeof client_id, &n));
        TRY(qg_sim_info(sim, QG_SIM_CLIENT_SECRET, secret, sizeof secret, &n));
        TRY(qg_client_builder_set_base_url(b, url));
        TRY(qg_client_builder_set_authority(b, url));
        TRY(qg_client_builder_set_tenant_id(b, tenant));
        TRY(qg_client_builder_set_client_id(b, client_id));
        TRY(qg_client_builder_set_client_secret(b, secret));
        /* The simulator's windows are 100 times shorter than the real ones. */
        TRY(qg_client_builder_add_default_rate(b, 100, 600));
        TRY(qg_client_builder_add_default_rate(b, 1500, 36000));
#else
        fprintf(stderr, "set QUOTAGATE_TENANT_ID and the others: this library has no simulator\n");
        status = 2;
        goto done;
#endif
    }
    TRY(qg_client_builder_build(b, &client));

    TRY(qg_request_new("GET", "/api/machines", &req));
    TRY(qg_request_add_query(req, "$top", "100"));
    TRY(qg_client_pages(client, req, &pages));
    while ((rc = qg_pages_next_item(pages, &item)) == QG_OK) {
        count++;
        qg_string_free(item);
    }
    if (rc != QG_DONE) { /* QG_DONE after the last item */
        status = fail("qg_pages_next_item", rc);
        goto done;
    }
    printf("%zu machines\n", count);
    TRY(qg_client_stats_json(client, &stats));
    printf("%s\n", stats);

done:
    qg_string_free(stats);
    qg_pages_free(pages);
    qg_request_free(req);
    qg_client_free(client);
    qg_client_builder_free(b);
#if defined(QG_FEATURE_SIM)
    qg_sim_config_free(cfg);
    qg_sim_free(sim);
#endif
    return status;
}
