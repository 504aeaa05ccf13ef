// The QuotaGate module's bridge to libquotagate: P/Invoke declarations, one SafeHandle per
// native handle, UTF-8 strings, result codes as exceptions, and the wrappers the module's
// functions call.
//
// Compiled at import by Add-Type (PowerShell 7.2+, .NET 6+) and, for the tests, by Mono's
// mcs. Keep it to C# 7.2 and to APIs that both runtimes have: NativeLibrary is reached
// through reflection because Mono lacks it, and nothing here references
// System.Management.Automation.

using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Security;
using System.Text;
using System.Threading;
using System.Threading.Tasks;
using Microsoft.Win32.SafeHandles;

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

    /// <summary>Strings cross the boundary as NUL-terminated UTF-8, encoded here.</summary>
    internal static class Utf8
    {
        // Strict: a lone surrogate is an error, not a silent U+FFFD.
        static readonly UTF8Encoding Strict = new UTF8Encoding(false, true);
        // Lenient for text from outside (HTTP headers are not guaranteed UTF-8).
        static readonly UTF8Encoding Lenient = new UTF8Encoding(false, false);

        /// <summary>NUL-terminated UTF-8 bytes of <paramref name="s"/>; null stays null.</summary>
        public static byte[] Encode(string s, string paramName)
        {
            if (s == null)
            {
                return null;
            }
            if (s.IndexOf('\0') >= 0)
            {
                throw new ArgumentException(paramName + " contains a NUL character, which a C string cannot carry", paramName);
            }
            try
            {
                var bytes = new byte[Strict.GetByteCount(s) + 1];
                Strict.GetBytes(s, 0, s.Length, bytes, 0);
                return bytes;
            }
            catch (EncoderFallbackException e)
            {
                throw new ArgumentException(paramName + " is not valid Unicode (it has a lone surrogate)", paramName, e);
            }
        }

        /// <summary>NUL-terminated UTF-8 bytes of a SecureString; the caller clears them.</summary>
        public static byte[] Encode(SecureString s, string paramName)
        {
            if (s == null)
            {
                return null;
            }
            IntPtr p = Marshal.SecureStringToGlobalAllocUnicode(s);
            var chars = new char[s.Length];
            try
            {
                Marshal.Copy(p, chars, 0, chars.Length);
                if (Array.IndexOf(chars, '\0') >= 0)
                {
                    throw new ArgumentException(paramName + " contains a NUL character", paramName);
                }
                var bytes = new byte[Strict.GetByteCount(chars) + 1];
                Strict.GetBytes(chars, 0, chars.Length, bytes, 0);
                return bytes;
            }
            catch (EncoderFallbackException e)
            {
                throw new ArgumentException(paramName + " is not valid Unicode", paramName, e);
            }
            finally
            {
                Array.Clear(chars, 0, chars.Length);
                Marshal.ZeroFreeGlobalAllocUnicode(p);
            }
        }

        public static string Decode(byte[] bytes, int count)
        {
            return Lenient.GetString(bytes, 0, count);
        }

        /// <summary>Copies <paramref name="len"/> bytes at <paramref name="p"/> and decodes them.</summary>
        public static string FromPointer(IntPtr p, long len)
        {
            if (p == IntPtr.Zero || len == 0)
            {
                return string.Empty;
            }
            var bytes = Bytes(p, len);
            return Lenient.GetString(bytes);
        }

        public static byte[] Bytes(IntPtr p, long len)
        {
            if (len > int.MaxValue)
            {
                throw new InvalidOperationException("a native buffer is larger than 2 GiB");
            }
            var bytes = new byte[len];
            if (len > 0)
            {
                Marshal.Copy(p, bytes, 0, (int)len);
            }
            return bytes;
        }

        /// <summary>Copies and decodes a NUL-terminated string; NULL gives null.</summary>
        public static string FromCString(IntPtr p)
        {
            if (p == IntPtr.Zero)
            {
                return null;
            }
            int len = 0;
            while (Marshal.ReadByte(p, len) != 0)
            {
                len++;
            }
            return FromPointer(p, len);
        }

        internal delegate uint BufferCall(byte[] buf, UIntPtr len, out UIntPtr written);

        /// <summary>
        /// Runs a (buf, len, written) getter twice: once to learn the size, once to copy.
        /// Returns OK with the text, or the first code that is not BUFFER_TOO_SMALL.
        /// </summary>
        public static uint ReadBuffer(BufferCall call, out string text)
        {
            text = null;
            UIntPtr needed;
            uint rc = call(null, UIntPtr.Zero, out needed);
            // The size can only change between calls for live objects; a few tries suffice.
            for (int attempt = 0; rc == ResultCode.BufferTooSmall && attempt < 4; attempt++)
            {
                var buf = new byte[checked((int)needed.ToUInt64() + 1)];
                UIntPtr written;
                rc = call(buf, new UIntPtr((uint)buf.Length), out written);
                if (rc == ResultCode.Ok)
                {
                    text = Decode(buf, (int)written.ToUInt64());
                }
                needed = written;
            }
            return rc;
        }
    }

    /// <summary>Loads the native library and turns result codes into exceptions.</summary>
    public static class Native
    {
        /// <summary>The header version this file was written against (QG_VERSION_NUMBER).</summary>
        public const uint ExpectedVersionNumber = 1000;

        static readonly object Gate = new object();
        static string loadedPath;
        static IntPtr libraryHandle;
        static Delegate resolver; // kept alive for as long as the runtime may call it

        /// <summary>The absolute path the library was loaded from, or null.</summary>
        public static string LibraryPath
        {
            get { return loadedPath; }
        }

        /// <summary>
        /// Loads libquotagate from an absolute path, so that the [DllImport("quotagate")]
        /// declarations bind to exactly that file, whatever the loader's search path holds.
        /// A process loads the library once; loading the same path again does nothing.
        /// On Mono, call it before any method that calls into the library is compiled: Mono
        /// binds a P/Invoke when its caller is compiled (and may inline small callers).
        /// </summary>
        public static void Load(string path)
        {
            Load(path, ExpectedVersionNumber);
        }

        /// <summary>
        /// Loads as <see cref="Load(string)"/>, checking the library against
        /// <paramref name="expectedVersionNumber"/>; the tests give a version no library serves.
        /// </summary>
        internal static void Load(string path, uint expectedVersionNumber)
        {
            if (string.IsNullOrEmpty(path))
            {
                throw new ArgumentException("the library path is empty", "path");
            }
            string full = Path.GetFullPath(path);
            lock (Gate)
            {
                if (loadedPath != null)
                {
                    if (!string.Equals(loadedPath, full, StringComparison.Ordinal))
                    {
                        throw new InvalidOperationException(
                            "libquotagate is already loaded from '" + loadedPath + "'; a process loads it once, so '" +
                            full + "' needs a new session");
                    }
                    return;
                }
                if (!File.Exists(full))
                {
                    throw new FileNotFoundException("the quotagate library is not at '" + full + "'", full);
                }
                Type nativeLibrary = typeof(object).Assembly.GetType("System.Runtime.InteropServices.NativeLibrary");
                if (nativeLibrary != null)
                {
                    LoadWithNativeLibrary(nativeLibrary, full);
                }
                else if (Type.GetType("Mono.Runtime") != null)
                {
                    LoadWithMono(full);
                }
                else
                {
                    // .NET Framework: Windows reuses a loaded module for a DllImport of its base name.
                    libraryHandle = OsLoader.Open(full);
                }
                // Checked before the path is recorded: a library that fails the check is
                // checked again (and refused again) by every later Load, never used.
                CheckVersion(full, expectedVersionNumber);
                loadedPath = full;
            }
        }

        static void LoadWithNativeLibrary(Type nativeLibrary, string path)
        {
            MethodInfo load = nativeLibrary.GetMethod("Load", new[] { typeof(string) });
            try
            {
                libraryHandle = (IntPtr)load.Invoke(null, new object[] { path });
            }
            catch (TargetInvocationException e)
            {
                throw new DllNotFoundException("cannot load '" + path + "': " + e.InnerException.Message, e.InnerException);
            }
            if (resolver != null)
            {
                return; // set by an earlier Load whose version check failed; it reads libraryHandle
            }
            Type resolverType = typeof(object).Assembly.GetType("System.Runtime.InteropServices.DllImportResolver", true);
            MethodInfo set = nativeLibrary.GetMethod("SetDllImportResolver", new[] { typeof(Assembly), resolverType });
            MethodInfo resolve = typeof(Native).GetMethod("Resolve", BindingFlags.NonPublic | BindingFlags.Static);
            resolver = Delegate.CreateDelegate(resolverType, resolve);
            set.Invoke(null, new object[] { typeof(Native).Assembly, resolver });
        }

        static IntPtr Resolve(string libraryName, Assembly assembly, DllImportSearchPath? searchPath)
        {
            return libraryName == NativeMethods.Library ? libraryHandle : IntPtr.Zero;
        }

        static void LoadWithMono(string path)
        {
            // Loading by path first turns a bad file into the loader's own error text.
            libraryHandle = OsLoader.Open(path);
            // The dynamic loader matches an already loaded library by SONAME, which a Rust
            // cdylib lacks, so map the DllImport name to the path: a <dllmap> set at run time.
            MonoRuntime.mono_dllmap_insert(IntPtr.Zero, Utf8.Encode(NativeMethods.Library, "dll"), null,
                Utf8.Encode(path, "path"), null);
        }

        // Not inlined: on Mono a P/Invoke binds when its caller is compiled, which must be
        // after Load has mapped the library.
        [MethodImpl(MethodImplOptions.NoInlining)]
        static void CheckVersion(string path, uint expectedVersionNumber)
        {
            // The library decides whether it serves this header version (docs/abi.md).
            uint rc;
            try
            {
                rc = NativeMethods.qg_version_compatible(expectedVersionNumber);
            }
            catch (EntryPointNotFoundException)
            {
                throw new InvalidOperationException(
                    "libquotagate at '" + path + "' is version " + Version +
                    ", older than this module can use (written for " + expectedVersionNumber + ")");
            }
            if (rc != ResultCode.Ok)
            {
                throw new InvalidOperationException(LastErrorMessage() + " (library at '" + path + "')");
            }
        }

        /// <summary>The optional parts the loaded library was built with ("sim", "pfx", "redis").</summary>
        public static string[] Features
        {
            get
            {
                uint mask = NativeMethods.qg_features();
                var names = new List<string>();
                for (int shift = 0; shift < 32; shift++)
                {
                    uint bit = 1u << shift;
                    IntPtr name = (mask & bit) != 0 ? NativeMethods.qg_feature_name(bit) : IntPtr.Zero;
                    if (name != IntPtr.Zero)
                    {
                        names.Add(Utf8.FromCString(name));
                    }
                }
                return names.ToArray();
            }
        }

        /// <summary>Throws NotSupportedException, naming the feature, when the library lacks it.</summary>
        public static void RequireFeature(string feature, string what)
        {
            string[] built = Features;
            if (Array.IndexOf(built, feature) < 0)
            {
                throw new NotSupportedException(
                    what + " needs the feature '" + feature + "', which the library at '" + loadedPath +
                    "' was built without (it has: " + (built.Length == 0 ? "none" : string.Join(", ", built)) + ")");
            }
        }

        /// <summary>The loaded library's version string, e.g. "0.1.0".</summary>
        public static string Version
        {
            get { return Utf8.FromCString(NativeMethods.qg_version()); }
        }

        public static uint VersionNumber
        {
            get { return NativeMethods.qg_version_number(); }
        }

        /// <summary>The calling thread's last error text.</summary>
        public static string LastErrorMessage()
        {
            string text;
            uint rc = Utf8.ReadBuffer(NativeMethods.qg_last_error_message, out text);
            return rc == ResultCode.Ok ? text : string.Empty;
        }

        /// <summary>Throws the library's error for a failed call; must run on the failing thread.</summary>
        public static void Check(uint code)
        {
            if (code != ResultCode.Ok)
            {
                throw Error(code, false);
            }
        }

        /// <summary>As <see cref="Check"/>, adding the HTTP details of a failed client call.</summary>
        public static void CheckClient(uint code)
        {
            if (code != ResultCode.Ok)
            {
                throw Error(code, true);
            }
        }

        /// <summary>The exception for a failed call, built from the thread's last error;
        /// <paramref name="cause"/> (the token provider's exception) adds its message.</summary>
        public static QuotaGateException Error(uint code, bool withDetails, Exception cause = null)
        {
            // The message first: reading details never replaces it, but be safe.
            string message = LastErrorMessage();
            if (string.IsNullOrEmpty(message))
            {
                message = ResultCode.Describe(code);
            }
            if (cause != null)
            {
                Exception inner = cause.GetBaseException() ?? cause;
                message += ": " + (string.IsNullOrEmpty(inner.Message) ? inner.GetType().Name : inner.Message);
            }
            var e = new QuotaGateException(code, message, cause);
            if (withDetails)
            {
                e.SetDetails(LastErrorDetail);
            }
            return e;
        }

        static string LastErrorDetail(uint field)
        {
            string text;
            uint rc = Utf8.ReadBuffer(
                (byte[] buf, UIntPtr len, out UIntPtr written) => NativeMethods.qg_last_error_detail(field, buf, len, out written),
                out text);
            return rc == ResultCode.Ok ? text : null;
        }
    }

    /// <summary>The operating system's loader, for loading the library by absolute path.</summary>
    internal static class OsLoader
    {
        const int RTLD_NOW = 2;

        [DllImport("kernel32", EntryPoint = "LoadLibraryW", CharSet = CharSet.Unicode, SetLastError = true)]
        static extern IntPtr LoadLibraryW(string path);

        [DllImport("libdl.so.2", EntryPoint = "dlopen")]
        static extern IntPtr DlopenLinux(byte[] path, int flags);

        [DllImport("libdl.so.2", EntryPoint = "dlerror")]
        static extern IntPtr DlerrorLinux();

        [DllImport("/usr/lib/libSystem.B.dylib", EntryPoint = "dlopen")]
        static extern IntPtr DlopenMac(byte[] path, int flags);

        [DllImport("/usr/lib/libSystem.B.dylib", EntryPoint = "dlerror")]
        static extern IntPtr DlerrorMac();

        public static IntPtr Open(string path)
        {
            if (Path.DirectorySeparatorChar == '\\')
            {
                IntPtr h = LoadLibraryW(path);
                if (h == IntPtr.Zero)
                {
                    throw new DllNotFoundException("cannot load '" + path + "': " +
                        new System.ComponentModel.Win32Exception(Marshal.GetLastWin32Error()).Message);
                }
                return h;
            }
            byte[] utf8 = Utf8.Encode(path, "path");
            IntPtr handle;
            string error;
            try
            {
                handle = DlopenLinux(utf8, RTLD_NOW);
                error = handle == IntPtr.Zero ? Utf8.FromCString(DlerrorLinux()) : null;
            }
            catch (DllNotFoundException)
            {
                handle = DlopenMac(utf8, RTLD_NOW);
                error = handle == IntPtr.Zero ? Utf8.FromCString(DlerrorMac()) : null;
            }
            if (handle == IntPtr.Zero)
            {
                throw new DllNotFoundException("cannot load '" + path + "': " + error);
            }
            return handle;
        }
    }

    internal static class MonoRuntime
    {
        // Mono's embedding API, exported by the mono executable itself.
        [DllImport("__Internal")]
        public static extern void mono_dllmap_insert(IntPtr assembly, byte[] dll, byte[] func, byte[] targetDll, byte[] targetFunc);
    }

    // ----- handles -------------------------------------------------------------------------

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

    // ----- declarations --------------------------------------------------------------------

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    internal delegate void LogCallback(uint level, IntPtr message, IntPtr userData);

    /// <summary>qg_token_fn: the pointers stay IntPtr so that nothing is marshalled back by the runtime.</summary>
    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    internal delegate uint TokenCallback(IntPtr userData, IntPtr tokenBuf, UIntPtr tokenLen, IntPtr tokenWritten, IntPtr expiresInMs);

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
        public static extern void qg_string_free(IntPtr s);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_set_logger(LogCallback fn, uint maxLevel, IntPtr userData);

        // limiter builder
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_limiter_builder_new(out LimiterBuilderHandle builder);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_limiter_builder_add_rate(LimiterBuilderHandle b, uint calls, ulong windowMs);
        [DllImport(Library, CallingConvention = Cdecl)]
        public static extern uint qg_limiter_builder_set_margin(LimiterBuilderHandle b, ulong marginMs);
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
        public static extern uint qg_sim_config_set_limit(SimConfigHandle c, byte[] endpointClass, uint calls, double windowSeconds);
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

    // ----- limiter -------------------------------------------------------------------------

    /// <summary>A rate: at most <see cref="Calls"/> calls in any window of <see cref="WindowMs"/> ms.</summary>
    public sealed class Rate
    {
        public Rate(uint calls, ulong windowMs)
        {
            Calls = calls;
            WindowMs = windowMs;
        }

        public uint Calls { get; private set; }

        public ulong WindowMs { get; private set; }

        public override string ToString()
        {
            return Calls + "/" + (WindowMs % 1000 == 0 ? (WindowMs / 1000) + "s" : WindowMs + "ms");
        }
    }

    /// <summary>One window of a statistics snapshot.</summary>
    public sealed class WindowUsage
    {
        public ulong Used { get; internal set; }
        public ulong Calls { get; internal set; }
        public ulong WindowMs { get; internal set; }

        public override string ToString()
        {
            return Used + "/" + Calls + " in " + WindowMs + " ms";
        }
    }

    /// <summary>A copied snapshot of one bucket's statistics.</summary>
    public sealed class BucketStatistics
    {
        public string Key { get; internal set; }
        public ulong AdmittedCalls { get; internal set; }
        public ulong AdmittedUnits { get; internal set; }
        public ulong WaitedCalls { get; internal set; }
        public double TotalWaitMs { get; internal set; }
        public double LongestWaitMs { get; internal set; }
        public ulong Timeouts { get; internal set; }
        public ulong Cancellations { get; internal set; }
        public ulong Refusals { get; internal set; }
        public ulong Pauses { get; internal set; }
        public ulong PausedForMs { get; internal set; }
        public ulong Queued { get; internal set; }
        /// <summary>Units of holds not yet released; they count in every window.</summary>
        public ulong InFlight { get; internal set; }
        /// <summary>Holds not released within their lease (counted from the lease's end).</summary>
        public ulong ExpiredHolds { get; internal set; }
        public WindowUsage[] Windows { get; internal set; }

        internal static BucketStatistics Read(BucketStatsHandle s, string key)
        {
            Func<uint, ulong> get = field =>
            {
                ulong v;
                Native.Check(NativeMethods.qg_bucket_stats_get(s, field, out v));
                return v;
            };
            var stats = new BucketStatistics
            {
                Key = key,
                AdmittedCalls = get(StatField.AdmittedCalls),
                AdmittedUnits = get(StatField.AdmittedUnits),
                WaitedCalls = get(StatField.WaitedCalls),
                TotalWaitMs = get(StatField.TotalWaitUs) / 1000.0,
                LongestWaitMs = get(StatField.LongestWaitUs) / 1000.0,
                Timeouts = get(StatField.Timeouts),
                Cancellations = get(StatField.Cancellations),
                Refusals = get(StatField.Refusals),
                Pauses = get(StatField.Pauses),
                PausedForMs = get(StatField.PausedForMs),
                Queued = get(StatField.Queued),
                InFlight = get(StatField.InFlight),
                ExpiredHolds = get(StatField.ExpiredHolds),
            };
            UIntPtr count;
            Native.Check(NativeMethods.qg_bucket_stats_window_count(s, out count));
            var windows = new WindowUsage[(int)count.ToUInt64()];
            for (int i = 0; i < windows.Length; i++)
            {
                ulong used, calls, windowMs;
                Native.Check(NativeMethods.qg_bucket_stats_window(s, new UIntPtr((uint)i), out used, out calls, out windowMs));
                windows[i] = new WindowUsage { Used = used, Calls = calls, WindowMs = windowMs };
            }
            stats.Windows = windows;
            return stats;
        }
    }

    /// <summary>A place in a bucket's queue; wait on it in slices.</summary>
    public sealed class Ticket : IDisposable
    {
        readonly TicketHandle handle;

        internal Ticket(TicketHandle handle)
        {
            this.handle = handle;
        }

        public TicketHandle Handle
        {
            get { return handle; }
        }

        /// <summary>
        /// Waits at most <paramref name="sliceMs"/> ms (negative: without limit). True once
        /// admitted, false when the slice ran out with the place kept; throws on timeout,
        /// cancellation or a closed limiter.
        /// </summary>
        public bool Wait(long sliceMs)
        {
            uint rc = NativeMethods.qg_ticket_wait(handle, sliceMs);
            if (rc == ResultCode.Pending)
            {
                return false;
            }
            Native.Check(rc);
            return true;
        }

        /// <summary>Leaves the queue. False when the ticket was no longer waiting.</summary>
        public bool Cancel()
        {
            uint rc = NativeMethods.qg_ticket_cancel(handle);
            if (rc == ResultCode.NotWaiting)
            {
                return false;
            }
            Native.Check(rc);
            return true;
        }

        /// <summary>
        /// The hold of an admitted ticket from <see cref="Limiter.EnqueueHold"/>, once; throws
        /// for a plain ticket, one not admitted yet, or one whose hold was taken.
        /// </summary>
        public Hold TakeHold()
        {
            HoldHandle h;
            Native.Check(NativeMethods.qg_ticket_take_hold(handle, out h));
            return new Hold(h);
        }

        /// <summary>Frees the ticket, giving up its place if it was not admitted (and
        /// releasing an admitted hold that was not taken).</summary>
        public void Dispose()
        {
            handle.Dispose();
        }
    }

    /// <summary>
    /// A call admitted by <see cref="Limiter.Hold(string, uint, long, CancellationToken)"/>:
    /// its units count in every window from admission on, in flight, and from
    /// <see cref="Release"/> (or Dispose) on. Make the call in between and release it when
    /// the answer has come back: a server counts a call when it arrives, so a slot freed one
    /// window after the answer never meets the server's count.
    /// </summary>
    public sealed class Hold : IDisposable
    {
        readonly HoldHandle handle;

        internal Hold(HoldHandle handle)
        {
            this.handle = handle;
        }

        /// <summary>True until released.</summary>
        public bool IsHeld
        {
            get { return !handle.IsClosed; }
        }

        /// <summary>Ends the hold now: its units count from now on. Idempotent.</summary>
        public void Release()
        {
            handle.Dispose();
        }

        public void Dispose()
        {
            handle.Dispose();
        }
    }

    /// <summary>An exact rolling-window limiter of calls by key, shared by threads and clients.</summary>
    public sealed class Limiter : IDisposable
    {
        /// <summary>How long one native wait lasts before a stop request is checked again.</summary>
        public const int SliceMs = 100;

        readonly LimiterHandle handle;

        internal Limiter(LimiterHandle handle, Rate[] rates)
        {
            this.handle = handle;
            Rates = rates;
        }

        /// <summary>Builds a limiter whose buckets all apply every one of <paramref name="rates"/>.</summary>
        public Limiter(Rate[] rates) : this(rates, 0, 0)
        {
        }

        /// <summary>
        /// Builds a limiter. <paramref name="marginMs"/> widens every window;
        /// <paramref name="maxBuckets"/> caps the buckets held at once (0: the library's default).
        /// </summary>
        public Limiter(Rate[] rates, ulong marginMs, ulong maxBuckets)
            : this(rates, marginMs, maxBuckets, null)
        {
        }

        /// <summary>A limiter whose buckets live in a shared store when <paramref name="store"/>
        /// is a store URL (file:///path or redis://host:6379/0?prefix=qg); in memory when null.</summary>
        public Limiter(Rate[] rates, ulong marginMs, ulong maxBuckets, string store)
            : this(rates, marginMs, maxBuckets, store, 0)
        {
        }

        /// <summary>As above; <paramref name="holdLeaseMs"/> bounds how long a hold may stay
        /// unreleased before it counts from the lease's end (0: the library's default).</summary>
        public Limiter(Rate[] rates, ulong marginMs, ulong maxBuckets, string store, ulong holdLeaseMs)
        {
            if (rates == null)
            {
                throw new ArgumentNullException("rates");
            }
            LimiterBuilderHandle builder;
            Native.Check(NativeMethods.qg_limiter_builder_new(out builder));
            using (builder)
            {
                foreach (Rate r in rates)
                {
                    if (r == null)
                    {
                        throw new ArgumentException("a rate is null", "rates");
                    }
                    Native.Check(NativeMethods.qg_limiter_builder_add_rate(builder, r.Calls, r.WindowMs));
                }
                if (marginMs > 0)
                {
                    Native.Check(NativeMethods.qg_limiter_builder_set_margin(builder, marginMs));
                }
                if (maxBuckets > 0)
                {
                    Native.Check(NativeMethods.qg_limiter_builder_set_max_buckets(builder, new UIntPtr(maxBuckets)));
                }
                if (holdLeaseMs > 0)
                {
                    Native.Check(NativeMethods.qg_limiter_builder_set_hold_lease_ms(builder, holdLeaseMs));
                }
                if (!string.IsNullOrEmpty(store))
                {
                    Native.Check(NativeMethods.qg_limiter_builder_set_store(builder, Utf8.Encode(store, "store")));
                }
                Native.Check(NativeMethods.qg_limiter_builder_build(builder, out handle));
            }
            Rates = (Rate[])rates.Clone();
        }

        public LimiterHandle Handle
        {
            get { return handle; }
        }

        /// <summary>The default rates this limiter was built with.</summary>
        public Rate[] Rates { get; private set; }

        /// <summary>Waits in FIFO order without a way to stop early (a blocking native call).</summary>
        public void Acquire(string key, uint cost, long timeoutMs)
        {
            Native.Check(NativeMethods.qg_limiter_acquire(handle, Utf8.Encode(key, "key"), cost, timeoutMs));
        }

        /// <summary>
        /// Waits in FIFO order, in slices of <see cref="SliceMs"/>; between slices
        /// <paramref name="shouldStop"/> runs on the calling thread, and true gives up the place
        /// and throws <see cref="OperationCanceledException"/>.
        /// </summary>
        public void Acquire(string key, uint cost, long timeoutMs, Func<bool> shouldStop)
        {
            AcquireCore(key, cost, timeoutMs, shouldStop, CancellationToken.None);
        }

        /// <summary>Waits in FIFO order until admitted or until <paramref name="token"/> is cancelled.</summary>
        public void Acquire(string key, uint cost, long timeoutMs, CancellationToken token)
        {
            AcquireCore(key, cost, timeoutMs, null, token);
        }

        void AcquireCore(string key, uint cost, long timeoutMs, Func<bool> shouldStop, CancellationToken token)
        {
            token.ThrowIfCancellationRequested();
            using (Ticket ticket = Enqueue(key, cost, timeoutMs))
            {
                WaitAdmitted(ticket, shouldStop, token);
            }
        }

        /// <summary>
        /// Waits in FIFO order, in slices like <see cref="Acquire(string, uint, long, Func{bool})"/>,
        /// and admits the call as a hold: its units count until the hold is released.
        /// </summary>
        public Hold Hold(string key, uint cost, long timeoutMs, Func<bool> shouldStop)
        {
            return HoldCore(key, cost, timeoutMs, shouldStop, CancellationToken.None);
        }

        /// <summary>Waits like <see cref="Hold(string, uint, long, Func{bool})"/> until admitted
        /// or until <paramref name="token"/> is cancelled.</summary>
        public Hold Hold(string key, uint cost, long timeoutMs, CancellationToken token)
        {
            return HoldCore(key, cost, timeoutMs, null, token);
        }

        Hold HoldCore(string key, uint cost, long timeoutMs, Func<bool> shouldStop, CancellationToken token)
        {
            token.ThrowIfCancellationRequested();
            Ticket ticket = EnqueueHold(key, cost, timeoutMs);
            using (ticket)
            {
                WaitAdmitted(ticket, shouldStop, token);
                return ticket.TakeHold();
            }
        }

        /// <summary>Takes a place in the queue for a hold without waiting; wait on the ticket
        /// in slices, then take the hold with <see cref="Ticket.TakeHold"/>.</summary>
        public Ticket EnqueueHold(string key, uint cost, long timeoutMs)
        {
            TicketHandle t;
            Native.Check(NativeMethods.qg_limiter_enqueue_hold(handle, Utf8.Encode(key, "key"), cost, timeoutMs, out t));
            return new Ticket(t);
        }

        /// <summary>Waits on <paramref name="ticket"/> in slices until admitted; the caller
        /// disposes it.</summary>
        static void WaitAdmitted(Ticket ticket, Func<bool> shouldStop, CancellationToken token)
        {
            using (token.Register(() => CancelQuietly(ticket)))
            {
                while (true)
                {
                    try
                    {
                        if (ticket.Wait(SliceMs))
                        {
                            return;
                        }
                    }
                    catch (QuotaGateException e)
                    {
                        if (e.Code == ResultCode.Cancelled)
                        {
                            throw new OperationCanceledException("the wait for the quota was stopped", e, token);
                        }
                        throw;
                    }
                    if (shouldStop != null && shouldStop() && ticket.Cancel())
                    {
                        throw new OperationCanceledException("the wait for the quota was stopped", token);
                    }
                    // A failed cancel means the ticket stopped waiting meanwhile (admitted,
                    // timed out or closed): the next Wait says which.
                }
            }
        }

        static void CancelQuietly(Ticket ticket)
        {
            try
            {
                ticket.Cancel();
            }
            catch (ObjectDisposedException)
            {
            }
            catch (QuotaGateException)
            {
            }
        }

        /// <summary>Takes a place in the queue without waiting; wait on the ticket in slices.</summary>
        public Ticket Enqueue(string key, uint cost, long timeoutMs)
        {
            TicketHandle t;
            Native.Check(NativeMethods.qg_limiter_enqueue(handle, Utf8.Encode(key, "key"), cost, timeoutMs, out t));
            return new Ticket(t);
        }

        /// <summary>Admits the call now if possible, never waits. True when admitted.</summary>
        public bool TryAcquire(string key, uint cost)
        {
            ulong waitMs;
            return TryAcquire(key, cost, out waitMs);
        }

        /// <summary>
        /// Admits the call now if possible, never waits. False when not admitted, with the
        /// wait the call would need in <paramref name="waitMs"/>.
        /// </summary>
        public bool TryAcquire(string key, uint cost, out ulong waitMs)
        {
            uint rc = NativeMethods.qg_limiter_try_acquire(handle, Utf8.Encode(key, "key"), cost, out waitMs);
            if (rc == ResultCode.WouldBlock)
            {
                return false;
            }
            Native.Check(rc);
            return true;
        }

        /// <summary>Makes every caller of the key's bucket wait <paramref name="durationMs"/> from now.</summary>
        public void Pause(string key, ulong durationMs)
        {
            Native.Check(NativeMethods.qg_limiter_pause(handle, Utf8.Encode(key, "key"), durationMs));
        }

        /// <summary>Gives the key's bucket its own rates, replacing the defaults for it.</summary>
        public void SetRates(string key, Rate[] rates)
        {
            if (rates == null)
            {
                throw new ArgumentNullException("rates");
            }
            var calls = new uint[rates.Length];
            var windows = new ulong[rates.Length];
            for (int i = 0; i < rates.Length; i++)
            {
                calls[i] = rates[i].Calls;
                windows[i] = rates[i].WindowMs;
            }
            Native.Check(NativeMethods.qg_limiter_set_rates(handle, Utf8.Encode(key, "key"), calls, windows, new UIntPtr((uint)rates.Length)));
        }

        /// <summary>A copied snapshot of the key's bucket statistics.</summary>
        public BucketStatistics GetStatistics(string key)
        {
            BucketStatsHandle s;
            Native.Check(NativeMethods.qg_limiter_stats(handle, Utf8.Encode(key, "key"), out s));
            using (s)
            {
                return BucketStatistics.Read(s, key);
            }
        }

        /// <summary>Wakes every waiter with a "closed" error; later calls fail the same way.</summary>
        public void Close()
        {
            Native.Check(NativeMethods.qg_limiter_close(handle));
        }

        /// <summary>Releases this reference; clients built with the limiter keep theirs.</summary>
        public void Dispose()
        {
            handle.Dispose();
        }
    }

    /// <summary>
    /// Turns a PowerShell command's Stopping flag (Ctrl+C) into a CancellationToken, without
    /// a reference to System.Management.Automation: the flag is read through reflection on a
    /// timer, so a blocked native call can be cancelled from another thread.
    /// </summary>
    public sealed class StopSignal : IDisposable
    {
        readonly CancellationTokenSource source = new CancellationTokenSource();
        readonly Func<bool> isStopping;
        readonly Timer timer;

        /// <summary>Watches <paramref name="command"/>'s public bool property "Stopping" (e.g. $PSCmdlet).</summary>
        public StopSignal(object command) : this(ReadStopping(command))
        {
        }

        public StopSignal(Func<bool> isStopping)
        {
            if (isStopping == null)
            {
                throw new ArgumentNullException("isStopping");
            }
            this.isStopping = isStopping;
            timer = new Timer(Poll, null, Limiter.SliceMs, Limiter.SliceMs);
        }

        public CancellationToken Token
        {
            get { return source.Token; }
        }

        /// <summary>A Func that reads <paramref name="command"/>'s "Stopping" property.</summary>
        public static Func<bool> ReadStopping(object command)
        {
            if (command == null)
            {
                throw new ArgumentNullException("command");
            }
            PropertyInfo p = command.GetType().GetProperty("Stopping", BindingFlags.Public | BindingFlags.Instance);
            if (p == null || p.PropertyType != typeof(bool))
            {
                throw new ArgumentException(command.GetType().FullName + " has no bool property Stopping", "command");
            }
            return () => (bool)p.GetValue(command, null);
        }

        void Poll(object state)
        {
            try
            {
                if (!source.IsCancellationRequested && isStopping())
                {
                    source.Cancel();
                }
            }
            catch (ObjectDisposedException)
            {
            }
        }

        public void Dispose()
        {
            timer.Dispose();
            source.Dispose();
        }
    }

    // ----- client --------------------------------------------------------------------------

    /// <summary>A per-route rate: calls matching the method and path pattern share a bucket.</summary>
    public sealed class Route
    {
        public Route(string method, string pathPattern, Rate rate)
        {
            Method = method;
            PathPattern = pathPattern;
            Rate = rate;
        }

        /// <summary>
        /// A route from "METHOD /path/pattern" or "/path/pattern" (any method), as the
        /// PowerShell module takes routes and in-flight caps; the library checks both parts.
        /// </summary>
        public static Route Parse(string target, Rate rate)
        {
            string method, pattern;
            SplitTarget(target, out method, out pattern);
            return new Route(method, pattern, rate);
        }

        internal static void SplitTarget(string target, out string method, out string pattern)
        {
            if (target == null)
            {
                throw new ArgumentNullException("target");
            }
            string t = target.Trim();
            int space = t.IndexOfAny(new[] { ' ', '\t' });
            if (space < 0)
            {
                method = null;
                pattern = t;
                return;
            }
            method = t.Substring(0, space).ToUpperInvariant();
            pattern = t.Substring(space + 1).Trim();
        }

        /// <summary>HTTP method, or null for any.</summary>
        public string Method { get; private set; }
        /// <summary>A path such as "/api/machines/*/isolate".</summary>
        public string PathPattern { get; private set; }
        public Rate Rate { get; private set; }
    }

    /// <summary>A cap on the calls of a route under way at once (qg_client_builder_set_max_in_flight).</summary>
    public sealed class InFlightCap
    {
        public InFlightCap(string method, string pathPattern, uint maxInFlight)
        {
            Method = method;
            PathPattern = pathPattern;
            MaxInFlight = maxInFlight;
        }

        /// <summary>HTTP method, or null for any.</summary>
        public string Method { get; private set; }
        /// <summary>A path such as "/api/machines/{id}/runliveresponse".</summary>
        public string PathPattern { get; private set; }
        /// <summary>0 lifts the cap.</summary>
        public uint MaxInFlight { get; private set; }

        /// <summary>A cap from "METHOD /path/pattern" or "/path/pattern" (any method).</summary>
        public static InFlightCap Parse(string target, uint maxInFlight)
        {
            string method, pattern;
            Route.SplitTarget(target, out method, out pattern);
            return new InFlightCap(method, pattern, maxInFlight);
        }
    }

    /// <summary>How client assertions are signed (QG_ASSERTION_*).</summary>
    public enum AssertionAlgorithm : uint
    {
        /// <summary>RSASSA-PSS with the x5t#S256 header; the default.</summary>
        PS256 = 0,
        /// <summary>RSASSA-PKCS1-v1_5 with the x5t header, for older identity platforms.</summary>
        RS256 = 1,
    }

    /// <summary>What a hunting query does when the run-time budget is spent (QG_HUNTING_BUDGET_*).</summary>
    public enum HuntingBudgetPolicy : uint
    {
        /// <summary>Wait until run time frees up, within the quota-wait budget; the default.</summary>
        Wait = 0,
        /// <summary>Fail at once with a throttled error whose server code is HuntingBudgetSpent.</summary>
        Fail = 1,
    }

    /// <summary>
    /// Bridges a managed token source to qg_token_fn: calls it, copies the UTF-8 token into
    /// the library's buffer (asking for a larger one when it does not fit), and turns every
    /// exception into a failure code with the exception's message, since nothing may unwind
    /// into native code. The library calls it one at a time per client.
    /// </summary>
    public sealed class TokenProvider
    {
        // The library asks again "at once" after BUFFER_TOO_SMALL; a token kept longer than
        // this is fetched anew rather than reused.
        const long PendingMaxAgeMs = 5000;
        static readonly UTF8Encoding StrictUtf8 = new UTF8Encoding(false, true);

        readonly Func<Tuple<string, double>> source;
        readonly object gate = new object();
        byte[] pending;
        ulong pendingExpiresMs;
        readonly Stopwatch pendingAge = new Stopwatch();
        int calls;

        /// <summary><paramref name="source"/> returns the token and its remaining lifetime in seconds.</summary>
        public TokenProvider(Func<Tuple<string, double>> source)
        {
            if (source == null)
            {
                throw new ArgumentNullException("source");
            }
            this.source = source;
            Callback = Invoke;
        }

        /// <summary>The delegate handed to the library; it lives as long as this object.</summary>
        internal TokenCallback Callback { get; private set; }

        /// <summary>How many times the source was called.</summary>
        public int Calls
        {
            get { return Volatile.Read(ref calls); }
        }

        /// <summary>The last exception the source threw (or the last invalid answer), or null.</summary>
        public Exception LastError { get; private set; }

        uint Invoke(IntPtr userData, IntPtr tokenBuf, UIntPtr tokenLen, IntPtr tokenWritten, IntPtr expiresInMs)
        {
            try
            {
                lock (gate)
                {
                    ulong len = tokenLen.ToUInt64();
                    // After BUFFER_TOO_SMALL the library calls again at once: hand over the
                    // same token rather than asking the source for another.
                    bool retry = pending != null && pendingAge.IsRunning && pendingAge.ElapsedMilliseconds <= PendingMaxAgeMs;
                    if (!retry)
                    {
                        Fetch();
                    }
                    if ((ulong)pending.Length > len)
                    {
                        WriteSize(tokenWritten, (ulong)pending.Length);
                        return ResultCode.BufferTooSmall;
                    }
                    try
                    {
                        Marshal.Copy(pending, 0, tokenBuf, pending.Length);
                        WriteSize(tokenWritten, (ulong)pending.Length);
                        Marshal.WriteInt64(expiresInMs, (long)pendingExpiresMs);
                        LastError = null;
                    }
                    finally
                    {
                        Forget();
                    }
                    return ResultCode.Ok;
                }
            }
            catch (Exception e)
            {
                try
                {
                    lock (gate)
                    {
                        Forget();
                    }
                    // The library never reads the buffer of a failed call: the reason
                    // travels on this side, in LastError.
                    LastError = e;
                }
                catch (Exception)
                {
                }
                return ResultCode.Auth;
            }
        }

        void Fetch()
        {
            Forget();
            Interlocked.Increment(ref calls);
            Tuple<string, double> answer = source();
            if (answer == null || string.IsNullOrEmpty(answer.Item1))
            {
                throw new InvalidOperationException("the token provider returned no token");
            }
            double seconds = answer.Item2;
            if (double.IsNaN(seconds) || seconds <= 0)
            {
                throw new InvalidOperationException("the token provider's expires-in must be above 0 seconds, not " + seconds);
            }
            double ms = Math.Ceiling(seconds * 1000);
            pendingExpiresMs = ms >= long.MaxValue ? long.MaxValue : (ulong)ms;
            if (answer.Item1.IndexOf('\0') >= 0)
            {
                throw new InvalidOperationException("the token provider's token contains a NUL character");
            }
            try
            {
                pending = StrictUtf8.GetBytes(answer.Item1);
            }
            catch (EncoderFallbackException)
            {
                throw new InvalidOperationException("the token provider's token is not valid Unicode");
            }
            pendingAge.Restart();
        }

        void Forget()
        {
            if (pending != null)
            {
                Array.Clear(pending, 0, pending.Length);
                pending = null;
            }
            pendingAge.Reset();
        }

        static void WriteSize(IntPtr p, ulong value)
        {
            if (IntPtr.Size == 8)
            {
                Marshal.WriteInt64(p, (long)value);
            }
            else
            {
                Marshal.WriteInt32(p, (int)value);
            }
        }
    }

    /// <summary>Everything a client can be built with; unset values keep the library's defaults.</summary>
    public sealed class ClientOptions
    {
        public ClientOptions()
        {
            DefaultRates = new List<Rate>();
            Routes = new List<Route>();
            MaxInFlight = new List<InFlightCap>();
        }

        /// <summary>A cloud preset: commercial, us, eu, uk, au, swa, ina, aea, gcc, gcc-high, dod.</summary>
        public string Cloud { get; set; }
        /// <summary>PEM certificate file (with the key too when <see cref="PrivateKeyPath"/> is null).</summary>
        public string CertificatePath { get; set; }
        /// <summary>PEM private key file of <see cref="CertificatePath"/> (PKCS#8 or PKCS#1, unencrypted).</summary>
        public string PrivateKeyPath { get; set; }
        /// <summary>PEM certificate text (with the key too when <see cref="PrivateKeyPem"/> is null).</summary>
        public string CertificatePem { get; set; }
        /// <summary>PEM private key text of <see cref="CertificatePem"/>.</summary>
        public SecureString PrivateKeyPem { get; set; }
        /// <summary>A PKCS#12/PFX file holding the key and its certificate.</summary>
        public string PfxPath { get; set; }
        /// <summary>The password of <see cref="PfxPath"/>; null is empty.</summary>
        public SecureString PfxPassword { get; set; }
        public AssertionAlgorithm? AssertionAlgorithm { get; set; }
        /// <summary>Returns a token and its remaining lifetime in seconds; called when a token is needed.</summary>
        public Func<Tuple<string, double>> TokenProvider { get; set; }
        public List<InFlightCap> MaxInFlight { get; private set; }
        /// <summary>Hunting run time allowed per rolling hour (default 600000; 0: off).</summary>
        public ulong? HuntingBudgetPerHourMs { get; set; }
        /// <summary>Hunting run time allowed per rolling day (default 10800000; 0: off).</summary>
        public ulong? HuntingBudgetPerDayMs { get; set; }
        public HuntingBudgetPolicy? HuntingBudgetPolicy { get; set; }

        public string BaseUrl { get; set; }
        public string Authority { get; set; }
        /// <summary>Accept http:// to a host that is not loopback (the secret and tokens then cross the network unencrypted).</summary>
        public bool AllowInsecureHttp { get; set; }
        public string TenantId { get; set; }
        public string ClientId { get; set; }
        public SecureString ClientSecret { get; set; }
        /// <summary>A ready token, instead of tenant, client id and secret.</summary>
        public SecureString AccessToken { get; set; }
        public string Scope { get; set; }
        public string Resource { get; set; }
        /// <summary>Per HTTP attempt.</summary>
        public ulong? TimeoutMs { get; set; }
        public ulong? ConnectTimeoutMs { get; set; }
        public string Proxy { get; set; }
        /// <summary>A store URL that shares the quotas with other processes (file:// or redis://).</summary>
        public string Store { get; set; }
        public ulong? MaxBodyBytes { get; set; }
        /// <summary>The most pages one paging run follows (the library's default when null).</summary>
        public ulong? MaxPages { get; set; }
        public uint? MaxAttempts { get; set; }
        public ulong? MaxQuotaWaitMs { get; set; }
        /// <summary>Widens every window of the client's own limiter (not with <see cref="Limiter"/>).</summary>
        public ulong? MarginMs { get; set; }
        /// <summary>When not empty, replaces the library's default rates.</summary>
        public List<Rate> DefaultRates { get; private set; }
        public List<Route> Routes { get; private set; }
        /// <summary>A limiter to share quotas with other clients.</summary>
        public Limiter Limiter { get; set; }
    }

    /// <summary>An HTTP request to send or to page through.</summary>
    public sealed class Request : IDisposable
    {
        readonly RequestHandle handle;

        public Request(string method, string pathOrUrl)
        {
            Native.Check(NativeMethods.qg_request_new(Utf8.Encode(method, "method"), Utf8.Encode(pathOrUrl, "pathOrUrl"), out handle));
            Method = method;
            Path = pathOrUrl;
        }

        public RequestHandle Handle
        {
            get { return handle; }
        }

        public string Method { get; private set; }
        public string Path { get; private set; }

        /// <summary>Adds a query parameter; the library percent-encodes it.</summary>
        public Request AddQuery(string name, string value)
        {
            Native.Check(NativeMethods.qg_request_add_query(handle, Utf8.Encode(name, "name"), Utf8.Encode(value, "value")));
            return this;
        }

        public Request SetHeader(string name, string value)
        {
            Native.Check(NativeMethods.qg_request_set_header(handle, Utf8.Encode(name, "name"), Utf8.Encode(value, "value")));
            return this;
        }

        /// <summary>Sets a text body, sent as UTF-8; content type null means application/json.</summary>
        public Request SetBody(string body, string contentType)
        {
            byte[] bytes = body == null ? new byte[0] : new UTF8Encoding(false, true).GetBytes(body);
            return SetBody(bytes, contentType);
        }

        public Request SetBody(byte[] body, string contentType)
        {
            if (body == null)
            {
                throw new ArgumentNullException("body");
            }
            Native.Check(NativeMethods.qg_request_set_body(handle, body, new UIntPtr((uint)body.Length), Utf8.Encode(contentType, "contentType")));
            return this;
        }

        /// <summary>
        /// Bounds everything a send of this request does (the quota wait, the token fetch,
        /// every attempt and retry) to <paramref name="deadlineMs"/> from its start; with
        /// paging, all pages together. Past it the send fails with ResultCode.Timeout.
        /// Negative: no deadline.
        /// </summary>
        public Request SetDeadline(long deadlineMs)
        {
            Native.Check(NativeMethods.qg_request_set_deadline_ms(handle, deadlineMs));
            return this;
        }

        /// <summary>Makes a send or page in progress with this request end as cancelled.</summary>
        public void Cancel()
        {
            Native.Check(NativeMethods.qg_request_cancel(handle));
        }

        internal void CancelQuietly()
        {
            try
            {
                Cancel();
            }
            catch (ObjectDisposedException)
            {
            }
            catch (QuotaGateException)
            {
            }
        }

        public void Dispose()
        {
            handle.Dispose();
        }
    }

    /// <summary>A final HTTP answer, copied out of the native response.</summary>
    public sealed class Response
    {
        /// <summary>Copies everything the module needs and frees the native response.</summary>
        internal Response(ResponseHandle r)
        {
            using (r)
            {
                ushort status;
                Native.Check(NativeMethods.qg_response_status(r, out status));
                Status = status;
                uint attempts;
                Native.Check(NativeMethods.qg_response_attempts(r, out attempts));
                Attempts = attempts;
                // Body and header bytes are borrowed from r: copy them before it is freed.
                IntPtr data;
                UIntPtr len;
                Native.Check(NativeMethods.qg_response_body(r, out data, out len));
                Body = Utf8.Bytes(data, (long)len.ToUInt64());
                UIntPtr count;
                Native.Check(NativeMethods.qg_response_header_count(r, out count));
                Headers = new KeyValuePair<string, string>[(int)count.ToUInt64()];
                for (int i = 0; i < Headers.Length; i++)
                {
                    IntPtr name, value;
                    UIntPtr nameLen, valueLen;
                    Native.Check(NativeMethods.qg_response_header_at(r, new UIntPtr((uint)i), out name, out nameLen, out value, out valueLen));
                    Headers[i] = new KeyValuePair<string, string>(
                        Utf8.FromPointer(name, (long)nameLen.ToUInt64()), Utf8.FromPointer(value, (long)valueLen.ToUInt64()));
                }
                ContentType = ReadHeader(r, "Content-Type");
                if (status >= 400)
                {
                    Func<uint, string> read = field => ReadDetail(r, field);
                    Error = new QuotaGateException(ResultCode.HttpStatus,
                        ErrorMessage(status, read(DetailField.ServerCode), read(DetailField.ServerMessage), read(DetailField.Target)));
                    Error.SetDetails(read);
                }
            }
        }

        static string ReadHeader(ResponseHandle r, string name)
        {
            IntPtr value;
            UIntPtr len;
            uint rc = NativeMethods.qg_response_header(r, Utf8.Encode(name, "name"), out value, out len);
            if (rc == ResultCode.NotFound)
            {
                return null;
            }
            Native.Check(rc);
            return Utf8.FromPointer(value, (long)len.ToUInt64());
        }

        static string ReadDetail(ResponseHandle r, uint field)
        {
            string text;
            uint rc = Utf8.ReadBuffer(
                (byte[] buf, UIntPtr len, out UIntPtr written) => NativeMethods.qg_response_error_detail(r, field, buf, len, out written),
                out text);
            if (rc == ResultCode.NotFound)
            {
                return null;
            }
            Native.Check(rc);
            return string.IsNullOrEmpty(text) ? null : text;
        }

        static string ErrorMessage(int status, string serverCode, string serverMessage, string target)
        {
            var sb = new StringBuilder("the server answered HTTP ").Append(status);
            if (serverCode != null)
            {
                sb.Append(' ').Append(serverCode);
            }
            if (serverMessage != null)
            {
                sb.Append(": ").Append(serverMessage);
            }
            if (target != null)
            {
                sb.Append(" (correlation id ").Append(target).Append(')');
            }
            return sb.ToString();
        }

        public int Status { get; private set; }
        public uint Attempts { get; private set; }
        public byte[] Body { get; private set; }
        public string ContentType { get; private set; }
        public KeyValuePair<string, string>[] Headers { get; private set; }

        /// <summary>For a status of 400 and above: the error with the server's details; else null.</summary>
        public QuotaGateException Error { get; private set; }

        public bool IsSuccess
        {
            get { return Status < 400; }
        }

        public string BodyText
        {
            get { return Utf8.Decode(Body, Body.Length); }
        }

        /// <summary>The first header of that name (case-insensitive), or null.</summary>
        public string Header(string name)
        {
            foreach (var h in Headers)
            {
                if (string.Equals(h.Key, name, StringComparison.OrdinalIgnoreCase))
                {
                    return h.Value;
                }
            }
            return null;
        }

        /// <summary>Throws <see cref="Error"/> for an error status.</summary>
        public Response EnsureSuccess()
        {
            if (Error != null)
            {
                throw Error;
            }
            return this;
        }
    }

    /// <summary>A throttling-aware client of the Defender API; thread-safe, share it.</summary>
    public sealed class Client : IDisposable
    {
        readonly ClientHandle handle;
        // The token provider's delegate: the library calls it for as long as the client lives.
        readonly TokenProvider tokenProvider;

        public Client(ClientOptions options)
        {
            if (options == null)
            {
                throw new ArgumentNullException("options");
            }
            ClientBuilderHandle b;
            Native.Check(NativeMethods.qg_client_builder_new(out b));
            using (b)
            {
                // The cloud first: the explicit URLs below override its parts in any order, but
                // an unknown name should fail before anything else is checked.
                SetText(b, NativeMethods.qg_client_builder_set_cloud, options.Cloud, "Cloud");
                SetText(b, NativeMethods.qg_client_builder_set_base_url, options.BaseUrl, "BaseUrl");
                SetText(b, NativeMethods.qg_client_builder_set_authority, options.Authority, "Authority");
                Native.Check(NativeMethods.qg_client_builder_set_allow_insecure_http(b, options.AllowInsecureHttp ? 1u : 0u));
                SetText(b, NativeMethods.qg_client_builder_set_tenant_id, options.TenantId, "TenantId");
                SetText(b, NativeMethods.qg_client_builder_set_client_id, options.ClientId, "ClientId");
                SetSecret(b, NativeMethods.qg_client_builder_set_client_secret, options.ClientSecret, "ClientSecret");
                SetSecret(b, NativeMethods.qg_client_builder_set_access_token, options.AccessToken, "AccessToken");
                SetCertificate(b, options);
                if (options.AssertionAlgorithm.HasValue)
                {
                    Native.Check(NativeMethods.qg_client_builder_set_assertion_algorithm(b, (uint)options.AssertionAlgorithm.Value));
                }
                if (options.TokenProvider != null)
                {
                    tokenProvider = new TokenProvider(options.TokenProvider);
                    Native.Check(NativeMethods.qg_client_builder_set_token_provider(b, tokenProvider.Callback, IntPtr.Zero));
                }
                SetText(b, NativeMethods.qg_client_builder_set_scope, options.Scope, "Scope");
                SetText(b, NativeMethods.qg_client_builder_set_resource, options.Resource, "Resource");
                SetText(b, NativeMethods.qg_client_builder_set_proxy, options.Proxy, "Proxy");
                SetText(b, NativeMethods.qg_client_builder_set_store, options.Store, "Store");
                if (options.TimeoutMs.HasValue)
                {
                    Native.Check(NativeMethods.qg_client_builder_set_timeout_ms(b, options.TimeoutMs.Value));
                }
                if (options.ConnectTimeoutMs.HasValue)
                {
                    Native.Check(NativeMethods.qg_client_builder_set_connect_timeout_ms(b, options.ConnectTimeoutMs.Value));
                }
                if (options.MaxPages.HasValue)
                {
                    Native.Check(NativeMethods.qg_client_builder_set_max_pages(b, options.MaxPages.Value));
                }
                if (options.MaxBodyBytes.HasValue)
                {
                    Native.Check(NativeMethods.qg_client_builder_set_max_body_bytes(b, options.MaxBodyBytes.Value));
                }
                if (options.MaxAttempts.HasValue)
                {
                    Native.Check(NativeMethods.qg_client_builder_set_max_attempts(b, options.MaxAttempts.Value));
                }
                if (options.MaxQuotaWaitMs.HasValue)
                {
                    Native.Check(NativeMethods.qg_client_builder_set_max_quota_wait_ms(b, options.MaxQuotaWaitMs.Value));
                }
                if (options.MarginMs.HasValue)
                {
                    Native.Check(NativeMethods.qg_client_builder_set_margin_ms(b, options.MarginMs.Value));
                }
                foreach (Rate r in options.DefaultRates)
                {
                    Native.Check(NativeMethods.qg_client_builder_add_default_rate(b, r.Calls, r.WindowMs));
                }
                foreach (Route r in options.Routes)
                {
                    Native.Check(NativeMethods.qg_client_builder_add_route(b, Utf8.Encode(r.Method, "Method"),
                        Utf8.Encode(r.PathPattern, "PathPattern"), r.Rate.Calls, r.Rate.WindowMs));
                }
                foreach (InFlightCap cap in options.MaxInFlight)
                {
                    Native.Check(NativeMethods.qg_client_builder_set_max_in_flight(b, Utf8.Encode(cap.Method, "Method"),
                        Utf8.Encode(cap.PathPattern, "PathPattern"), cap.MaxInFlight));
                }
                if (options.HuntingBudgetPerHourMs.HasValue || options.HuntingBudgetPerDayMs.HasValue)
                {
                    Native.Check(NativeMethods.qg_client_builder_set_hunting_budget_ms(b,
                        options.HuntingBudgetPerHourMs ?? 600000UL, options.HuntingBudgetPerDayMs ?? 10800000UL));
                }
                if (options.HuntingBudgetPolicy.HasValue)
                {
                    Native.Check(NativeMethods.qg_client_builder_set_hunting_budget_policy(b, (uint)options.HuntingBudgetPolicy.Value));
                }
                if (options.Limiter != null)
                {
                    Native.Check(NativeMethods.qg_client_builder_set_limiter(b, options.Limiter.Handle));
                }
                Native.Check(NativeMethods.qg_client_builder_build(b, out handle));
                handle.KeepAlive = tokenProvider;
            }
            BaseUrl = options.BaseUrl;
            TenantId = options.TenantId;
            ClientId = options.ClientId;
            Cloud = options.Cloud;
            Authority = options.Authority;
            Store = options.Store;
            AuthMethod = AuthMethodOf(options);
        }

        static string AuthMethodOf(ClientOptions o)
        {
            if (o.TokenProvider != null)
            {
                return "TokenProvider";
            }
            if (o.AccessToken != null)
            {
                return "AccessToken";
            }
            if (o.CertificatePath != null || o.CertificatePem != null || o.PfxPath != null)
            {
                return "Certificate";
            }
            return o.ClientSecret != null ? "ClientSecret" : null;
        }

        delegate uint TextSetter(ClientBuilderHandle b, byte[] value);

        static void SetCertificate(ClientBuilderHandle b, ClientOptions o)
        {
            int kinds = (o.CertificatePath != null ? 1 : 0) + (o.CertificatePem != null ? 1 : 0) + (o.PfxPath != null ? 1 : 0);
            if (kinds > 1)
            {
                throw new ArgumentException("give one of CertificatePath, CertificatePem and PfxPath");
            }
            if (o.CertificatePath != null)
            {
                Native.Check(NativeMethods.qg_client_builder_set_certificate_pem_files(b,
                    Utf8.Encode(o.CertificatePath, "CertificatePath"), Utf8.Encode(o.PrivateKeyPath, "PrivateKeyPath")));
            }
            else if (o.CertificatePem != null)
            {
                byte[] key = Utf8.Encode(o.PrivateKeyPem, "PrivateKeyPem");
                try
                {
                    Native.Check(NativeMethods.qg_client_builder_set_certificate_pem(b, Utf8.Encode(o.CertificatePem, "CertificatePem"), key));
                }
                finally
                {
                    if (key != null)
                    {
                        Array.Clear(key, 0, key.Length);
                    }
                }
            }
            else if (o.PfxPath != null)
            {
                byte[] password = Utf8.Encode(o.PfxPassword, "PfxPassword");
                try
                {
                    Native.Check(NativeMethods.qg_client_builder_set_certificate_pfx_file(b, Utf8.Encode(o.PfxPath, "PfxPath"), password));
                }
                finally
                {
                    if (password != null)
                    {
                        Array.Clear(password, 0, password.Length);
                    }
                }
            }
            else if (o.PrivateKeyPath != null || o.PrivateKeyPem != null || o.PfxPassword != null)
            {
                throw new ArgumentException("a private key or PFX password was given without its certificate");
            }
        }

        static void SetText(ClientBuilderHandle b, TextSetter set, string value, string name)
        {
            if (value != null)
            {
                Native.Check(set(b, Utf8.Encode(value, name)));
            }
        }

        static void SetSecret(ClientBuilderHandle b, TextSetter set, SecureString value, string name)
        {
            if (value == null)
            {
                return;
            }
            byte[] bytes = Utf8.Encode(value, name);
            try
            {
                Native.Check(set(b, bytes));
            }
            finally
            {
                Array.Clear(bytes, 0, bytes.Length);
            }
        }

        public ClientHandle Handle
        {
            get { return handle; }
        }

        /// <summary>The base URL given, or null for the cloud's.</summary>
        public string BaseUrl { get; private set; }
        public string TenantId { get; private set; }
        public string ClientId { get; private set; }
        /// <summary>The cloud given, or null for the library's default.</summary>
        public string Cloud { get; private set; }
        /// <summary>The login authority given, or null for the cloud's.</summary>
        public string Authority { get; private set; }
        /// <summary>The store URL that shares the quotas, or null for this process alone.</summary>
        public string Store { get; private set; }
        /// <summary>How the client signs in: ClientSecret, Certificate, AccessToken or TokenProvider.</summary>
        public string AuthMethod { get; private set; }

        /// <summary>The token provider bridge, when the client was built with one; else null.</summary>
        public TokenProvider TokenProvider
        {
            get { return tokenProvider; }
        }

        /// <summary>
        /// Sends the request through the quota, with retries; returns the final answer of any
        /// status. Cancelling <paramref name="token"/> cancels the request.
        /// </summary>
        public Response Send(Request request, CancellationToken token)
        {
            if (request == null)
            {
                throw new ArgumentNullException("request");
            }
            token.ThrowIfCancellationRequested();
            ResponseHandle r;
            uint rc;
            using (token.Register(request.CancelQuietly))
            {
                rc = NativeMethods.qg_client_send(handle, request.Handle, out r);
            }
            ThrowClient(rc, token);
            return new Response(r);
        }

        public Response Send(Request request)
        {
            return Send(request, CancellationToken.None);
        }

        /// <summary>Sends a request built from a method, a path (or URL) and an optional JSON body.</summary>
        public Response Send(string method, string pathOrUrl, string jsonBody, CancellationToken token)
        {
            using (var request = new Request(method, pathOrUrl))
            {
                if (jsonBody != null)
                {
                    request.SetBody(jsonBody, null);
                }
                return Send(request, token);
            }
        }

        /// <summary>
        /// The items of "value" over every page, as JSON text, following @odata.nextLink.
        /// The request stays owned by the caller and must outlive the enumeration.
        /// </summary>
        public IEnumerable<string> Items(Request first, CancellationToken token)
        {
            if (first == null)
            {
                throw new ArgumentNullException("first");
            }
            return ItemsIterator(first, token);
        }

        IEnumerable<string> ItemsIterator(Request first, CancellationToken token)
        {
            PagesHandle pages;
            ThrowClient(NativeMethods.qg_client_pages(handle, first.Handle, out pages), token);
            using (pages)
            using (token.Register(first.CancelQuietly))
            {
                while (true)
                {
                    IntPtr item;
                    uint rc = NativeMethods.qg_pages_next_item(pages, out item);
                    if (rc == ResultCode.Done)
                    {
                        yield break;
                    }
                    ThrowClient(rc, token);
                    yield return NativeMethods.TakeString(item);
                }
            }
        }

        /// <summary>Every page as a response, following @odata.nextLink.</summary>
        public IEnumerable<Response> Pages(Request first, CancellationToken token)
        {
            if (first == null)
            {
                throw new ArgumentNullException("first");
            }
            return PagesIterator(first, token);
        }

        IEnumerable<Response> PagesIterator(Request first, CancellationToken token)
        {
            PagesHandle pages;
            ThrowClient(NativeMethods.qg_client_pages(handle, first.Handle, out pages), token);
            using (pages)
            using (token.Register(first.CancelQuietly))
            {
                while (true)
                {
                    ResponseHandle page;
                    uint rc = NativeMethods.qg_pages_next(pages, out page);
                    if (rc == ResultCode.Done)
                    {
                        yield break;
                    }
                    ThrowClient(rc, token);
                    yield return new Response(page);
                }
            }
        }

        void ThrowClient(uint rc, CancellationToken token)
        {
            if (rc == ResultCode.Ok)
            {
                return;
            }
            // A failed token provider's reason never passes through the library.
            Exception cause = rc == ResultCode.Auth && tokenProvider != null ? tokenProvider.LastError : null;
            QuotaGateException e = Native.Error(rc, true, cause);
            if (rc == ResultCode.Cancelled && token.IsCancellationRequested)
            {
                throw new OperationCanceledException(e.Message, e, token);
            }
            throw e;
        }

        /// <summary>The client's counters as JSON (requests, retries, throttled, buckets, ...).</summary>
        public string StatisticsJson()
        {
            IntPtr json;
            Native.Check(NativeMethods.qg_client_stats_json(handle, out json));
            return NativeMethods.TakeString(json);
        }

        /// <summary>Ends waits and sends in progress with a "closed" error; later calls fail.</summary>
        public void Close()
        {
            Native.Check(NativeMethods.qg_client_close(handle));
        }

        public void Dispose()
        {
            handle.Dispose();
        }
    }

    /// <summary>
    /// A blocking call (a send, the next item of a list) run on a worker thread, so that a
    /// PowerShell thread can wait in slices and show logs and progress while the call waits
    /// for its quota. The worker's log records go to the given session. A client with a
    /// token provider runs the call on the caller's thread instead: its script block must
    /// run on its own runspace's thread.
    /// </summary>
    public sealed class SlicedCall<T>
    {
        readonly Task<T> task;
        readonly Request request;

        internal SlicedCall(Func<T> body, Request request, LogSession session, bool inline)
        {
            this.request = request;
            if (inline)
            {
                if (session != null)
                {
                    session.Bind();
                }
                var done = new TaskCompletionSource<T>();
                try
                {
                    done.SetResult(body());
                }
                catch (Exception e)
                {
                    done.SetException(e);
                }
                task = done.Task;
                return;
            }
            task = Task.Run(() =>
            {
                if (session != null)
                {
                    session.Bind();
                }
                try
                {
                    return body();
                }
                finally
                {
                    Log.Current = null;
                }
            });
        }

        /// <summary>Waits at most <paramref name="sliceMs"/> ms; true once the call has ended.</summary>
        public bool Wait(int sliceMs)
        {
            return ((IAsyncResult)task).AsyncWaitHandle.WaitOne(sliceMs);
        }

        /// <summary>
        /// Cancels the request of a call still under way and waits for it to end: for a
        /// cmdlet that stops (Ctrl+C, Select-Object -First) before the call returns.
        /// </summary>
        public void Stop()
        {
            if (!task.IsCompleted)
            {
                request.CancelQuietly();
                Wait(Timeout.Infinite);
            }
        }

        /// <summary>The call's result; waits for it, and throws the call's own exception.</summary>
        public T GetResult()
        {
            return task.GetAwaiter().GetResult();
        }
    }

    public static class SlicedCall
    {
        /// <summary>Sends <paramref name="request"/> on a worker thread (see <see cref="SlicedCall{T}"/>).</summary>
        public static SlicedCall<Response> Send(Client client, Request request, CancellationToken token, LogSession session)
        {
            if (client == null || request == null)
            {
                throw new ArgumentNullException(client == null ? "client" : "request");
            }
            return new SlicedCall<Response>(() => client.Send(request, token), request, session, client.TokenProvider != null);
        }

        /// <summary>
        /// Moves <paramref name="items"/>, from <see cref="Client.Items"/> of
        /// <paramref name="first"/>, on a worker thread; true when there is a next item.
        /// </summary>
        public static SlicedCall<bool> MoveNext(Client client, Request first, IEnumerator<string> items, LogSession session)
        {
            if (client == null || first == null || items == null)
            {
                throw new ArgumentNullException(client == null ? "client" : first == null ? "first" : "items");
            }
            return new SlicedCall<bool>(items.MoveNext, first, session, client.TokenProvider != null);
        }
    }

    // ----- simulator -----------------------------------------------------------------------

    /// <summary>One quota of the simulator: calls per window for an endpoint class.</summary>
    public sealed class SimulatorLimit
    {
        public SimulatorLimit(string endpointClass, uint calls, double windowSeconds)
        {
            EndpointClass = endpointClass;
            Calls = calls;
            WindowSeconds = windowSeconds;
        }

        /// <summary>"default", "hunting", ...; null means "default".</summary>
        public string EndpointClass { get; private set; }
        public uint Calls { get; private set; }
        public double WindowSeconds { get; private set; }
    }

    /// <summary>How the simulator tells a throttled client when to come back (QG_SIM_RETRY_AFTER_*).</summary>
    public enum RetryAfterStyle : uint
    {
        /// <summary>Retry-After in whole seconds (the service's usual answer).</summary>
        Seconds = 0,
        /// <summary>Retry-After as an HTTP date.</summary>
        HttpDate = 1,
        /// <summary>retry-after-ms.</summary>
        Milliseconds = 2,
        /// <summary>x-ms-retry-after-ms.</summary>
        XMsMilliseconds = 3,
        /// <summary>No header; the limit only in the error message, as advanced hunting does.</summary>
        BodyOnly = 4,
        /// <summary>No hint at all.</summary>
        None = 5,
    }

    public sealed class SimulatorOptions
    {
        public SimulatorOptions()
        {
            Limits = new List<SimulatorLimit>();
            CertificateClients = new Dictionary<string, string>();
        }

        public uint? Machines { get; set; }
        /// <summary>0.01 makes a 60 s window last 600 ms.</summary>
        public double? TimeScale { get; set; }
        public ulong? TokenLifetimeMs { get; set; }
        public double Error503Rate { get; set; }
        public double ResetRate { get; set; }
        public ulong LatencyMs { get; set; }
        /// <summary>The most real ms a request waits on its way in, before it is counted (at most 10000).</summary>
        public ulong? InboundJitterMs { get; set; }
        public RetryAfterStyle? RetryAfterStyle { get; set; }
        /// <summary>Applications that sign in with a certificate: client id to PEM certificate text.</summary>
        public Dictionary<string, string> CertificateClients { get; private set; }
        /// <summary>How long runliveresponse takes to answer, in ms of API time.</summary>
        public ulong? LiveResponseDelayMs { get; set; }
        /// <summary>The first limit given for a class replaces its built-in limits.</summary>
        public List<SimulatorLimit> Limits { get; private set; }
        /// <summary>0: any free port.</summary>
        public ushort Port { get; set; }
    }

    /// <summary>The library's local simulator of the Defender API, for offline use and tests.</summary>
    public sealed class Simulator : IDisposable
    {
        readonly SimHandle handle;

        public Simulator(SimulatorOptions options)
        {
            if (options == null)
            {
                throw new ArgumentNullException("options");
            }
            Native.RequireFeature("sim", "the simulator");
            SimConfigHandle c;
            Native.Check(NativeMethods.qg_sim_config_new(out c));
            using (c)
            {
                if (options.Machines.HasValue)
                {
                    Native.Check(NativeMethods.qg_sim_config_set_machines(c, options.Machines.Value));
                }
                if (options.TimeScale.HasValue)
                {
                    Native.Check(NativeMethods.qg_sim_config_set_time_scale(c, options.TimeScale.Value));
                }
                if (options.TokenLifetimeMs.HasValue)
                {
                    Native.Check(NativeMethods.qg_sim_config_set_token_lifetime_ms(c, options.TokenLifetimeMs.Value));
                }
                if (options.Error503Rate > 0 || options.ResetRate > 0 || options.LatencyMs > 0)
                {
                    Native.Check(NativeMethods.qg_sim_config_set_faults(c, options.Error503Rate, options.ResetRate, options.LatencyMs));
                }
                if (options.InboundJitterMs.HasValue)
                {
                    Native.Check(NativeMethods.qg_sim_config_set_inbound_jitter_ms(c, options.InboundJitterMs.Value));
                }
                if (options.RetryAfterStyle.HasValue)
                {
                    Native.Check(NativeMethods.qg_sim_config_set_retry_after_style(c, (uint)options.RetryAfterStyle.Value));
                }
                foreach (KeyValuePair<string, string> app in options.CertificateClients)
                {
                    Native.Check(NativeMethods.qg_sim_config_add_certificate_client(c, Utf8.Encode(app.Key, "client id"),
                        Utf8.Encode(app.Value, "certificate")));
                }
                if (options.LiveResponseDelayMs.HasValue)
                {
                    Native.Check(NativeMethods.qg_sim_config_set_live_response_delay_ms(c, options.LiveResponseDelayMs.Value));
                }
                foreach (SimulatorLimit l in options.Limits)
                {
                    Native.Check(NativeMethods.qg_sim_config_set_limit(c, Utf8.Encode(l.EndpointClass, "EndpointClass"), l.Calls, l.WindowSeconds));
                }
                Native.Check(NativeMethods.qg_sim_start(c, options.Port, out handle));
            }
            Url = Info(SimField.Url);
            Authority = Info(SimField.Authority);
            TenantId = Info(SimField.TenantId);
            ClientId = Info(SimField.ClientId);
        }

        string Info(uint field)
        {
            string text;
            uint rc = Utf8.ReadBuffer(
                (byte[] buf, UIntPtr len, out UIntPtr written) => NativeMethods.qg_sim_info(handle, field, buf, len, out written),
                out text);
            Native.Check(rc);
            return text;
        }

        public SimHandle Handle
        {
            get { return handle; }
        }

        /// <summary>A token for <paramref name="clientId"/> without a token request, for tests of token providers.</summary>
        public string IssueToken(string clientId)
        {
            byte[] id = Utf8.Encode(clientId, "clientId");
            string text;
            uint rc = Utf8.ReadBuffer(
                (byte[] buf, UIntPtr len, out UIntPtr written) => NativeMethods.qg_sim_issue_token(handle, id, buf, len, out written),
                out text);
            Native.Check(rc);
            return text;
        }

        public string Url { get; private set; }
        public string Authority { get; private set; }
        public string TenantId { get; private set; }
        public string ClientId { get; private set; }

        /// <summary>The client secret the simulator accepts, read when asked.</summary>
        public SecureString ClientSecret
        {
            get
            {
                var s = new SecureString();
                foreach (char ch in Info(SimField.ClientSecret))
                {
                    s.AppendChar(ch);
                }
                s.MakeReadOnly();
                return s;
            }
        }

        /// <summary>Every request the simulator saw, as a JSON array.</summary>
        public string LogJson()
        {
            IntPtr json;
            Native.Check(NativeMethods.qg_sim_log_json(handle, out json));
            return NativeMethods.TakeString(json);
        }

        /// <summary>The simulator's counters as a JSON object.</summary>
        public string StatisticsJson()
        {
            IntPtr json;
            Native.Check(NativeMethods.qg_sim_stats_json(handle, out json));
            return NativeMethods.TakeString(json);
        }

        public void Stop()
        {
            Native.Check(NativeMethods.qg_sim_stop(handle));
        }

        /// <summary>Stops the simulator if it still runs, and frees it.</summary>
        public void Dispose()
        {
            if (!handle.IsClosed && !handle.IsInvalid)
            {
                NativeMethods.qg_sim_stop(handle);
            }
            handle.Dispose();
        }
    }

    // ----- logging -------------------------------------------------------------------------

    public sealed class LogRecord
    {
        public LogRecord(LogLevel level, string message)
        {
            Level = level;
            Message = message;
            Time = DateTime.Now;
        }

        public LogLevel Level { get; private set; }
        public string Message { get; private set; }
        public DateTime Time { get; private set; }

        /// <summary>
        /// The PowerShell stream the record belongs in: "Warning" for errors and warnings,
        /// which a script must see without -Verbose; "Verbose" for info (waits, retries);
        /// "Debug" for debug and trace.
        /// </summary>
        public string Stream
        {
            get
            {
                if (Level <= LogLevel.Warn)
                {
                    return "Warning";
                }
                return Level == LogLevel.Info ? "Verbose" : "Debug";
            }
        }

        public override string ToString()
        {
            return Level + ": " + Message;
        }
    }

    /// <summary>
    /// The records of one reader (a PowerShell runspace): a bounded queue of what the
    /// library logged on the threads bound to it. Dispose it when the reader goes; the
    /// library's logger is stopped when the last session closes.
    /// </summary>
    public sealed class LogSession : IDisposable
    {
        readonly ConcurrentQueue<LogRecord> queue = new ConcurrentQueue<LogRecord>();
        int dropped;
        int closed;

        internal LogSession(LogLevel maxLevel)
        {
            MaxLevel = maxLevel;
        }

        public LogLevel MaxLevel { get; private set; }

        public bool IsClosed
        {
            get { return Volatile.Read(ref closed) != 0; }
        }

        /// <summary>Records dropped because the queue was full.</summary>
        public int Dropped
        {
            get { return Volatile.Read(ref dropped); }
        }

        /// <summary>Sends what the library logs on the calling thread to this session.</summary>
        public void Bind()
        {
            Log.Current = this;
        }

        /// <summary>Takes every queued record, oldest first.</summary>
        public LogRecord[] Drain()
        {
            var records = new List<LogRecord>();
            LogRecord r;
            while (queue.TryDequeue(out r))
            {
                records.Add(r);
            }
            return records.ToArray();
        }

        internal void Add(LogRecord record)
        {
            if (record.Level > MaxLevel || IsClosed)
            {
                return;
            }
            queue.Enqueue(record);
            LogRecord old;
            while (queue.Count > Log.Capacity && queue.TryDequeue(out old))
            {
                Interlocked.Increment(ref dropped);
            }
        }

        public void Dispose()
        {
            if (Interlocked.Exchange(ref closed, 1) == 0)
            {
                Log.Close(this);
            }
        }
    }

    /// <summary>
    /// The library's log (waits, retries, token refreshes), routed to log sessions: a record
    /// goes to the session bound to the thread that logged it, and to every open session
    /// when no session is bound there. The library has one logger per process, so it runs
    /// while at least one session is open (a reference count), at the most detailed level
    /// any open session asks for.
    /// </summary>
    public static class Log
    {
        /// <summary>The most records a session keeps; older ones are dropped first.</summary>
        public const int Capacity = 10000;

        static readonly object Gate = new object();
        static LogSession[] sessions = new LogSession[0];
        // The process-wide session of Start, Stop and Drain.
        static LogSession started;
        // Kept for the life of the process: the library may call it until qg_set_logger(NULL)
        // returns, and a thread may be inside it even then.
        static readonly LogCallback Callback = OnLog;

        [ThreadStatic]
        static LogSession current;

        internal static LogSession Current
        {
            set { current = value; }
        }

        /// <summary>Opens a session of the records up to <paramref name="maxLevel"/>.</summary>
        public static LogSession Open(LogLevel maxLevel)
        {
            var session = new LogSession(maxLevel);
            lock (Gate)
            {
                var next = new LogSession[sessions.Length + 1];
                Array.Copy(sessions, next, sessions.Length);
                next[sessions.Length] = session;
                Apply(next);
            }
            return session;
        }

        internal static void Close(LogSession session)
        {
            lock (Gate)
            {
                Apply(Array.FindAll(sessions, x => !ReferenceEquals(x, session)));
            }
        }

        /// <summary>The open sessions; the logger runs while there is one.</summary>
        public static int OpenSessions
        {
            get { return Volatile.Read(ref sessions).Length; }
        }

        // Under Gate: sets the library's logger for the given sessions, then publishes them.
        static void Apply(LogSession[] next)
        {
            LogLevel max = 0;
            foreach (LogSession x in next)
            {
                if (x.MaxLevel > max)
                {
                    max = x.MaxLevel;
                }
            }
            if (next.Length == 0)
            {
                Native.Check(NativeMethods.qg_set_logger(null, 0, IntPtr.Zero));
            }
            else
            {
                Native.Check(NativeMethods.qg_set_logger(Callback, (uint)max, IntPtr.Zero));
            }
            Volatile.Write(ref sessions, next);
        }

        /// <summary>Starts the process-wide session that <see cref="Drain"/> reads.</summary>
        public static void Start(LogLevel maxLevel)
        {
            lock (Gate)
            {
                if (started == null || started.IsClosed)
                {
                    started = Open(maxLevel);
                }
            }
        }

        /// <summary>Stops the process-wide session; records already queued stay for Drain.</summary>
        public static void Stop()
        {
            LogSession s;
            lock (Gate)
            {
                s = started;
            }
            if (s != null)
            {
                s.Dispose();
            }
        }

        /// <summary>Records the process-wide session dropped because its queue was full.</summary>
        public static int Dropped
        {
            get
            {
                LogSession s = started;
                return s == null ? 0 : s.Dropped;
            }
        }

        /// <summary>Takes every record queued in the process-wide session, oldest first.</summary>
        public static LogRecord[] Drain()
        {
            LogSession s;
            lock (Gate)
            {
                s = started;
                if (s != null && s.IsClosed)
                {
                    started = null;
                }
            }
            return s == null ? new LogRecord[0] : s.Drain();
        }

        static void OnLog(uint level, IntPtr message, IntPtr userData)
        {
            // No exception may unwind into the library.
            try
            {
                var record = new LogRecord((LogLevel)level, Utf8.FromCString(message));
                LogSession mine = current;
                if (mine != null && !mine.IsClosed)
                {
                    mine.Add(record);
                    return;
                }
                foreach (LogSession s in Volatile.Read(ref sessions))
                {
                    s.Add(record);
                }
            }
            catch (Exception)
            {
            }
        }
    }
}
