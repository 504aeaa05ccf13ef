// Result codes as exceptions, and what the module reports of them as error records.
// Part of the module's bridge to libquotagate: see Native.cs.

using System;
using System.Reflection;

namespace QuotaGate.Interop
{
    /// <summary>
    /// A failure reported by libquotagate: its result code, the library's own message, and
    /// for HTTP errors what the server said.
    /// </summary>
    [Serializable]
    public class QuotaGateException : Exception
    {
        public QuotaGateException(uint code, string message) : base(message)
        {
            Code = code;
        }

        public QuotaGateException(uint code, string message, Exception inner) : base(message, inner)
        {
            Code = code;
        }

        /// <summary>The qg_result code (see <see cref="ResultCode"/>).</summary>
        public uint Code { get; private set; }

        /// <summary>The HTTP status of the failed call, when there was an answer.</summary>
        public int? HttpStatus { get; internal set; }

        /// <summary>error.code from the server's answer, e.g. "ResourceNotFound".</summary>
        public string ServerCode { get; internal set; }

        /// <summary>error.message from the server's answer.</summary>
        public string ServerMessage { get; internal set; }

        /// <summary>error.target from the server's answer: the correlation id.</summary>
        public string Target { get; internal set; }

        /// <summary>The request-id header of the answer.</summary>
        public string RequestId { get; internal set; }

        /// <summary>The last Retry-After the server sent, in milliseconds.</summary>
        public long? RetryAfterMs { get; internal set; }

        /// <summary>How many attempts the library made.</summary>
        public int? Attempts { get; internal set; }

        internal void SetDetails(Func<uint, string> read)
        {
            HttpStatus = ParseInt(read(DetailField.HttpStatus));
            ServerCode = EmptyToNull(read(DetailField.ServerCode));
            ServerMessage = EmptyToNull(read(DetailField.ServerMessage));
            Target = EmptyToNull(read(DetailField.Target));
            RequestId = EmptyToNull(read(DetailField.RequestId));
            RetryAfterMs = ParseLong(read(DetailField.RetryAfterMs));
            Attempts = ParseInt(read(DetailField.Attempts));
        }

        static string EmptyToNull(string s)
        {
            return string.IsNullOrEmpty(s) ? null : s;
        }

        static int? ParseInt(string s)
        {
            int v;
            return int.TryParse(s, System.Globalization.NumberStyles.Integer,
                System.Globalization.CultureInfo.InvariantCulture, out v) ? v : (int?)null;
        }

        static long? ParseLong(string s)
        {
            long v;
            return long.TryParse(s, System.Globalization.NumberStyles.Integer,
                System.Globalization.CultureInfo.InvariantCulture, out v) ? v : (long?)null;
        }
    }

    /// <summary>
    /// How a cmdlet reports a failure: the error id, the ErrorCategory name, and whether it
    /// ends the cmdlet or only the current pipeline item. Written here, not in the module,
    /// so that the interop tests check it; PowerShell only builds the ErrorRecord.
    /// </summary>
    public sealed class ErrorReport
    {
        ErrorReport(Exception exception, string id, string category, bool terminating)
        {
            Exception = exception;
            Id = id;
            Category = category;
            Terminating = terminating;
        }

        /// <summary>The exception to put in the record: the library's, when one is in the chain.</summary>
        public Exception Exception { get; private set; }
        /// <summary>The FullyQualifiedErrorId, e.g. "QuotaGate.Http404" or "QuotaGate.Throttled".</summary>
        public string Id { get; private set; }
        /// <summary>The name of a System.Management.Automation.ErrorCategory value.</summary>
        public string Category { get; private set; }
        /// <summary>
        /// True for what no other pipeline item can escape (bad arguments, no connection, a
        /// closed handle, a stop); false for a failed call, which the next item may not repeat.
        /// </summary>
        public bool Terminating { get; private set; }

        /// <summary>
        /// The report of <paramref name="error"/>, looking through the wrappers PowerShell
        /// adds (MethodInvocationException, TargetInvocationException, ...) for the library's
        /// exception first, whatever wraps it.
        /// </summary>
        public static ErrorReport For(Exception error)
        {
            if (error == null)
            {
                throw new ArgumentNullException("error");
            }
            for (Exception e = error; e != null; e = e.InnerException)
            {
                var q = e as QuotaGateException;
                if (q != null)
                {
                    return ForLibrary(q);
                }
            }
            Exception inner = error;
            while (inner.InnerException != null && IsWrapper(inner))
            {
                inner = inner.InnerException;
            }
            string category;
            if (inner is ArgumentException)
            {
                category = "InvalidArgument";
            }
            else if (inner is OperationCanceledException)
            {
                category = "OperationStopped";
            }
            else if (inner is InvalidOperationException || inner is ObjectDisposedException)
            {
                category = "InvalidOperation";
            }
            else if (inner is NotSupportedException)
            {
                category = "NotImplemented";
            }
            else
            {
                category = "NotSpecified";
            }
            return new ErrorReport(inner, "QuotaGate." + inner.GetType().Name, category, true);
        }

        static bool IsWrapper(Exception e)
        {
            if (e is TargetInvocationException || e is AggregateException)
            {
                return true;
            }
            string name = e.GetType().FullName;
            return name == "System.Management.Automation.MethodInvocationException"
                || name == "System.Management.Automation.GetValueInvocationException"
                || name == "System.Management.Automation.SetValueInvocationException"
                || name == "System.Management.Automation.CmdletInvocationException";
        }

        static ErrorReport ForLibrary(QuotaGateException e)
        {
            uint code = e.Code;
            if (code == ResultCode.HttpStatus && e.HttpStatus.HasValue)
            {
                int status = e.HttpStatus.Value;
                string category;
                switch (status)
                {
                    case 400: category = "InvalidArgument"; break;
                    case 401: category = "AuthenticationError"; break;
                    case 403: category = "PermissionDenied"; break;
                    case 404: category = "ObjectNotFound"; break;
                    case 409: category = "ResourceExists"; break;
                    case 429: category = "QuotaExceeded"; break;
                    default: category = status >= 500 ? "ResourceUnavailable" : "InvalidResult"; break;
                }
                return new ErrorReport(e, "QuotaGate.Http" + status, category, false);
            }
            string name = CodeName(code);
            string id = "QuotaGate." + (name ?? "Code" + code);
            switch (code)
            {
                case ResultCode.NullArgument:
                case ResultCode.InvalidArgument:
                    return new ErrorReport(e, id, "InvalidArgument", true);
                case ResultCode.Timeout:
                    return new ErrorReport(e, id, "OperationTimeout", false);
                case ResultCode.Cancelled:
                    return new ErrorReport(e, id, "OperationStopped", true);
                case ResultCode.Closed:
                    return new ErrorReport(e, id, "ResourceUnavailable", true);
                case ResultCode.TooManyBuckets:
                    return new ErrorReport(e, id, "LimitsExceeded", true);
                case ResultCode.Transport:
                    return new ErrorReport(e, id, "ConnectionError", false);
                case ResultCode.Throttled:
                    return new ErrorReport(e, id, "QuotaExceeded", false);
                case ResultCode.Auth:
                    return new ErrorReport(e, id, "AuthenticationError", true);
                case ResultCode.BodyTooLarge:
                    return new ErrorReport(e, id, "LimitsExceeded", false);
                case ResultCode.Store:
                    return new ErrorReport(e, id, "ResourceUnavailable", false);
                default:
                    return new ErrorReport(e, id, "NotSpecified", true);
            }
        }

        static string CodeName(uint code)
        {
            foreach (FieldInfo f in typeof(ResultCode).GetFields(BindingFlags.Public | BindingFlags.Static))
            {
                if (f.IsLiteral && (uint)f.GetRawConstantValue() == code)
                {
                    return f.Name;
                }
            }
            return null;
        }
    }
}
