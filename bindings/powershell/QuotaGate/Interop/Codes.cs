// The library's result codes, the fields of its statistics and details, and log levels.
// Part of the module's bridge to libquotagate: see Native.cs.

namespace QuotaGate.Interop
{
    /// <summary>The library's result codes (include/quotagate.h). Never renumbered.</summary>
    public static class ResultCode
    {
        public const uint Ok = 0;
        public const uint NullArgument = 100;
        public const uint InvalidArgument = 101;
        public const uint BufferTooSmall = 102;
        public const uint Panic = 103;
        public const uint NotFound = 104;
        public const uint Done = 105;
        public const uint VersionMismatch = 106;
        public const uint ReentrantCall = 107;
        public const uint Timeout = 200;
        public const uint WouldBlock = 201;
        public const uint Cancelled = 202;
        public const uint Closed = 203;
        public const uint TooManyBuckets = 204;
        public const uint Pending = 205;
        public const uint NotWaiting = 206;
        public const uint Store = 207;
        public const uint HttpStatus = 300;
        public const uint Transport = 301;
        public const uint Throttled = 302;
        public const uint Auth = 303;
        public const uint BodyTooLarge = 304;
        public const uint Paging = 305;
        public const uint Io = 400;

        /// <summary>The library's static description of a code.</summary>
        public static string Describe(uint code)
        {
            return Utf8.FromCString(NativeMethods.qg_result_str(code));
        }
    }

    /// <summary>Counters of a bucket statistics snapshot (QG_STAT_*).</summary>
    public static class StatField
    {
        public const uint AdmittedCalls = 0;
        public const uint AdmittedUnits = 1;
        public const uint WaitedCalls = 2;
        public const uint TotalWaitUs = 3;
        public const uint LongestWaitUs = 4;
        public const uint Timeouts = 5;
        public const uint Cancellations = 6;
        public const uint Refusals = 7;
        public const uint Pauses = 8;
        public const uint PausedForMs = 9;
        public const uint Queued = 10;
        public const uint InFlight = 11;
        public const uint ExpiredHolds = 12;
    }

    /// <summary>Fields of an HTTP error's details (QG_DETAIL_*).</summary>
    public static class DetailField
    {
        public const uint HttpStatus = 0;
        public const uint ServerCode = 1;
        public const uint ServerMessage = 2;
        public const uint Target = 3;
        public const uint RequestId = 4;
        public const uint RetryAfterMs = 5;
        public const uint Attempts = 6;
        /// <summary>The library's whole message, for showing as is.</summary>
        public const uint Summary = 7;
    }

    /// <summary>The library's defaults, asked with <see cref="Native.DefaultValue"/> (QG_DEFAULT_*).</summary>
    public static class DefaultSetting
    {
        public const uint HuntingBudgetPerHourMs = 1;
        public const uint HuntingBudgetPerDayMs = 2;
        public const uint MaxPages = 3;
        public const uint HoldLeaseMs = 4;
        public const uint MaxHoldLeaseMs = 5;
        public const uint MaxBuckets = 6;
        public const uint MaxCalls = 7;
        public const uint AttemptTimeoutMs = 8;
        public const uint ConnectTimeoutMs = 9;
        public const uint MaxAttempts = 10;
        public const uint MaxQuotaWaitMs = 11;
        public const uint MaxBodyBytes = 12;
    }

    /// <summary>Fields of qg_sim_info (QG_SIM_*).</summary>
    public static class SimField
    {
        public const uint Url = 0;
        public const uint Authority = 1;
        public const uint TenantId = 2;
        public const uint ClientId = 3;
        public const uint ClientSecret = 4;
    }

    public enum LogLevel : uint
    {
        Error = 1,
        Warn = 2,
        Info = 3,
        Debug = 4,
        Trace = 5,
    }
}
