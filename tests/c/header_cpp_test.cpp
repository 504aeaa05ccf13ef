// The header must compile as C++ (here with -std=c++17 -Wall -Wextra -Wpedantic -Werror),
// its declarations must have C linkage so that the library's symbols link, and a short
// round trip through the limiter must work from C++.

#include "quotagate.h"

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <type_traits>

static_assert(std::is_same<qg_result, std::uint32_t>::value, "qg_result is a uint32_t");
static_assert(QG_VERSION_NUMBER == QG_VERSION_MAJOR * 1000000 + QG_VERSION_MINOR * 1000 + QG_VERSION_PATCH,
              "QG_VERSION_NUMBER follows its formula");

namespace {

int failures = 0;

void check(bool ok, const char *what, int line)
{
    if (!ok) {
        char err[256] = {0};
        std::size_t written = 0;
        if (qg_last_error_message(err, sizeof err, &written) != QG_OK) {
            std::snprintf(err, sizeof err, "<%zu bytes>", written);
        }
        std::printf("FAIL %s:%d: %s (last error: \"%s\")\n", __FILE__, line, what, err);
        ++failures;
    }
}

#define CHECK(cond) check((cond), #cond, __LINE__)

// Frees a handle when the scope ends, as a C++ caller would wrap the C API.
template <typename T, void (*Free)(T *)>
struct Owned {
    T *p = nullptr;
    Owned() = default;
    Owned(const Owned &) = delete;
    Owned &operator=(const Owned &) = delete;
    ~Owned() { Free(p); }
};

}  // namespace

int main()
{
    CHECK(std::strcmp(qg_version(), QG_VERSION_STRING) == 0);
    CHECK(qg_version_number() == QG_VERSION_NUMBER);
    CHECK(std::strcmp(qg_result_str(QG_OK), "success") == 0);

    Owned<qg_limiter_builder, qg_limiter_builder_free> builder;
    CHECK(qg_limiter_builder_new(&builder.p) == QG_OK);
    CHECK(qg_limiter_builder_add_rate(builder.p, 2, 60000) == QG_OK);
    CHECK(qg_limiter_builder_set_margin(builder.p, 50) == QG_OK);
    CHECK(qg_limiter_builder_set_max_buckets(builder.p, 8) == QG_OK);

    Owned<qg_limiter, qg_limiter_free> limiter;
    CHECK(qg_limiter_builder_build(builder.p, &limiter.p) == QG_OK);
    CHECK(limiter.p != nullptr);
    if (limiter.p == nullptr) {
        return 1;
    }

    std::uint64_t wait_ms = 1;
    CHECK(qg_limiter_acquire(limiter.p, nullptr, 1, 0) == QG_OK);
    CHECK(qg_limiter_try_acquire(limiter.p, nullptr, 1, &wait_ms) == QG_OK && wait_ms == 0);
    CHECK(qg_limiter_try_acquire(limiter.p, nullptr, 1, &wait_ms) == QG_ERR_WOULD_BLOCK);
    CHECK(wait_ms > 59000 && wait_ms <= 60050);

    {
        Owned<qg_ticket, qg_ticket_free> ticket;
        CHECK(qg_limiter_enqueue(limiter.p, "c++", 2, -1, &ticket.p) == QG_OK);
        CHECK(qg_ticket_wait(ticket.p, 0) == QG_OK);
    }

    Owned<qg_bucket_stats, qg_bucket_stats_free> stats;
    std::uint64_t units = 0, used = 0, calls = 0, window_ms = 0;
    std::size_t windows = 0;
    CHECK(qg_limiter_stats(limiter.p, nullptr, &stats.p) == QG_OK);
    CHECK(qg_bucket_stats_get(stats.p, QG_STAT_ADMITTED_UNITS, &units) == QG_OK && units == 2);
    CHECK(qg_bucket_stats_window_count(stats.p, &windows) == QG_OK && windows == 1);
    CHECK(qg_bucket_stats_window(stats.p, 0, &used, &calls, &window_ms) == QG_OK);
    CHECK(used == 2 && calls == 2 && window_ms == 60050);

    CHECK(qg_limiter_close(limiter.p) == QG_OK);
    CHECK(qg_limiter_try_acquire(limiter.p, "c++", 1, nullptr) == QG_ERR_CLOSED);

    std::printf("C++ header test: %s\n", failures == 0 ? "ok" : "FAILED");
    return failures == 0 ? 0 : 1;
}
