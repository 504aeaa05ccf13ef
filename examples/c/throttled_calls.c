/*
 * Lists every machine of a tenant through quotagate: each call waits for its quota,
 * tokens are cached, 429s are waited out, pages are followed.
 *
 * With QUOTAGATE_TENANT_ID, QUOTAGATE_CLIENT_ID and QUOTAGATE_CLIENT_SECRET set it talks
 * to the real API; without them it starts the library's simulator of the API.
 *
 *   cargo build --release
 *   cc -std=c11 -Iinclude examples/c/throttled_calls.c target/release/libquotagate.a \
 *      -lpthread -ldl -lm -o throttled_calls && ./throttled_calls
 */
#include <quotagate.h>
#include <stdio.h>
#include <stdlib.h>

static int fail(const char *what, qg_result rc)
{
    char msg[512];
    size_t n = 0;
    qg_last_error_message(msg, sizeof msg, &n);
    fprintf(stderr, "%s failed: %s (%s)\n", what, qg_result_str(rc), msg);
    return 1;
}

int main(void)
{
    qg_sim *sim = NULL;
    char url[256] = "", tenant[128] = "", client_id[128] = "", secret[128] = "";
    size_t n = 0;
    const char *env_tenant = getenv("QUOTAGATE_TENANT_ID");
    qg_result rc;

    qg_client_builder *b = NULL;
    if ((rc = qg_client_builder_new(&b)) != QG_OK) return fail("qg_client_builder_new", rc);
    if (env_tenant) {
        qg_client_builder_set_tenant_id(b, env_tenant);
        qg_client_builder_set_client_id(b, getenv("QUOTAGATE_CLIENT_ID") ? getenv("QUOTAGATE_CLIENT_ID") : "");
        qg_client_builder_set_client_secret(b, getenv("QUOTAGATE_CLIENT_SECRET") ? getenv("QUOTAGATE_CLIENT_SECRET") : "");
    } else {
        /* No credentials: serve the API locally, with 60 s windows lasting 600 ms. */
        qg_sim_config *cfg = NULL;
        qg_sim_config_new(&cfg);
        qg_sim_config_set_time_scale(cfg, 0.01);
        if ((rc = qg_sim_start(cfg, 0, &sim)) != QG_OK) return fail("qg_sim_start", rc);
        qg_sim_config_free(cfg);
        qg_sim_info(sim, QG_SIM_URL, url, sizeof url, &n);
        qg_sim_info(sim, QG_SIM_TENANT_ID, tenant, sizeof tenant, &n);
        qg_sim_info(sim, QG_SIM_CLIENT_ID, client_id, sizeof client_id, &n);
        qg_sim_info(sim, QG_SIM_CLIENT_SECRET, secret, sizeof secret, &n);
        qg_client_builder_set_base_url(b, url);
        qg_client_builder_set_authority(b, url);
        qg_client_builder_set_tenant_id(b, tenant);
        qg_client_builder_set_client_id(b, client_id);
        qg_client_builder_set_client_secret(b, secret);
        /* The simulator's windows are 100 times shorter than the real ones. */
        qg_client_builder_add_default_rate(b, 100, 600);
        qg_client_builder_add_default_rate(b, 1500, 36000);
    }
    qg_client *client = NULL;
    rc = qg_client_builder_build(b, &client);
    qg_client_builder_free(b);
    if (rc != QG_OK) return fail("qg_client_builder_build", rc);

    qg_request *req = NULL;
    qg_request_new("GET", "/api/machines", &req);
    qg_request_add_query(req, "$top", "100");
    qg_pages *pages = NULL;
    qg_client_pages(client, req, &pages);
    char *item = NULL;
    size_t count = 0;
    while ((rc = qg_pages_next_item(pages, &item)) == QG_OK) {
        count++;
        qg_string_free(item);
    }
    int status = 0;
    if (rc != QG_DONE) {
        status = fail("qg_pages_next_item", rc);
    } else {
        printf("%zu machines\n", count);
    }
    qg_pages_free(pages);
    qg_request_free(req);

    char *stats = NULL;
    if (qg_client_stats_json(client, &stats) == QG_OK) {
        printf("%s\n", stats);
        qg_string_free(stats);
    }
    qg_client_free(client);
    qg_sim_free(sim);
    return status;
}
