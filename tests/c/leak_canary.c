/*
 * Leaks one limiter on purpose. scripts/test-c.sh runs this under LeakSanitizer and
 * under valgrind and expects both to fail, which proves that the leak checks of the real
 * tests are live: a leak of a library handle from C is reported, not missed.
 *
 * The leak happens on a thread that exits before the process does, as in
 * limiter_test.c, so that no stale copy of the pointer on a live stack hides it.
 */
#define _POSIX_C_SOURCE 200809L

#include "quotagate.h"

#include <pthread.h>
#include <stdio.h>

static void *leak_a_limiter(void *arg)
{
    qg_limiter_builder *b = NULL;
    qg_limiter *l = NULL;
    (void)arg;
    if (qg_limiter_builder_new(&b) != QG_OK || qg_limiter_builder_add_rate(b, 1, 1000) != QG_OK ||
        qg_limiter_builder_build(b, &l) != QG_OK || qg_limiter_try_acquire(l, "k", 1, NULL) != QG_OK) {
        fprintf(stderr, "leak_canary: could not set up the limiter\n");
    }
    qg_limiter_builder_free(b);
    /* No qg_limiter_free(l): this is the leak. */
    return NULL;
}

int main(void)
{
    pthread_t t;
    if (pthread_create(&t, NULL, leak_a_limiter, NULL) != 0 || pthread_join(t, NULL) != 0) {
        return 2;
    }
    return 0;
}
