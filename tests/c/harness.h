/*
 * The test harness of the C tests (limiter_test.c, client_test.c), in one header so that
 * there is one copy of it.
 *
 * Deliberately tiny: CHECK macros count passes and failures (from any thread), print
 * file:line, the values involved and the thread's last error text on failure, and
 * harness_main() ends the program with exactly one line "N passed, N failed" and a
 * non-zero exit on any failure. Run a test binary with test names as arguments to run
 * only those tests.
 *
 * Include it after defining _POSIX_C_SOURCE, in one translation unit per program.
 */
#ifndef QUOTAGATE_TEST_HARNESS_H
#define QUOTAGATE_TEST_HARNESS_H

#include "quotagate.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---------------------------------------------------------------- harness ---- */

static atomic_int g_passed;
static atomic_int g_failed;
static const char *g_test = "";

static inline void last_error_text(char *buf, size_t len)
{
    size_t written = 0;
    if (qg_last_error_message(buf, len, &written) != QG_OK) {
        snprintf(buf, len, "<longer than %zu bytes: %zu>", len, written);
    }
}

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static inline void check_failed(const char *file, int line, const char *fmt, ...)
{
    char err[512];
    va_list ap;
    last_error_text(err, sizeof err);
    flockfile(stdout);
    printf("FAIL %s:%d [%s]: ", file, line, g_test);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n     last error: \"%s\"\n", err);
    funlockfile(stdout);
    fflush(stdout);
    atomic_fetch_add(&g_failed, 1);
}

static inline void check_passed(void) { atomic_fetch_add(&g_passed, 1); }

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (cond) {                                                                      \
            check_passed();                                                              \
        } else {                                                                         \
            check_failed(__FILE__, __LINE__, "%s", #cond);                               \
        }                                                                                \
    } while (0)

/* Like CHECK, with a printf-style explanation of the values involved. */
#define CHECK_MSG(cond, ...)                                                             \
    do {                                                                                 \
        if (cond) {                                                                      \
            check_passed();                                                              \
        } else {                                                                         \
            check_failed(__FILE__, __LINE__, __VA_ARGS__);                               \
        }                                                                                \
    } while (0)

/* Evaluates `expr` once and checks that it returned the qg_result `want`. */
#define CHECK_RC(expr, want)                                                             \
    do {                                                                                 \
        qg_result rc_ = (expr);                                                          \
        qg_result want_ = (want);                                                        \
        if (rc_ == want_) {                                                              \
            check_passed();                                                              \
        } else {                                                                         \
            check_failed(__FILE__, __LINE__, "%s returned %" PRIu32 " (%s), expected %" PRIu32 " (%s)", \
                         #expr, rc_, qg_result_str(rc_), want_, qg_result_str(want_));   \
        }                                                                                \
    } while (0)

#define CHECK_OK(expr) CHECK_RC(expr, QG_OK)

#define CHECK_U64(a, op, b)                                                              \
    do {                                                                                 \
        uint64_t a_ = (uint64_t)(a);                                                     \
        uint64_t b_ = (uint64_t)(b);                                                     \
        if (a_ op b_) {                                                                  \
            check_passed();                                                              \
        } else {                                                                         \
            check_failed(__FILE__, __LINE__, "%s %s %s: %" PRIu64 " vs %" PRIu64, #a, #op, #b, a_, b_); \
        }                                                                                \
    } while (0)

#define CHECK_DBL(a, op, b)                                                              \
    do {                                                                                 \
        double a_ = (a);                                                                 \
        double b_ = (b);                                                                 \
        if (a_ op b_) {                                                                  \
            check_passed();                                                              \
        } else {                                                                         \
            check_failed(__FILE__, __LINE__, "%s %s %s: %.1f vs %.1f", #a, #op, #b, a_, b_); \
        }                                                                                \
    } while (0)

/* ---------------------------------------------------------------- helpers ---- */

/* Milliseconds on CLOCK_MONOTONIC (the clock the library's monotonic clock reads). */
static inline double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static inline void sleep_ms(double ms)
{
    struct timespec ts;
    if (ms <= 0) {
        return;
    }
    ts.tv_sec = (time_t)(ms / 1e3);
    ts.tv_nsec = (long)((ms - (double)ts.tv_sec * 1e3) * 1e6);
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static inline int contains(const char *haystack, const char *needle)
{
    return strstr(haystack, needle) != NULL;
}

/* ------------------------------------------------------------------- main ---- */

struct test {
    const char *name;
    void (*fn)(void);
};

struct harness_run {
    int argc;
    char **argv;
    const struct test *tests;
    size_t count;
};

static inline int harness_selected(int argc, char **argv, const char *name)
{
    if (argc < 2) {
        return 1;
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], name) == 0) {
            return 1;
        }
    }
    return 0;
}

static inline void *harness_run_tests(void *arg)
{
    const struct harness_run *a = arg;
    for (size_t i = 0; i < a->count; i++) {
        if (!harness_selected(a->argc, a->argv, a->tests[i].name)) {
            continue;
        }
        int failed_before = atomic_load(&g_failed);
        double t0 = now_ms();
        g_test = a->tests[i].name;
        a->tests[i].fn();
        printf("%-4s %-42s %6.0f ms\n", atomic_load(&g_failed) == failed_before ? "ok" : "FAIL",
               a->tests[i].name, now_ms() - t0);
    }
    return NULL;
}

/*
 * Runs the selected tests in order and prints the closing line; returns the exit code.
 *
 * The tests run on a thread of their own that has exited by the time the process does:
 * leak checkers (LeakSanitizer, valgrind) scan the live stacks of the threads at exit for
 * pointers, and a stale copy of a leaked handle left in the main thread's stack would
 * hide the leak.
 */
static inline int harness_main(int argc, char **argv, const struct test *tests, size_t count)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    double start = now_ms();
    struct harness_run a = {argc, argv, tests, count};
    pthread_t runner;
    if (pthread_create(&runner, NULL, harness_run_tests, &a) != 0 || pthread_join(runner, NULL) != 0) {
        check_failed(__FILE__, __LINE__, "cannot run the tests on a thread");
    }
    printf("total %.0f ms\n", now_ms() - start);
    int passed = atomic_load(&g_passed), failed = atomic_load(&g_failed);
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}

#endif /* QUOTAGATE_TEST_HARNESS_H */
