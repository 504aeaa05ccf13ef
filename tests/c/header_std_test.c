/*
 * The header in every language standard a caller may use: scripts/test-c.sh compiles
 * this file as C89, C99, C11 and C17, and as C++98, C++11, C++14, C++17 and C++20, each
 * with -Wall -Wextra -pedantic -Werror, and runs each program. So this file is C89 and
 * C++98 at once: declarations first, no // comments, no implicit void * conversions.
 *
 * It also shows that handles need no casts: every constructor hands out a plain
 * `qg_x *`, which the functions that take `const qg_x *` accept as it is.
 */

#include "quotagate.h"

#include <stdio.h>
#include <string.h>

static int failures = 0;

static void check(int ok, const char *what, int line)
{
    if (!ok) {
        char err[256];
        size_t written = 0;
        err[0] = '\0';
        if (qg_last_error_message(err, sizeof err, &written) != QG_OK) {
            strcpy(err, "<unreadable>");
        }
        printf("FAIL %s:%d: %s (last error: \"%s\")\n", __FILE__, line, what, err);
        ++failures;
    }
}

#define CHECK(cond) check((cond) ? 1 : 0, #cond, __LINE__)

int main(void)
{
    qg_limiter_builder *b = NULL;
    qg_limiter *lim = NULL;
    qg_ticket *ticket = NULL;
    uint64_t wait_ms = 0;
    uint32_t features = qg_features();
    const char *name = qg_feature_name(QG_FEATURE_BIT_SIM);

    CHECK(qg_version_compatible(QG_VERSION_NUMBER) == QG_OK);
    CHECK(strcmp(qg_version(), QG_VERSION_STRING) == 0);
    CHECK(name != NULL && strcmp(name, "sim") == 0);
    CHECK(qg_feature_name(0) == NULL);
#if defined(QG_FEATURE_SIM)
    CHECK((features & QG_FEATURE_BIT_SIM) != 0);
#else
    CHECK((features & QG_FEATURE_BIT_SIM) == 0);
#endif
#if defined(QG_FEATURE_PFX)
    CHECK((features & QG_FEATURE_BIT_PFX) != 0);
#else
    CHECK((features & QG_FEATURE_BIT_PFX) == 0);
#endif
#if defined(QG_FEATURE_REDIS)
    CHECK((features & QG_FEATURE_BIT_REDIS) != 0);
#else
    CHECK((features & QG_FEATURE_BIT_REDIS) == 0);
#endif

    CHECK(qg_limiter_builder_new(&b) == QG_OK);
    CHECK(qg_limiter_builder_add_rate(b, 1, 60000) == QG_OK);
    CHECK(qg_limiter_builder_build(b, &lim) == QG_OK);
    qg_limiter_builder_free(b);
    if (lim == NULL) {
        return 1;
    }
    CHECK(qg_limiter_acquire(lim, "std", 1, 0) == QG_OK);
    CHECK(qg_limiter_try_acquire(lim, "std", 1, &wait_ms) == QG_ERR_WOULD_BLOCK);
    CHECK(wait_ms > 0);
    CHECK(qg_limiter_enqueue(lim, "other", 1, -1, &ticket) == QG_OK);
    CHECK(qg_ticket_wait(ticket, 0) == QG_OK);
    qg_ticket_free(ticket);
    qg_limiter_free(lim);

#if defined(QG_FEATURE_SIM)
    {
        qg_sim_config *config = NULL;
        qg_sim *sim = NULL;
        CHECK(qg_sim_config_new(&config) == QG_OK);
        CHECK(qg_sim_start(config, 0, &sim) == QG_OK);
        qg_sim_config_free(config);
        CHECK(qg_sim_stop(sim) == QG_OK);
        qg_sim_free(sim);
    }
#endif

    printf("%s: %s\n", __FILE__, failures == 0 ? "ok" : "FAILED");
    return failures == 0 ? 0 : 1;
}
