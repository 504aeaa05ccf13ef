/*
 * A program built against an installed libquotagate (scripts/test-install.sh builds it
 * with pkg-config, pkg-config --static and CMake): it checks the library's version and
 * features against its header, takes a quota, and, where the library has the
 * simulator, starts and stops one. Every return code is checked.
 */

#include <quotagate.h>

#include <stdio.h>
#include <string.h>

static int failed(const char *what, qg_result rc)
{
    char message[512];
    size_t written = 0;
    if (qg_last_error_message(message, sizeof message, &written) != QG_OK) {
        message[0] = '\0';
    }
    fprintf(stderr, "%s failed: %s (%s)\n", what, qg_result_str(rc), message);
    return 1;
}

int main(void)
{
    qg_limiter_builder *builder = NULL;
    qg_limiter *limiter = NULL;
    uint64_t wait_ms = 0;
    uint32_t expected = 0;
    qg_result rc;

    if ((rc = qg_version_compatible(QG_VERSION_NUMBER)) != QG_OK) {
        return failed("qg_version_compatible", rc);
    }
#if defined(QG_FEATURE_SIM)
    expected |= QG_FEATURE_BIT_SIM;
#endif
#if defined(QG_FEATURE_PFX)
    expected |= QG_FEATURE_BIT_PFX;
#endif
#if defined(QG_FEATURE_REDIS)
    expected |= QG_FEATURE_BIT_REDIS;
#endif
    if (qg_features() != expected) {
        fprintf(stderr, "the library has features %u, its header says %u\n",
                (unsigned)qg_features(), (unsigned)expected);
        return 1;
    }

    if ((rc = qg_limiter_builder_new(&builder)) != QG_OK) {
        return failed("qg_limiter_builder_new", rc);
    }
    rc = qg_limiter_builder_add_rate(builder, 1, 60000); /* 1 call per minute */
    if (rc == QG_OK) {
        rc = qg_limiter_builder_build(builder, &limiter);
    }
    qg_limiter_builder_free(builder);
    if (rc != QG_OK) {
        return failed("building the limiter", rc);
    }
    if ((rc = qg_limiter_acquire(limiter, "machines", 1, 0)) != QG_OK) {
        qg_limiter_free(limiter);
        return failed("qg_limiter_acquire", rc);
    }
    rc = qg_limiter_try_acquire(limiter, "machines", 1, &wait_ms);
    qg_limiter_free(limiter);
    if (rc != QG_ERR_WOULD_BLOCK || wait_ms == 0) {
        return failed("the second call of the minute must wait", rc);
    }

#if defined(QG_FEATURE_SIM)
    {
        qg_sim_config *config = NULL;
        qg_sim *sim = NULL;
        char url[128];
        size_t n = 0;
        if ((rc = qg_sim_config_new(&config)) != QG_OK) {
            return failed("qg_sim_config_new", rc);
        }
        rc = qg_sim_start(config, 0, &sim);
        qg_sim_config_free(config);
        if (rc != QG_OK) {
            return failed("qg_sim_start", rc);
        }
        rc = qg_sim_info(sim, QG_SIM_URL, url, sizeof url, &n);
        qg_sim_free(sim);
        if (rc != QG_OK || strncmp(url, "http://127.0.0.1:", 17) != 0) {
            return failed("qg_sim_info", rc);
        }
    }
#endif

    printf("libquotagate %s works (features: %u)\n", qg_version(), (unsigned)qg_features());
    return 0;
}
