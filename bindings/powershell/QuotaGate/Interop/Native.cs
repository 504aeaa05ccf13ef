// The QuotaGate module's bridge to libquotagate, in the files of this folder: P/Invoke
// declarations (NativeMethods.cs), one SafeHandle per native handle (Handles.cs), UTF-8
// strings and loading the library (this file), result codes as exceptions (Errors.cs),
// and the wrappers the module's functions call (Limiter.cs, Client.cs, Simulator.cs, ...).
//
// Compiled together at import by Add-Type (PowerShell 7.2+, .NET 6+) and, for the tests,
// by Mono's mcs. Keep them to C# 7.2 and to APIs that both runtimes have: NativeLibrary is
// reached through reflection because Mono lacks it, and nothing here references
// System.Management.Automation.

using System;
using System.Collections.Generic;
using System.IO;
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Security;
using System.Text;

namespace QuotaGate.Interop
{
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

        /// <summary><see cref="ReadBuffer"/>, throwing the library's error for any code but OK.</summary>
        internal static string ReadChecked(BufferCall call)
        {
            string text;
            Native.Check(ReadBuffer(call, out text));
            return text;
        }

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

        /// <summary>The clouds the client builder takes, as the library lists them (qg_cloud_name).</summary>
        public static string[] CloudNames()
        {
            var names = new List<string>();
            for (uint i = 0; ; i++)
            {
                IntPtr name = NativeMethods.qg_cloud_name(new UIntPtr(i));
                if (name == IntPtr.Zero)
                {
                    return names.ToArray();
                }
                names.Add(Utf8.FromCString(name));
            }
        }

        /// <summary>
        /// Whether the library takes <paramref name="name"/> as a cloud (any case, and the
        /// spellings it accepts besides <see cref="CloudNames"/>); throws ArgumentException
        /// with the library's message, which lists the names, when it does not.
        /// </summary>
        public static bool CheckCloud(string name)
        {
            ClientBuilderHandle b;
            Check(NativeMethods.qg_client_builder_new(out b));
            using (b)
            {
                uint rc = NativeMethods.qg_client_builder_set_cloud(b, Utf8.Encode(name, "name"));
                if (rc != ResultCode.Ok)
                {
                    throw new ArgumentException(LastErrorMessage());
                }
            }
            return true;
        }

        /// <summary>The library's default of one setting (a <see cref="DefaultSetting"/>), in the unit its name says.</summary>
        public static ulong DefaultValue(uint which)
        {
            ulong value;
            Check(NativeMethods.qg_default_value(which, out value));
            return value;
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

        /// <summary>Checks a call that hands out a string the library allocated, and takes it.</summary>
        internal static string CheckString(uint code, IntPtr text)
        {
            Check(code);
            return NativeMethods.TakeString(text);
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
}
