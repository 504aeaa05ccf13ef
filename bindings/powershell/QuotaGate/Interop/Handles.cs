// One SafeHandle per native handle, each freed by the library's own free function.
// Part of the module's bridge to libquotagate: see Native.cs.

using Microsoft.Win32.SafeHandles;

namespace QuotaGate.Interop
{
    /// <summary>A native handle that the library frees; zero is "none".</summary>
    public abstract class QgHandle : SafeHandleZeroOrMinusOneIsInvalid
    {
        protected QgHandle() : base(true)
        {
        }
    }

    public sealed class LimiterBuilderHandle : QgHandle
    {
        protected override bool ReleaseHandle() { NativeMethods.qg_limiter_builder_free(handle); return true; }
    }

    public sealed class LimiterHandle : QgHandle
    {
        protected override bool ReleaseHandle() { NativeMethods.qg_limiter_free(handle); return true; }
    }

    public sealed class TicketHandle : QgHandle
    {
        protected override bool ReleaseHandle() { NativeMethods.qg_ticket_free(handle); return true; }
    }

    public sealed class HoldHandle : QgHandle
    {
        protected override bool ReleaseHandle() { NativeMethods.qg_hold_release(handle); return true; }
    }

    public sealed class BucketStatsHandle : QgHandle
    {
        protected override bool ReleaseHandle() { NativeMethods.qg_bucket_stats_free(handle); return true; }
    }

    public sealed class ClientBuilderHandle : QgHandle
    {
        protected override bool ReleaseHandle() { NativeMethods.qg_client_builder_free(handle); return true; }
    }

    public sealed class ClientHandle : QgHandle
    {
        // A token provider's callback, reachable for as long as the native client is: a
        // P/Invoke keeps this handle alive even when its Client wrapper is no longer used.
        internal object KeepAlive;

        protected override bool ReleaseHandle() { NativeMethods.qg_client_free(handle); return true; }
    }

    public sealed class RequestHandle : QgHandle
    {
        protected override bool ReleaseHandle() { NativeMethods.qg_request_free(handle); return true; }
    }

    public sealed class ResponseHandle : QgHandle
    {
        protected override bool ReleaseHandle() { NativeMethods.qg_response_free(handle); return true; }
    }

    public sealed class PagesHandle : QgHandle
    {
        protected override bool ReleaseHandle() { NativeMethods.qg_pages_free(handle); return true; }
    }

    public sealed class SimConfigHandle : QgHandle
    {
        protected override bool ReleaseHandle() { NativeMethods.qg_sim_config_free(handle); return true; }
    }

    public sealed class SimHandle : QgHandle
    {
        protected override bool ReleaseHandle() { NativeMethods.qg_sim_free(handle); return true; }
    }
}
