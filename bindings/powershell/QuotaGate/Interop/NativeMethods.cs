// The P/Invoke declarations of every C function the module calls (include/quotagate.h).
// Part of the module's bridge to libquotagate: see Native.cs.

using System;
using System.Runtime.InteropServices;

namespace QuotaGate.Interop
{
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    internal delegate void LogCallback(uint level, IntPtr message, IntPtr userData);

    /// <summary>qg_token_fn: the pointers stay IntPtr so that nothing is marshalled back by the runtime.</summary>
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    internal delegate uint TokenCallback(IntPtr userData, IntPtr tokenBuf, UIntPtr tokenLen, IntPtr tokenWritten, IntPtr expiresInMs);

    /// <summary>qg_token_source_fn: hands the token to the sink with qg_token_sink_set.</summary>
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    internal delegate uint TokenSourceCallback(IntPtr userData, IntPtr sink);

    /// <summary>Every C function the module uses, as declared in include/quotagate.h.</summary>
    internal static class NativeMethods
    {
        public const string Library = "quotagate";
        const CallingConvention Cdecl = CallingConvention.Cdecl;

        // errors and version
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_last_error_message(byte[] buf, UIntPtr len, out UIntPtr written);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_last_error_detail(uint field, byte[] buf, UIntPtr len, out UIntPtr written);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern IntPtr qg_result_str(uint code);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern IntPtr qg_version();
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_version_number();
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_version_compatible(uint headerVersion);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_features();
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern IntPtr qg_feature_name(uint bit);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern IntPtr qg_cloud_name(UIntPtr index);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_default_value(uint which, out ulong value);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern void qg_string_free(IntPtr s);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_set_logger(LogCallback fn, uint maxLevel, IntPtr userData);

        // limiter builder
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_limiter_builder_new(out LimiterBuilderHandle builder);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_limiter_builder_add_rate(LimiterBuilderHandle b, uint calls, ulong windowMs);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_limiter_builder_set_margin_ms(LimiterBuilderHandle b, ulong marginMs);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_limiter_builder_set_hold_lease_ms(LimiterBuilderHandle b, ulong leaseMs);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_limiter_builder_set_max_buckets(LimiterBuilderHandle b, UIntPtr maxBuckets);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_limiter_builder_set_store(LimiterBuilderHandle b, byte[] url);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_limiter_builder_build(LimiterBuilderHandle b, out LimiterHandle limiter);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern void qg_limiter_builder_free(IntPtr b);

        // limiter
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_limiter_acquire(LimiterHandle l, byte[] key, uint cost, long timeoutMs);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_limiter_try_acquire(LimiterHandle l, byte[] key, uint cost, out ulong waitMs);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_limiter_enqueue(LimiterHandle l, byte[] key, uint cost, long timeoutMs, out TicketHandle ticket);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_limiter_enqueue_hold(LimiterHandle l, byte[] key, uint cost, long timeoutMs, out TicketHandle ticket);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_limiter_pause(LimiterHandle l, byte[] key, ulong durationMs);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_limiter_set_rates(LimiterHandle l, byte[] key, uint[] calls, ulong[] windowMs, UIntPtr count);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_limiter_stats(LimiterHandle l, byte[] key, out BucketStatsHandle stats);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_limiter_close(LimiterHandle l);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern void qg_limiter_free(IntPtr l);

        // ticket
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_ticket_wait(TicketHandle t, long sliceMs);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_ticket_cancel(TicketHandle t);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_ticket_take_hold(TicketHandle t, out HoldHandle hold);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern void qg_ticket_free(IntPtr t);

        // hold
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern void qg_hold_release(IntPtr h);

        // bucket statistics
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_bucket_stats_get(BucketStatsHandle s, uint field, out ulong value);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_bucket_stats_window_count(BucketStatsHandle s, out UIntPtr count);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_bucket_stats_window(BucketStatsHandle s, UIntPtr index, out ulong used, out ulong calls, out ulong windowMs);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern void qg_bucket_stats_free(IntPtr s);

        // client builder
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_new(out ClientBuilderHandle builder);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_set_base_url(ClientBuilderHandle b, byte[] url);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_set_authority(ClientBuilderHandle b, byte[] url);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_set_allow_insecure_http(ClientBuilderHandle b, uint allow);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_set_max_pages(ClientBuilderHandle b, ulong maxPages);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_set_tenant_id(ClientBuilderHandle b, byte[] tenantId);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_set_cloud(ClientBuilderHandle b, byte[] name);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_set_certificate_pem_files(ClientBuilderHandle b, byte[] certificatePath, byte[] keyPath);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_set_certificate_pem(ClientBuilderHandle b, byte[] certificatePem, byte[] keyPem);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_set_certificate_pfx_file(ClientBuilderHandle b, byte[] path, byte[] password);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_set_assertion_algorithm(ClientBuilderHandle b, uint algorithm);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_set_token_provider(ClientBuilderHandle b, TokenCallback callback, IntPtr userData);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_set_token_source(ClientBuilderHandle b, TokenSourceCallback source, IntPtr userData);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_token_sink_set(IntPtr sink, byte[] token, UIntPtr len, ulong expiresInMs);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_set_certificate_file(ClientBuilderHandle b, byte[] path, byte[] keyPath, byte[] password);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_set_max_in_flight(ClientBuilderHandle b, byte[] method, byte[] pathPattern, uint maxInFlight);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_set_hunting_budget_ms(ClientBuilderHandle b, ulong perHourMs, ulong perDayMs);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_set_hunting_budget_policy(ClientBuilderHandle b, uint policy);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_set_client_id(ClientBuilderHandle b, byte[] clientId);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_set_client_secret(ClientBuilderHandle b, byte[] secret);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_set_access_token(ClientBuilderHandle b, byte[] token);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_set_scope(ClientBuilderHandle b, byte[] scope);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_set_resource(ClientBuilderHandle b, byte[] resource);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_set_timeout_ms(ClientBuilderHandle b, ulong totalMs);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_set_connect_timeout_ms(ClientBuilderHandle b, ulong ms);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_set_proxy(ClientBuilderHandle b, byte[] proxyUrl);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_set_store(ClientBuilderHandle b, byte[] url);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_set_max_body_bytes(ClientBuilderHandle b, ulong n);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_set_max_attempts(ClientBuilderHandle b, uint n);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_set_max_quota_wait_ms(ClientBuilderHandle b, ulong ms);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_set_margin_ms(ClientBuilderHandle b, ulong marginMs);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_add_default_rate(ClientBuilderHandle b, uint calls, ulong windowMs);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_add_route(ClientBuilderHandle b, byte[] method, byte[] pathPattern, uint calls, ulong windowMs);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_set_limiter(ClientBuilderHandle b, LimiterHandle l);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_builder_build(ClientBuilderHandle b, out ClientHandle client);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern void qg_client_builder_free(IntPtr b);

        // request
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_request_new(byte[] method, byte[] pathOrUrl, out RequestHandle request);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_request_add_query(RequestHandle r, byte[] name, byte[] value);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_request_set_header(RequestHandle r, byte[] name, byte[] value);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_request_set_deadline_ms(RequestHandle r, long deadlineMs);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_request_set_body(RequestHandle r, byte[] body, UIntPtr len, byte[] contentType);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_request_cancel(RequestHandle r);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern void qg_request_free(IntPtr r);

        // client, response, pages
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_send(ClientHandle c, RequestHandle r, out ResponseHandle response);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_response_status(ResponseHandle r, out ushort status);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_response_body(ResponseHandle r, out IntPtr data, out UIntPtr len);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_response_header(ResponseHandle r, byte[] name, out IntPtr value, out UIntPtr len);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_response_header_count(ResponseHandle r, out UIntPtr count);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_response_header_at(ResponseHandle r, UIntPtr index, out IntPtr name, out UIntPtr nameLen, out IntPtr value, out UIntPtr valueLen);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_response_attempts(ResponseHandle r, out uint attempts);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_response_error_detail(ResponseHandle r, uint field, byte[] buf, UIntPtr len, out UIntPtr written);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern void qg_response_free(IntPtr r);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_pages(ClientHandle c, RequestHandle first, out PagesHandle pages);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_pages_next(PagesHandle p, out ResponseHandle response);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_pages_next_item(PagesHandle p, out IntPtr itemJson);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern void qg_pages_free(IntPtr p);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_stats_json(ClientHandle c, out IntPtr json);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_client_close(ClientHandle c);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern void qg_client_free(IntPtr c);

        // simulator
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_sim_config_new(out SimConfigHandle config);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_sim_config_set_machines(SimConfigHandle c, uint n);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_sim_config_set_limit_ms(SimConfigHandle c, byte[] endpointClass, uint calls, ulong windowMs);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_sim_config_set_time_scale(SimConfigHandle c, double scale);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_sim_config_set_token_lifetime_ms(SimConfigHandle c, ulong ms);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_sim_config_set_faults(SimConfigHandle c, double error503Rate, double resetRate, ulong latencyMs);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_sim_config_set_inbound_jitter_ms(SimConfigHandle c, ulong jitterMs);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_sim_config_set_retry_after_style(SimConfigHandle c, uint style);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_sim_config_add_certificate_client(SimConfigHandle c, byte[] clientId, byte[] certificatePem);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_sim_config_set_live_response_delay_ms(SimConfigHandle c, ulong ms);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_sim_issue_token(SimHandle s, byte[] clientId, byte[] buf, UIntPtr len, out UIntPtr written);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern void qg_sim_config_free(IntPtr c);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_sim_start(SimConfigHandle c, ushort port, out SimHandle sim);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_sim_info(SimHandle s, uint field, byte[] buf, UIntPtr len, out UIntPtr written);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_sim_log_json(SimHandle s, out IntPtr json);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_sim_stats_json(SimHandle s, out IntPtr json);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_sim_stop(SimHandle s);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern void qg_sim_free(IntPtr s);

        /// <summary>Copies a string the library returned through a char** and frees it.</summary>
        public static string TakeString(IntPtr s)
        {
            try
            {
                return Utf8.FromCString(s);
            }
            finally
            {
                qg_string_free(s);
            }
        }
    }
}
