// Tests of the QuotaGate module's C# interop layer against the real library.
//
// Compiled together with bindings/powershell/QuotaGate/Interop/*.cs, exactly as the
// module ships them, by Mono's mcs (scripts/test-powershell.sh):
//
//   mono InteropTests.exe /path/to/libquotagate.so
//
// Prints one line per test and closes with "N passed, N failed[, N skipped]"; exits 1 on
// any failure.

using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Linq;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Runtime.CompilerServices;
using System.Security;
using System.Text;
using System.Text.RegularExpressions;
using System.Threading;
using QuotaGate.Interop;

namespace QuotaGate.Interop.Tests
{
    sealed class AssertionException : Exception
    {
        public AssertionException(string message) : base(message)
        {
        }
    }

    static class Assert
    {
        public static void True(bool condition, string what)
        {
            if (!condition)
            {
                throw new AssertionException(what);
            }
        }

        public static void Equal<T>(T expected, T actual, string what)
        {
            if (!EqualityComparer<T>.Default.Equals(expected, actual))
            {
                throw new AssertionException(what + ": expected <" + expected + ">, got <" + actual + ">");
            }
        }

        public static T Throws<T>(Action action, string what) where T : Exception
        {
            try
            {
                action();
            }
            catch (T e)
            {
                return e;
            }
            catch (Exception e)
            {
                throw new AssertionException(what + ": expected " + typeof(T).Name + ", got " + e.GetType().Name + ": " + e.Message);
            }
            throw new AssertionException(what + ": expected " + typeof(T).Name + ", nothing was thrown");
        }

        /// <summary>A QuotaGateException with <paramref name="code"/> whose message is the library's.</summary>
        public static QuotaGateException Fails(uint code, string messagePart, Action action, string what)
        {
            var e = Throws<QuotaGateException>(action, what);
            Equal(code, e.Code, what + ": code");
            True(e.Message.Contains(messagePart), what + ": message <" + e.Message + "> should contain <" + messagePart + ">");
            return e;
        }

        public static void Within(Stopwatch sw, long minMs, long maxMs, string what)
        {
            long ms = sw.ElapsedMilliseconds;
            True(ms >= minMs && ms <= maxMs, what + ": took " + ms + " ms, expected " + minMs + ".." + maxMs);
        }
    }

    static class Program
    {
        static int passed, failed, skipped;
        static string libraryPath;

        static void Test(string name, Action body)
        {
            var sw = Stopwatch.StartNew();
            try
            {
                body();
                passed++;
                Console.WriteLine("ok   " + name + " (" + sw.ElapsedMilliseconds + " ms)");
            }
            catch (Exception e)
            {
                failed++;
                Console.WriteLine("FAIL " + name + ": " + e.GetType().Name + ": " + e.Message);
                if (!(e is AssertionException))
                {
                    Console.WriteLine(e.StackTrace);
                }
            }
        }

        static void Skip(string name, string why)
        {
            skipped++;
            Console.WriteLine("SKIPPED: " + name + ": " + why);
        }

        static int Main(string[] args)
        {
            var total = Stopwatch.StartNew();
            libraryPath = args.Length > 0 ? args[0] : Environment.GetEnvironmentVariable("QUOTAGATE_LIBRARY");
            if (string.IsNullOrEmpty(libraryPath))
            {
                Console.Error.WriteLine("usage: mono InteropTests.exe <path to libquotagate>");
                return 2;
            }

            // Loaded here, before any method that calls into the library is compiled: Mono
            // binds a P/Invoke when its caller is compiled, and may inline small callers.
            // A library that fails the version check is refused, and refused again: its path
            // is not recorded, so no later Load takes it as already loaded.
            bool refusedTwice = true;
            for (int i = 0; i < 2; i++)
            {
                try
                {
                    Native.Load(libraryPath, 99000000);
                    refusedTwice = false;
                }
                catch (InvalidOperationException)
                {
                }
                refusedTwice &= Native.LibraryPath == null;
            }
            try
            {
                Native.Load(libraryPath);
            }
            catch (Exception e)
            {
                Console.WriteLine("FAIL loading " + libraryPath + ": " + e);
                Console.WriteLine("0 passed, 1 failed");
                return 1;
            }
            Test("loading: Native.Load binds the DllImports to the given file", LoadsTheLibrary);
            Test("loading: the library decides which header versions it serves", VersionCompatibility);
            Test("loading: a failed version check records no path and fails again", () =>
                Assert.True(refusedTwice, "Load with an unserved version failed twice and recorded no path"));
            Test("features: the optional parts are listed, a missing one is a clear error", Features);
            Test("errors: the library's exception is reported first, through any wrapper, per item or terminating", ErrorReports);
            Test("parity: every builder function of the header is declared in the interop", BuilderParity);
            Test("routes: \"METHOD /pattern\" and \"/pattern\" targets of routes and in-flight caps", RouteTargets);
            LimiterTests();
            if (HasClientAbi())
            {
                ClientTests();
            }
            else
            {
                Skip("client, request, response, paging, simulator and logging tests",
                    "the library does not export the client ABI (qg_client_builder_new)");
            }
            Test("handles: finalizers free forgotten handles without a crash", FinalizersRun);

            Console.WriteLine("interop tests ran in " + total.ElapsedMilliseconds + " ms against " + Native.LibraryPath);
            Console.WriteLine(passed + " passed, " + failed + " failed" + (skipped > 0 ? ", " + skipped + " skipped" : ""));
            return failed == 0 ? 0 : 1;
        }

        // ----- loading and errors ---------------------------------------------------------

        static void LoadsTheLibrary()
        {
            Native.Load(libraryPath); // the same path again does nothing
            Assert.Throws<InvalidOperationException>(() => Native.Load("/nonexistent/libquotagate.so"),
                "a second, different path");
            Assert.True(Regex.IsMatch(Native.Version, @"^\d+\.\d+\.\d+"), "version string " + Native.Version);
            string[] parts = Native.Version.Split('.', '-', '+');
            uint number = uint.Parse(parts[0]) * 1000000 + uint.Parse(parts[1]) * 1000 + uint.Parse(parts[2]);
            Assert.Equal(number, Native.VersionNumber, "qg_version_number matches qg_version");
            Assert.Equal(Native.ExpectedVersionNumber / 1000, Native.VersionNumber / 1000, "major.minor of the header");
            Assert.Equal("success", ResultCode.Describe(ResultCode.Ok), "qg_result_str(QG_OK)");
            Assert.Equal("the limiter or client is closed", ResultCode.Describe(ResultCode.Closed), "qg_result_str(QG_ERR_CLOSED)");
            Assert.Equal("unknown result code", ResultCode.Describe(9999), "qg_result_str(9999)");
        }

        static void VersionCompatibility()
        {
            uint written = Native.ExpectedVersionNumber;
            Assert.Equal(ResultCode.Ok, NativeMethods.qg_version_compatible(written), "the module's own header version");
            foreach (uint other in new[] { written + 1000000, written + 1000, written + 1 })
            {
                Assert.Equal(ResultCode.VersionMismatch, NativeMethods.qg_version_compatible(other), "header " + other);
                Assert.True(Native.LastErrorMessage().Contains("cannot serve a caller built against"),
                    "the library's message: " + Native.LastErrorMessage());
            }
        }

        // include/quotagate.h, found upward from the library (target/<profile>/) or the
        // current directory.
        static string HeaderPath()
        {
            foreach (string start in new[] { Path.GetDirectoryName(Path.GetFullPath(libraryPath)), Directory.GetCurrentDirectory() })
            {
                for (string dir = start; dir != null; dir = Path.GetDirectoryName(dir))
                {
                    string candidate = Path.Combine(dir, "include", "quotagate.h");
                    if (File.Exists(candidate))
                    {
                        return candidate;
                    }
                }
            }
            throw new AssertionException("include/quotagate.h not found above " + libraryPath);
        }

        static void BuilderParity()
        {
            string header = File.ReadAllText(HeaderPath());
            var inHeader = new SortedSet<string>(Regex.Matches(header, @"\b(qg_(?:client|limiter)_builder_\w+)\s*\(")
                .Cast<Match>().Select(m => m.Groups[1].Value));
            Assert.True(inHeader.Count > 20, "the header's builder functions: " + inHeader.Count);
            var declared = new HashSet<string>(typeof(NativeMethods)
                .GetMethods(BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Static).Select(m => m.Name));
            // A deprecated function's replacement is what the interop declares.
            var deprecated = new HashSet<string>(Regex.Matches(header, @"Deprecated:(?:(?!\*/).)*\*/\s*\w+\s+(qg_\w+)\s*\(", RegexOptions.Singleline)
                .Cast<Match>().Select(m => m.Groups[1].Value));
            Assert.True(deprecated.Contains("qg_limiter_builder_set_margin"), "the header's deprecated functions: " + string.Join(", ", deprecated));
            var missing = inHeader.Where(f => !declared.Contains(f) && !deprecated.Contains(f)).ToList();
            Assert.True(missing.Count == 0, "builder functions of the header that the interop does not declare: " + string.Join(", ", missing));
        }

        // "TotalWaitUs" -> "TOTAL_WAIT_US".
        static string UpperSnake(string name)
        {
            return Regex.Replace(name, "(?<=[a-z0-9])([A-Z])", "_$1").ToUpperInvariant();
        }

        // The C# constants against the header's #defines, both ways: every constant of
        // these classes is the header's, and every #define of their prefixes has one.
        static void HeaderConstants()
        {
            string header = File.ReadAllText(HeaderPath());
            var defines = Regex.Matches(header, @"^#define (QG_[A-Z0-9_]+) (\d+)\s*$", RegexOptions.Multiline)
                .Cast<Match>().ToDictionary(m => m.Groups[1].Value, m => ulong.Parse(m.Groups[2].Value));
            var classes = new[]
            {
                Tuple.Create(typeof(ResultCode), "QG_ERR_"),
                Tuple.Create(typeof(StatField), "QG_STAT_"),
                Tuple.Create(typeof(DetailField), "QG_DETAIL_"),
                Tuple.Create(typeof(DefaultSetting), "QG_DEFAULT_"),
            };
            var nonErrors = new HashSet<string> { "Ok", "Done", "Pending" };
            var seen = new HashSet<string>();
            foreach (var c in classes)
            {
                foreach (FieldInfo f in c.Item1.GetFields(BindingFlags.Public | BindingFlags.Static).Where(f => f.IsLiteral))
                {
                    string prefix = c.Item1 == typeof(ResultCode) && nonErrors.Contains(f.Name) ? "QG_" : c.Item2;
                    string name = prefix + UpperSnake(f.Name);
                    Assert.True(defines.ContainsKey(name), c.Item1.Name + "." + f.Name + ": the header has no " + name);
                    Assert.Equal(defines[name], Convert.ToUInt64(f.GetRawConstantValue()), name);
                    seen.Add(name);
                }
            }
            var missing = defines.Keys.Where(d => classes.Any(c => d.StartsWith(c.Item2, StringComparison.Ordinal)) && !seen.Contains(d)).ToList();
            Assert.True(missing.Count == 0, "header constants the interop lacks: " + string.Join(", ", missing));
            ulong version = defines["QG_VERSION_MAJOR"] * 1000000 + defines["QG_VERSION_MINOR"] * 1000 + defines["QG_VERSION_PATCH"];
            Assert.Equal(version, (ulong)Native.ExpectedVersionNumber, "ExpectedVersionNumber is the header's QG_VERSION_NUMBER");
        }

        static void RouteTargets()
        {
            Route r = Route.Parse("post /api/machines/*/isolate", new Rate(10, 60000));
            Assert.Equal("POST", r.Method, "method, upper case");
            Assert.Equal("/api/machines/*/isolate", r.PathPattern, "pattern");
            Assert.Equal(10U, r.Rate.Calls, "rate");
            r = Route.Parse("  /api/alerts ", new Rate(1, 1000));
            Assert.Equal(null, r.Method, "no method: any");
            Assert.Equal("/api/alerts", r.PathPattern, "pattern, trimmed");
            InFlightCap cap = InFlightCap.Parse("POST  /api/machines/{id}/runliveresponse", 5);
            Assert.Equal("POST", cap.Method, "cap method");
            Assert.Equal("/api/machines/{id}/runliveresponse", cap.PathPattern, "cap pattern");
            Assert.Equal(5U, cap.MaxInFlight, "cap");
            Assert.Throws<ArgumentNullException>(() => Route.Parse(null, new Rate(1, 1000)), "no target");
        }

        static QuotaGateException HttpError(int status)
        {
            return new QuotaGateException(ResultCode.HttpStatus, "HTTP " + status) { HttpStatus = status };
        }

        static void ErrorReports()
        {
            ErrorReport r = ErrorReport.For(HttpError(404));
            Assert.Equal("QuotaGate.Http404", r.Id, "404 id");
            Assert.Equal("ObjectNotFound", r.Category, "404 category");
            Assert.True(!r.Terminating, "an HTTP error ends only its item");
            Assert.Equal("InvalidArgument", ErrorReport.For(HttpError(400)).Category, "400");
            Assert.Equal("ResourceUnavailable", ErrorReport.For(HttpError(503)).Category, "503");
            Assert.Equal("InvalidResult", ErrorReport.For(HttpError(418)).Category, "other 4xx");

            // PowerShell's foreach and method calls wrap what an enumerator throws.
            QuotaGateException inner = HttpError(404);
            var wrapped = new TargetInvocationException(new InvalidOperationException("wrapper", inner));
            r = ErrorReport.For(wrapped);
            Assert.True(ReferenceEquals(inner, r.Exception), "the library's exception is the record's");
            Assert.Equal("QuotaGate.Http404", r.Id, "wrapped 404 id");

            r = ErrorReport.For(new QuotaGateException(ResultCode.Throttled, "throttled"));
            Assert.Equal("QuotaGate.Throttled", r.Id, "throttled id");
            Assert.Equal("QuotaExceeded", r.Category, "throttled category");
            Assert.True(!r.Terminating, "a throttled call ends only its item");
            Assert.True(!ErrorReport.For(new QuotaGateException(ResultCode.Timeout, "t")).Terminating, "a quota wait timeout ends only its item");
            Assert.True(!ErrorReport.For(new QuotaGateException(ResultCode.Transport, "t")).Terminating, "a transport error ends only its item");
            Assert.True(ErrorReport.For(new QuotaGateException(ResultCode.Auth, "a")).Terminating, "no item passes without a token");
            Assert.True(ErrorReport.For(new QuotaGateException(ResultCode.Closed, "c")).Terminating, "a closed client");
            r = ErrorReport.For(new QuotaGateException(ResultCode.InvalidArgument, "bad"));
            Assert.Equal("QuotaGate.InvalidArgument", r.Id, "invalid argument id");
            Assert.True(r.Terminating, "an invalid argument stops the cmdlet");
            Assert.Equal("QuotaGate.Code999", ErrorReport.For(new QuotaGateException(999, "?")).Id, "an unknown code");

            r = ErrorReport.For(new TargetInvocationException(new InvalidOperationException("QuotaGate is not connected")));
            Assert.Equal("QuotaGate.InvalidOperationException", r.Id, "not connected id");
            Assert.Equal("InvalidOperation", r.Category, "not connected category");
            Assert.True(r.Terminating, "not connected stops the cmdlet");
            r = ErrorReport.For(new ArgumentException("not a rate"));
            Assert.Equal("InvalidArgument", r.Category, "argument category");
            Assert.True(r.Terminating, "a bad argument stops the cmdlet");
            Assert.Equal("OperationStopped", ErrorReport.For(new OperationCanceledException()).Category, "cancelled");
        }

        static void Features()
        {
            // The tests run against a default build, which has every optional part.
            Assert.Equal("pfx,redis,sim", string.Join(",", Native.Features.OrderBy(f => f)), "Native.Features");
            Native.RequireFeature("sim", "the simulator");
            var e = Assert.Throws<NotSupportedException>(() => Native.RequireFeature("nonexistent", "this call"),
                "a feature the library lacks");
            Assert.True(e.Message.Contains("needs the feature 'nonexistent'") && e.Message.Contains("it has: "),
                "the message names the feature and what the library has: " + e.Message);
        }

        static Limiter NewLimiter(params Rate[] rates)
        {
            return new Limiter(rates);
        }

        static void LimiterTests()
        {
            Test("limiter builder: settings reach the library, bad ones fail with its message", () =>
            {
                Assert.Fails(ResultCode.InvalidArgument, "at least one rate", () => new Limiter(new Rate[0]), "no rate");
                Assert.Fails(ResultCode.InvalidArgument, "", () => new Limiter(new[] { new Rate(0, 1000) }), "zero calls");
                Assert.Fails(ResultCode.InvalidArgument, "", () => new Limiter(new[] { new Rate(5, 0) }), "zero window");
                using (var l = new Limiter(new[] { new Rate(2, 1000), new Rate(10, 60000) }, 250, 4))
                {
                    var s = l.GetStatistics("k");
                    Assert.Equal(2, s.Windows.Length, "windows");
                    Assert.Equal(2UL, s.Windows[0].Calls, "first rate");
                    Assert.Equal(1250UL, s.Windows[0].WindowMs, "margin widens the window");
                    Assert.Equal(60250UL, s.Windows[1].WindowMs, "second window with margin");
                    for (int i = 0; i < 4; i++)
                    {
                        Assert.True(l.TryAcquire("bucket" + i, 1), "bucket " + i);
                    }
                    Assert.Fails(ResultCode.TooManyBuckets, "4 buckets", () => l.TryAcquire("bucket4", 1), "max buckets");
                }
                LimiterBuilderHandle b;
                Native.Check(NativeMethods.qg_limiter_builder_new(out b));
                using (b)
                {
                    Assert.Fails(ResultCode.InvalidArgument, "max_buckets must be at least 1",
                        () => Native.Check(NativeMethods.qg_limiter_builder_set_max_buckets(b, UIntPtr.Zero)), "max_buckets 0");
                    Native.Check(NativeMethods.qg_limiter_builder_add_rate(b, 1, 1000));
                    LimiterHandle first, second;
                    Native.Check(NativeMethods.qg_limiter_builder_build(b, out first));
                    Native.Check(NativeMethods.qg_limiter_builder_build(b, out second)); // not consumed
                    first.Dispose();
                    second.Dispose();
                }
            });

            Test("limiter: try_acquire admits up to the rate, then reports the wait", () =>
            {
                using (var l = NewLimiter(new Rate(3, 1000)))
                {
                    ulong wait;
                    for (int i = 0; i < 3; i++)
                    {
                        Assert.True(l.TryAcquire("k", 1, out wait), "call " + i);
                        Assert.Equal(0UL, wait, "wait on success");
                    }
                    Assert.True(!l.TryAcquire("k", 1, out wait), "fourth call refused");
                    Assert.True(wait > 0 && wait <= 1000, "wait " + wait + " ms within the window");
                    var s = l.GetStatistics("k");
                    Assert.Equal(3UL, s.AdmittedCalls, "admitted");
                    Assert.Equal(3UL, s.AdmittedUnits, "units");
                    Assert.Equal(1UL, s.Refusals, "refusals");
                    Assert.Equal(3UL, s.Windows[0].Used, "used");
                    Assert.Equal(1000UL, s.Windows[0].WindowMs, "window");
                    Assert.True(l.TryAcquire("other", 1), "another key has its own bucket");
                }
            });

            Test("store: two limiters on one state file share the bucket; bad URLs fail with the library's message", () =>
            {
                string path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "qg-interop-" + Process.GetCurrentProcess().Id + ".q");
                System.IO.File.Delete(path);
                string url = new Uri(path).AbsoluteUri;
                try
                {
                    using (var a = new Limiter(new[] { new Rate(2, 60000) }, 0, 0, url))
                    using (var b = new Limiter(new[] { new Rate(2, 60000) }, 0, 0, url))
                    {
                        ulong wait;
                        Assert.True(a.TryAcquire("k", 1, out wait), "first from a");
                        Assert.True(b.TryAcquire("k", 1, out wait), "second from b");
                        Assert.True(!a.TryAcquire("k", 1, out wait), "the shared bucket is full");
                        Assert.True(wait > 50000, "the wait of the shared window: " + wait);
                        Assert.Equal(2UL, b.GetStatistics("k").Windows[0].Used, "b sees a's call");
                    }
                    var e = Assert.Throws<QuotaGateException>(() => new Limiter(new[] { new Rate(1, 1000) }, 0, 0, "ftp://x/y"), "unknown scheme");
                    Assert.Equal(ResultCode.InvalidArgument, e.Code, "code");
                    Assert.True(e.Message.Contains("file://, redis://, rediss://, redis+cluster:// or rediss+cluster://"), e.Message);
                    System.IO.File.WriteAllBytes(path, Encoding.ASCII.GetBytes(new string('x', 300)));
                    var damaged = Assert.Throws<QuotaGateException>(() =>
                    {
                        using (var l = new Limiter(new[] { new Rate(1, 1000) }, 0, 0, url))
                        {
                            ulong w;
                            l.TryAcquire("k", 1, out w);
                        }
                    }, "a damaged state file");
                    Assert.Equal(ResultCode.Store, damaged.Code, "code");
                    Assert.True(damaged.Message.Contains(path), damaged.Message);
                }
                finally
                {
                    System.IO.File.Delete(path);
                }
            });

            Test("limiter: acquire waits for the window, with costs and stats", () =>
            {
                using (var l = NewLimiter(new Rate(4, 300)))
                {
                    var sw = Stopwatch.StartNew();
                    l.Acquire("k", 3, -1);
                    l.Acquire("k", 1, 1000);
                    l.Acquire("k", 2, 1000); // waits for the first call to leave the window
                    Assert.Within(sw, 250, 900, "third acquire");
                    var s = l.GetStatistics("k");
                    Assert.Equal(3UL, s.AdmittedCalls, "admitted");
                    Assert.Equal(6UL, s.AdmittedUnits, "units");
                    Assert.Equal(1UL, s.WaitedCalls, "waited");
                    Assert.True(s.LongestWaitMs >= 200 && s.TotalWaitMs >= s.LongestWaitMs, "wait times " + s.LongestWaitMs + "/" + s.TotalWaitMs);
                }
            });

            Test("limiter: a deadline that cannot be met fails at once with the library's message", () =>
            {
                using (var l = NewLimiter(new Rate(1, 60000)))
                {
                    l.Acquire("k", 1, 0);
                    var sw = Stopwatch.StartNew();
                    Assert.Fails(ResultCode.Timeout, "deadline", () => l.Acquire("k", 1, 50), "timeout");
                    Assert.Within(sw, 0, 200, "timeout is immediate");
                    Assert.Fails(ResultCode.Timeout, "deadline", () => l.Acquire("k", 1, 50, () => false), "timeout in slices");
                    Assert.Equal(2UL, l.GetStatistics("k").Timeouts, "timeouts counted");
                }
            });

            Test("limiter: tickets wait in slices and keep their place", () =>
            {
                using (var l = NewLimiter(new Rate(1, 300)))
                {
                    Assert.True(l.TryAcquire("k", 1), "fill the bucket");
                    using (var t = l.Enqueue("k", 1, 5000))
                    {
                        Assert.True(!t.Wait(0), "not admitted yet (check only)");
                        Assert.True(!t.Wait(50), "a 50 ms slice runs out");
                        Assert.Equal(1UL, l.GetStatistics("k").Queued, "queued");
                        var sw = Stopwatch.StartNew();
                        while (!t.Wait(50))
                        {
                            Assert.True(sw.ElapsedMilliseconds < 1000, "admitted within the window");
                        }
                        Assert.True(t.Wait(0), "admitted stays admitted");
                        Assert.True(!t.Cancel(), "cancelling an admitted ticket reports NOT_WAITING");
                    }
                    var s = l.GetStatistics("k");
                    Assert.Equal(2UL, s.AdmittedCalls, "admitted");
                    Assert.Equal(0UL, s.Queued, "queue empty");
                }
            });

            Test("limiter: a hold counts in flight until released, then from its release", () =>
            {
                using (var l = NewLimiter(new Rate(2, 300)))
                {
                    var sw = Stopwatch.StartNew();
                    var h = l.Hold("k", 1, 0, () => false);
                    Assert.True(h.IsHeld, "held");
                    Assert.Equal(1UL, l.GetStatistics("k").InFlight, "in flight");
                    Assert.True(l.TryAcquire("k", 1), "a second call fits");
                    Assert.True(!l.TryAcquire("k", 1), "the hold counts in the window");
                    Thread.Sleep(350);
                    Assert.True(l.TryAcquire("k", 1), "the plain call left the window");
                    Assert.True(!l.TryAcquire("k", 1), "the hold still counts after a whole window");
                    h.Release();
                    h.Release();
                    Assert.True(!h.IsHeld, "released");
                    var s = l.GetStatistics("k");
                    Assert.Equal(0UL, s.InFlight, "no longer in flight");
                    Assert.Equal(2UL, s.Windows[0].Used, "counted from its release");
                    // A hold ticket, in slices; a hold that cannot be admitted in time fails.
                    using (var t = l.EnqueueHold("k", 1, 5000))
                    {
                        Assert.Throws<QuotaGateException>(() => t.TakeHold(), "not admitted yet");
                        while (!t.Wait(50))
                        {
                            Assert.True(sw.ElapsedMilliseconds < 3000, "admitted within the window");
                        }
                        using (var h2 = t.TakeHold())
                        {
                            Assert.Equal(1UL, l.GetStatistics("k").InFlight, "the ticket's hold");
                            Assert.Throws<QuotaGateException>(() => t.TakeHold(), "taken once");
                        }
                    }
                    Assert.Equal(0UL, l.GetStatistics("k").InFlight, "disposed: released");
                }
                using (var full = NewLimiter(new Rate(1, 60000)))
                {
                    Assert.True(full.TryAcquire("k", 1), "fill the bucket");
                    Assert.Fails(ResultCode.Timeout, "deadline", () => full.Hold("k", 1, 10, () => false), "unmeetable deadline");
                    using (var cts = new CancellationTokenSource())
                    {
                        cts.CancelAfter(100);
                        Assert.Throws<OperationCanceledException>(() => full.Hold("k", 1, -1, cts.Token), "cancelled hold");
                    }
                    Assert.Equal(0UL, full.GetStatistics("k").Queued, "no waiter left behind");
                    Assert.Equal(0UL, full.GetStatistics("k").InFlight, "nothing held");
                }
                using (var leased = new Limiter(new[] { new Rate(1, 200) }, 0, 0, null, 150))
                {
                    var forgotten = leased.Hold("k", 1, 0, () => false);
                    Thread.Sleep(200);
                    Assert.Equal(1UL, leased.GetStatistics("k").ExpiredHolds, "expired at its lease");
                    Assert.Equal(0UL, leased.GetStatistics("k").InFlight, "no longer in flight");
                    forgotten.Dispose();
                }
            });

            Test("limiter: shouldStop gives up the place within a slice (Ctrl+C)", () =>
            {
                using (var l = NewLimiter(new Rate(1, 60000)))
                {
                    l.Acquire("k", 1, 0);
                    var sw = Stopwatch.StartNew();
                    Assert.Throws<OperationCanceledException>(
                        () => l.Acquire("k", 1, -1, () => sw.ElapsedMilliseconds > 150), "stopped wait");
                    Assert.Within(sw, 150, 150 + 3 * Limiter.SliceMs, "stopped promptly");
                    var s = l.GetStatistics("k");
                    Assert.Equal(1UL, s.Cancellations, "cancellation counted");
                    Assert.Equal(0UL, s.Queued, "no waiter left behind");
                    Assert.Equal(1UL, s.AdmittedCalls, "no permit taken");
                }
            });

            Test("limiter: a CancellationToken cancels a wait from another thread at once", () =>
            {
                using (var l = NewLimiter(new Rate(1, 60000)))
                using (var cts = new CancellationTokenSource())
                {
                    l.Acquire("k", 1, 0);
                    cts.CancelAfter(100);
                    var sw = Stopwatch.StartNew();
                    Assert.Throws<OperationCanceledException>(() => l.Acquire("k", 1, -1, cts.Token), "cancelled wait");
                    Assert.Within(sw, 80, 400, "cancelled promptly");
                    Assert.Equal(0UL, l.GetStatistics("k").Queued, "no waiter left behind");
                    Assert.Throws<OperationCanceledException>(() => l.Acquire("k", 1, -1, cts.Token), "already cancelled");
                }
            });

            Test("limiter: threads share one bucket within the exact window", () =>
            {
                using (var l = NewLimiter(new Rate(5, 200)))
                {
                    var admitted = new List<long>();
                    var sw = Stopwatch.StartNew();
                    var threads = Enumerable.Range(0, 3).Select(_ => new Thread(() =>
                    {
                        for (int i = 0; i < 5; i++)
                        {
                            l.Acquire("k", 1, 5000, () => false);
                            lock (admitted)
                            {
                                admitted.Add(sw.ElapsedMilliseconds);
                            }
                        }
                    })).ToList();
                    threads.ForEach(t => t.Start());
                    threads.ForEach(t => t.Join());
                    Assert.Equal(15, admitted.Count, "all admitted");
                    Assert.Within(sw, 390, 1500, "15 calls at 5 per 200 ms");
                    admitted.Sort();
                    for (int i = 5; i < admitted.Count; i++)
                    {
                        // The library's clock is exact; allow a little for reading the stopwatch later.
                        Assert.True(admitted[i] - admitted[i - 5] >= 190, "6 calls within one window at " + i);
                    }
                }
            });

            Test("limiter: pause makes the bucket wait", () =>
            {
                using (var l = NewLimiter(new Rate(100, 1000)))
                {
                    l.Pause("k", 300);
                    l.Pause("k", 10); // never shortens
                    ulong wait;
                    Assert.True(!l.TryAcquire("k", 1, out wait), "paused");
                    Assert.True(wait >= 250 && wait <= 300, "wait " + wait);
                    var s = l.GetStatistics("k");
                    Assert.Equal(2UL, s.Pauses, "pauses");
                    Assert.True(s.PausedForMs > 200, "paused for " + s.PausedForMs);
                    var sw = Stopwatch.StartNew();
                    l.Acquire("k", 1, 2000, () => false);
                    Assert.Within(sw, 200, 600, "admitted after the pause");
                    Assert.True(l.TryAcquire("other", 1), "other buckets are not paused");
                }
            });

            Test("limiter: set_rates gives a key its own rates", () =>
            {
                using (var l = NewLimiter(new Rate(100, 1000)))
                {
                    l.SetRates("hunting", new[] { new Rate(2, 1000), new Rate(45, 60000) });
                    var s = l.GetStatistics("hunting");
                    Assert.Equal(2, s.Windows.Length, "two windows");
                    Assert.Equal(45UL, s.Windows[1].Calls, "second rate");
                    Assert.True(l.TryAcquire("hunting", 1) && l.TryAcquire("hunting", 1), "two admitted");
                    Assert.True(!l.TryAcquire("hunting", 1), "third refused");
                    Assert.Fails(ResultCode.InvalidArgument, "at least one rate", () => l.SetRates("x", new Rate[0]), "no rates");
                    Assert.Fails(ResultCode.NullArgument, "calls is NULL",
                        () => Native.Check(NativeMethods.qg_limiter_set_rates(l.Handle, null, null, new ulong[] { 1 }, new UIntPtr(1))), "NULL calls");
                    Assert.Fails(ResultCode.InvalidArgument, "", () => l.SetRates("x", new[] { new Rate(0, 10) }), "zero calls");
                }
            });

            Test("limiter: close wakes waiters and fails later calls with the library's message", () =>
            {
                using (var l = NewLimiter(new Rate(1, 60000)))
                {
                    l.Acquire("k", 1, 0);
                    Exception waiterError = null;
                    var waiter = new Thread(() =>
                    {
                        try
                        {
                            l.Acquire("k", 1, -1);
                        }
                        catch (Exception e)
                        {
                            waiterError = e;
                        }
                    });
                    waiter.Start();
                    Thread.Sleep(100);
                    var sw = Stopwatch.StartNew();
                    l.Close();
                    Assert.True(waiter.Join(1000), "blocked waiter woke");
                    Assert.Within(sw, 0, 500, "woke promptly");
                    var qe = waiterError as QuotaGateException;
                    Assert.True(qe != null && qe.Code == ResultCode.Closed, "waiter got CLOSED: " + waiterError);
                    Assert.Fails(ResultCode.Closed, "the limiter is closed", () => l.TryAcquire("k", 1), "try after close");
                    Assert.Fails(ResultCode.Closed, "the limiter is closed", () => l.Acquire("k", 1, -1, () => false), "acquire after close");
                    l.Close(); // closing twice is fine
                }
            });

            Test("bad input: zero and oversized costs, NULL and invalid handles", () =>
            {
                using (var l = NewLimiter(new Rate(5, 1000)))
                {
                    Assert.Fails(ResultCode.InvalidArgument, "at least 1 unit", () => l.TryAcquire("k", 0), "zero cost");
                    Assert.Fails(ResultCode.InvalidArgument, "could never be admitted", () => l.Acquire("k", 6, 0), "cost above the rate");
                    Assert.Fails(ResultCode.InvalidArgument, "at least 1 unit", () => l.Enqueue("k", 0, -1), "zero cost ticket");
                    ulong v;
                    using (var s = Stats(l, "k"))
                    {
                        Assert.Fails(ResultCode.InvalidArgument, "unknown statistics field 99",
                            () => Native.Check(NativeMethods.qg_bucket_stats_get(s, 99, out v)), "unknown field");
                        ulong used, calls, window;
                        Assert.Fails(ResultCode.InvalidArgument, "past the 1 windows",
                            () => Native.Check(NativeMethods.qg_bucket_stats_window(s, new UIntPtr(1), out used, out calls, out window)), "window index");
                    }
                }
                // A handle that holds NULL reaches the library, which names the argument.
                Assert.Fails(ResultCode.NullArgument, "limiter is NULL",
                    () => Native.Check(NativeMethods.qg_limiter_acquire(new LimiterHandle(), null, 1, 0)), "NULL limiter");
                Assert.Fails(ResultCode.NullArgument, "ticket is NULL",
                    () => Native.Check(NativeMethods.qg_ticket_wait(new TicketHandle(), 0)), "NULL ticket");
                Assert.Fails(ResultCode.NullArgument, "ticket is NULL",
                    () => Native.Check(NativeMethods.qg_ticket_cancel(new TicketHandle())), "NULL ticket cancel");
                Assert.Fails(ResultCode.NullArgument, "stats is NULL", () =>
                {
                    UIntPtr n;
                    Native.Check(NativeMethods.qg_bucket_stats_window_count(new BucketStatsHandle(), out n));
                }, "NULL stats");
                Assert.Fails(ResultCode.NullArgument, "builder is NULL",
                    () => Native.Check(NativeMethods.qg_limiter_builder_set_margin_ms(new LimiterBuilderHandle(), 1)), "NULL builder");
                Assert.Fails(ResultCode.NullArgument, "limiter is NULL",
                    () => Native.Check(NativeMethods.qg_limiter_close(new LimiterHandle())), "NULL limiter close");
                Assert.Fails(ResultCode.NullArgument, "limiter is NULL",
                    () => Native.Check(NativeMethods.qg_limiter_pause(new LimiterHandle(), null, 1)), "NULL limiter pause");
            });

            Test("bad input: NULL and empty keys are the default bucket; NUL and lone surrogates are refused", () =>
            {
                using (var l = NewLimiter(new Rate(2, 60000)))
                {
                    Assert.True(l.TryAcquire(null, 1), "NULL key");
                    Assert.True(l.TryAcquire("", 1), "empty key");
                    Assert.True(!l.TryAcquire(null, 1), "both used the one default bucket");
                    Assert.Equal(2UL, l.GetStatistics(null).AdmittedCalls, "stats of the NULL key");
                    Assert.Equal(2UL, l.GetStatistics("").AdmittedCalls, "stats of the empty key");
                    Assert.Throws<ArgumentException>(() => l.TryAcquire("a\0b", 1), "embedded NUL");
                    Assert.Throws<ArgumentException>(() => l.TryAcquire("bad\uD800", 1), "lone surrogate");
                    ulong wait;
                    Assert.Fails(ResultCode.InvalidArgument, "key is not valid UTF-8",
                        () => Native.Check(NativeMethods.qg_limiter_try_acquire(l.Handle, new byte[] { 0x66, 0xff, 0 }, 1, out wait)), "invalid UTF-8 bytes");
                }
            });

            Test("UTF-8: keys round-trip byte for byte and name distinct buckets", () =>
            {
                const string key = "Grüße-🔑";
                byte[] expected = { 0x47, 0x72, 0xC3, 0xBC, 0xC3, 0x9F, 0x65, 0x2D, 0xF0, 0x9F, 0x94, 0x91, 0 };
                byte[] actual = Utf8.Encode(key, "key");
                Assert.True(expected.SequenceEqual(actual), "encoded as NUL-terminated UTF-8: " + BitConverter.ToString(actual));
                using (var l = NewLimiter(new Rate(1, 60000)))
                {
                    Assert.True(l.TryAcquire(key, 1), "first key");
                    Assert.True(l.TryAcquire("Grüße-🔒", 1), "a key that differs in one emoji");
                    Assert.True(l.TryAcquire("Grusse-?", 1), "a lossy ASCII form");
                    Assert.True(!l.TryAcquire(key, 1), "the first key's bucket is full");
                    Assert.Equal(1UL, l.GetStatistics(key).AdmittedCalls, "stats by the UTF-8 key");
                    Assert.Equal(1UL, l.GetStatistics(key).Refusals, "refusal by the UTF-8 key");
                }
                // The decoder copies out exactly the library's bytes.
                IntPtr p = System.Runtime.InteropServices.Marshal.AllocHGlobal(actual.Length);
                try
                {
                    System.Runtime.InteropServices.Marshal.Copy(actual, 0, p, actual.Length);
                    Assert.Equal(key, Utf8.FromCString(p), "decoded back");
                }
                finally
                {
                    System.Runtime.InteropServices.Marshal.FreeHGlobal(p);
                }
            });

            Test("last error: the buffer protocol and thread-local text", () =>
            {
                using (var l = NewLimiter(new Rate(1, 1000)))
                {
                    Assert.Fails(ResultCode.InvalidArgument, "at least 1 unit", () => l.TryAcquire("k", 0), "set the last error");
                    UIntPtr needed;
                    Assert.Equal(ResultCode.BufferTooSmall, NativeMethods.qg_last_error_message(null, UIntPtr.Zero, out needed), "size query");
                    string text = "a call costs at least 1 unit";
                    Assert.Equal((ulong)text.Length, needed.ToUInt64(), "needed length");
                    var small = new byte[4];
                    UIntPtr written;
                    Assert.Equal(ResultCode.BufferTooSmall, NativeMethods.qg_last_error_message(small, new UIntPtr(4), out written), "small buffer");
                    Assert.Equal(needed, written, "needed length again");
                    Assert.Equal(text, Native.LastErrorMessage(), "reading does not change it");
                    string other = null;
                    var t = new Thread(() => other = Native.LastErrorMessage());
                    t.Start();
                    t.Join();
                    Assert.Equal("", other, "another thread has its own (empty) last error");
                }
            });

            Test("handles: dispose twice, use after dispose, close on a disposed limiter", () =>
            {
                var l = NewLimiter(new Rate(1, 1000));
                var t = l.Enqueue("k", 1, -1);
                t.Dispose();
                t.Dispose();
                Assert.Throws<ObjectDisposedException>(() => t.Wait(0), "ticket after dispose");
                l.Dispose();
                l.Dispose();
                Assert.True(l.Handle.IsClosed, "handle closed");
                Assert.Throws<ObjectDisposedException>(() => l.TryAcquire("k", 1), "limiter after dispose");
                Assert.Throws<ObjectDisposedException>(() => l.Close(), "close after dispose");
            });
        }

        static BucketStatsHandle Stats(Limiter l, string key)
        {
            BucketStatsHandle s;
            Native.Check(NativeMethods.qg_limiter_stats(l.Handle, Utf8.Encode(key, "key"), out s));
            return s;
        }

        // ----- finalizers -----------------------------------------------------------------

        [MethodImpl(MethodImplOptions.NoInlining)]
        static void ForgetHandles(Limiter shared)
        {
            for (int i = 0; i < 200; i++)
            {
                LimiterBuilderHandle b;
                Native.Check(NativeMethods.qg_limiter_builder_new(out b));
                var l = NewLimiter(new Rate(10, 1000));
                l.TryAcquire("k" + i, 1);
                l.GetStatistics("k");
                Stats(l, "k");
                l.Enqueue("k", 1, -1);
            }
            if (clientAbi)
            {
                ForgetClientHandles();
            }
            // A forgotten ticket in a full bucket: its finalizer must give up the place.
            shared.Enqueue("full", 1, -1);
        }

        static void FinalizersRun()
        {
            using (var shared = NewLimiter(new Rate(1, 60000)))
            {
                Assert.True(shared.TryAcquire("full", 1), "fill");
                ForgetHandles(shared);
                Assert.Equal(1UL, shared.GetStatistics("full").Queued, "the forgotten ticket waits");
                for (int i = 0; i < 3; i++)
                {
                    GC.Collect();
                    GC.WaitForPendingFinalizers();
                }
                Assert.Equal(0UL, shared.GetStatistics("full").Queued, "its finalizer gave up the place");
                Assert.True(!shared.TryAcquire("full", 1), "the bucket is still full and usable");
            }
        }

        // ----- client ABI -----------------------------------------------------------------

        static bool clientAbi;

        [MethodImpl(MethodImplOptions.NoInlining)]
        static bool HasClientAbi()
        {
            try
            {
                ProbeClientAbi();
                clientAbi = true;
            }
            catch (EntryPointNotFoundException)
            {
                clientAbi = false;
            }
            return clientAbi;
        }

        [MethodImpl(MethodImplOptions.NoInlining)]
        static void ProbeClientAbi()
        {
            ClientBuilderHandle b;
            Native.Check(NativeMethods.qg_client_builder_new(out b));
            b.Dispose();
        }

        [MethodImpl(MethodImplOptions.NoInlining)]
        static void ForgetClientHandles()
        {
            using (var api = new FakeDefender(25))
            {
                for (int i = 0; i < 20; i++)
                {
                    ClientBuilderHandle b;
                    Native.Check(NativeMethods.qg_client_builder_new(out b));
                    var c = new Client(api.Options());
                    var r = new Request("GET", "/api/machines");
                    r.AddQuery("$top", "10");
                    PagesHandle pages;
                    Native.Check(NativeMethods.qg_client_pages(c.Handle, r.Handle, out pages));
                    ResponseHandle page;
                    Native.Check(NativeMethods.qg_pages_next(pages, out page));
                    IntPtr item;
                    Native.Check(NativeMethods.qg_pages_next_item(pages, out item));
                    NativeMethods.qg_string_free(item);
                }
            }
        }

        static bool simAbi;

        [MethodImpl(MethodImplOptions.NoInlining)]
        static bool HasSimulatorAbi()
        {
            try
            {
                ProbeSimulatorAbi();
                simAbi = true;
            }
            catch (EntryPointNotFoundException)
            {
                simAbi = false;
            }
            return simAbi;
        }

        [MethodImpl(MethodImplOptions.NoInlining)]
        static void ProbeSimulatorAbi()
        {
            SimConfigHandle c;
            Native.Check(NativeMethods.qg_sim_config_new(out c));
            c.Dispose();
        }

        internal static SecureString Secure(string s)
        {
            var secure = new SecureString();
            foreach (char ch in s)
            {
                secure.AppendChar(ch);
            }
            return secure;
        }

        static void ClientTests()
        {
            Test("client: builder setters reach the library, bad values fail with its message", () =>
            {
                ClientBuilderHandle b;
                Native.Check(NativeMethods.qg_client_builder_new(out b));
                using (b)
                {
                    Assert.Fails(ResultCode.NullArgument, "url is NULL",
                        () => Native.Check(NativeMethods.qg_client_builder_set_base_url(b, null)), "NULL base URL");
                    Assert.Fails(ResultCode.InvalidArgument, "", () => Native.Check(NativeMethods.qg_client_builder_set_max_attempts(b, 0)), "zero attempts");
                    Assert.Fails(ResultCode.InvalidArgument, "", () => Native.Check(NativeMethods.qg_client_builder_add_default_rate(b, 0, 1000)), "zero calls");
                    Native.Check(NativeMethods.qg_client_builder_set_proxy(b, null)); // NULL: from the environment
                    Native.Check(NativeMethods.qg_client_builder_set_scope(b, Utf8.Encode("https://api.example/.default", "scope")));
                    Native.Check(NativeMethods.qg_client_builder_set_resource(b, Utf8.Encode("https://api.example", "resource")));
                }
                var options = new ClientOptions { BaseUrl = "not a url", TenantId = "t", ClientId = "c", ClientSecret = Secure("s") };
                var e = Assert.Throws<QuotaGateException>(() => new Client(options).Dispose(), "bad base URL");
                Assert.True(e.Message.Length > 0, "the library's message: " + e.Message);
                options.BaseUrl = "http://api.example.com";
                e = Assert.Throws<QuotaGateException>(() => new Client(options).Dispose(), "plain http off loopback");
                Assert.True(e.Message.Contains("not a loopback host") && e.Message.Contains("allow_insecure_http"), "why: " + e.Message);
                options.AllowInsecureHttp = true;
                new Client(options).Dispose();
                options.BaseUrl = "https://me:hunter2@api.example.com";
                e = Assert.Throws<QuotaGateException>(() => new Client(options).Dispose(), "user information");
                Assert.True(e.Message.Contains("user name or password") && !e.Message.Contains("hunter2"), "never quoted: " + e.Message);
            });

            using (var api = new FakeDefender(237))
            {
                Test("client: send through quota and token, status, headers, body, attempts", () =>
                {
                    var o = api.Options();
                    o.TimeoutMs = 10000;
                    o.ConnectTimeoutMs = 2000;
                    o.MaxBodyBytes = 1 << 20;
                    o.MaxQuotaWaitMs = 60000;
                    o.Scope = api.Url + "/.default";
                    using (var c = new Client(o))
                    using (var r = new Request("GET", "/api/machines"))
                    {
                        r.AddQuery("$top", "5");
                        Response resp = c.Send(r);
                        Assert.Equal(200, resp.Status, "status");
                        Assert.True(resp.IsSuccess && resp.Error == null, "success");
                        Assert.Equal(1U, resp.Attempts, "attempts");
                        Assert.True(resp.ContentType.StartsWith("application/json"), "content type " + resp.ContentType);
                        Assert.True(resp.Header("REQUEST-ID").StartsWith("fake-"), "header by name, any case");
                        Assert.True(resp.Headers.Any(h => h.Key == "request-id"), "headers listed in lower case");
                        Assert.True(resp.BodyText.Contains("\"m0000\"") && resp.BodyText.Contains("\"m0004\"") && !resp.BodyText.Contains("\"m0005\""), "five machines");
                        Assert.Equal(1, api.TokenRequests, "one token request");
                        c.Send(r);
                        Assert.Equal(1, api.TokenRequests, "the token is cached");
                        string stats = c.StatisticsJson();
                        Assert.True(Regex.IsMatch(stats, "\"requests\"\\s*:\\s*2"), "stats count two requests: " + stats);
                    }
                });

                Test("client: query, header and body are sent as given, UTF-8 both ways", () =>
                {
                    using (var c = new Client(api.Options()))
                    using (var r = new Request("POST", "/api/echo"))
                    {
                        r.AddQuery("$filter", "name eq 'Grüße-🔑' & x=1");
                        r.SetHeader("x-test", "yes");
                        r.SetBody("{\"note\":\"Grüße-🔑\"}", null);
                        Response resp = c.Send(r);
                        Assert.Equal(200, resp.Status, "status");
                        string echo = resp.BodyText;
                        Assert.True(echo.Contains("query=$filter=name eq 'Grüße-🔑' & x=1"), "query decoded by the server: " + echo);
                        Assert.True(echo.Contains("x-test=yes"), "header: " + echo);
                        Assert.True(echo.Contains("type=application/json"), "default content type: " + echo);
                        Assert.True(echo.Contains("body={\"note\":\"Grüße-🔑\"}"), "UTF-8 body: " + echo);
                        r.SetBody(new byte[] { 0x61, 0x62 }, "text/plain");
                        echo = c.Send(r).BodyText;
                        Assert.True(echo.Contains("type=text/plain") && echo.Contains("body=ab"), "bytes and type: " + echo);
                    }
                    using (var c = new Client(api.Options()))
                    {
                        Response resp = c.Send("GET", "/api/machines/Grüße-🔑", null, CancellationToken.None);
                        Assert.Equal(200, resp.Status, "a UTF-8 path: " + resp.BodyText);
                        Assert.True(resp.BodyText.Contains("Grüße-🔑.example"), "UTF-8 out: " + resp.BodyText);
                    }
                });

                Test("client: an HTTP error keeps the server's code, message, correlation and request ids", () =>
                {
                    using (var c = new Client(api.Options()))
                    {
                        Response resp = c.Send("GET", "/api/machines/nope", null, CancellationToken.None);
                        Assert.Equal(404, resp.Status, "status");
                        QuotaGateException e = resp.Error;
                        Assert.True(e != null && !resp.IsSuccess, "an error");
                        Assert.Equal(ResultCode.HttpStatus, e.Code, "code");
                        Assert.Equal(404, e.HttpStatus, "detail: status");
                        Assert.Equal("ResourceNotFound", e.ServerCode, "detail: server code");
                        Assert.Equal("Machine nope was not found", e.ServerMessage, "detail: server message");
                        Assert.Equal("corr-nope", e.Target, "detail: correlation id");
                        Assert.True(e.RequestId != null && e.RequestId.StartsWith("fake-"), "detail: request id " + e.RequestId);
                        Assert.True(e.Message.Contains("404") && e.Message.Contains("ResourceNotFound") && e.Message.Contains("corr-nope"), "message " + e.Message);
                        Assert.Throws<QuotaGateException>(() => resp.EnsureSuccess(), "EnsureSuccess throws");
                        ResponseHandle raw;
                        using (var r = new Request("GET", "/api/machines/nope"))
                        {
                            Native.Check(NativeMethods.qg_client_send(c.Handle, r.Handle, out raw));
                        }
                        using (raw)
                        {
                            UIntPtr w;
                            Assert.Fails(ResultCode.InvalidArgument, "", () => Native.Check(NativeMethods.qg_response_error_detail(raw, 77, null, UIntPtr.Zero, out w)), "unknown detail field");
                            IntPtr n, v;
                            UIntPtr nl, vl;
                            Assert.Equal(ResultCode.NotFound, NativeMethods.qg_response_header_at(raw, new UIntPtr(999), out n, out nl, out v, out vl), "header index past the end");
                            Assert.Equal(ResultCode.NotFound, NativeMethods.qg_response_header(raw, Utf8.Encode("x-absent", "n"), out v, out vl), "absent header");
                        }
                    }
                });

                Test("client: keeps what it was given for Get-QgContext, and how it signs in", () =>
                {
                    var o = api.Options();
                    o.Cloud = "eu";
                    using (var c = new Client(o))
                    {
                        Assert.Equal(o.BaseUrl, c.BaseUrl, "base URL");
                        Assert.Equal("eu", c.Cloud, "cloud");
                        Assert.Equal(o.Authority, c.Authority, "authority");
                        Assert.Equal(null, c.Store, "no store");
                        Assert.Equal("ClientSecret", c.AuthMethod, "auth method");
                    }
                    using (var c = new Client(new ClientOptions { BaseUrl = api.Url, AccessToken = Secure("t") }))
                    {
                        Assert.Equal("AccessToken", c.AuthMethod, "access token");
                        Assert.Equal(null, c.Cloud, "no cloud");
                    }
                });

                Test("paging: every machine once over all pages, as items and as pages", () =>
                {
                    using (var c = new Client(api.Options()))
                    using (var r = new Request("GET", "/api/machines"))
                    {
                        r.AddQuery("$top", "50");
                        var ids = c.Items(r, CancellationToken.None).Select(j => Regex.Match(j, "\"id\":\"([^\"]+)\"").Groups[1].Value).ToList();
                        Assert.Equal(api.Machines + 1, ids.Count, "items (with the UTF-8 one)");
                        Assert.Equal(ids.Count, ids.Distinct().Count(), "each once");
                        Assert.True(ids.Contains("Grüße-🔑"), "the UTF-8 item");
                        var pages = c.Pages(r, CancellationToken.None).ToList();
                        Assert.Equal((api.Machines + 1 + 49) / 50, pages.Count, "pages");
                        Assert.True(pages.All(p => p.Status == 200), "all 200");
                    }
                });

                Test("paging: an error page fails with QG_ERR_HTTP_STATUS and the details on this thread", () =>
                {
                    using (var c = new Client(api.Options()))
                    using (var r = new Request("GET", "/api/brokenlist"))
                    {
                        int seen = 0;
                        var e = Assert.Throws<QuotaGateException>(() =>
                        {
                            foreach (string item in c.Items(r, CancellationToken.None))
                            {
                                seen++;
                            }
                        }, "second page is a 404");
                        Assert.Equal(2, seen, "the first page's items came first");
                        Assert.Equal(ResultCode.HttpStatus, e.Code, "code");
                        Assert.Equal(404, e.HttpStatus, "status detail");
                        Assert.Equal("ResourceNotFound", e.ServerCode, "server code detail");
                        Assert.Equal("corr-brokenlist", e.Target, "correlation id detail");
                        Assert.True(e.RequestId != null, "request id detail");
                        Assert.Equal(1, e.Attempts, "attempts detail");
                        Assert.True(e.Message.Length > 0, "library message: " + e.Message);
                    }
                });

                Test("paging: an error from an enumerator driven by MoveNext is reported as the HTTP error, per item", () =>
                {
                    using (var c = new Client(api.Options()))
                    using (var r = new Request("GET", "/api/brokenlist"))
                    {
                        // As the module drives it: MoveNext in a try, Dispose in a finally.
                        IEnumerator<string> items = c.Items(r, CancellationToken.None).GetEnumerator();
                        Exception failure = null;
                        try
                        {
                            while (items.MoveNext())
                            {
                            }
                        }
                        catch (Exception e)
                        {
                            failure = e;
                        }
                        finally
                        {
                            items.Dispose();
                        }
                        Assert.True(failure != null, "the second page fails");
                        ErrorReport report = ErrorReport.For(failure);
                        Assert.Equal("QuotaGate.Http404", report.Id, "id");
                        Assert.Equal("ObjectNotFound", report.Category, "category");
                        Assert.True(!report.Terminating, "per item");
                    }
                });

                Test("client: a 429 pauses and retries; the log reaches the queue from the library's threads", () =>
                {
                    Log.Drain();
                    Log.Start(LogLevel.Debug);
                    try
                    {
                        using (var c = new Client(api.Options()))
                        {
                            var sw = Stopwatch.StartNew();
                            Response resp = c.Send("GET", "/api/throttled-once", null, CancellationToken.None);
                            Assert.Equal(200, resp.Status, "answered after the retry");
                            Assert.Equal(2U, resp.Attempts, "two attempts");
                            Assert.Within(sw, 900, 5000, "waited for Retry-After: 1");
                            Assert.True(Regex.IsMatch(c.StatisticsJson(), "\"throttled\"\\s*:\\s*1"), "stats: throttled " + c.StatisticsJson());
                        }
                    }
                    finally
                    {
                        Log.Stop();
                    }
                    LogRecord[] records = Log.Drain();
                    Assert.True(records.Any(x => x.Message.Contains("429")), "a 429 record among " + records.Length + ": " +
                        string.Join(" | ", records.Select(x => x.ToString())));
                    Assert.True(records.All(x => x.Level >= LogLevel.Error && x.Level <= LogLevel.Debug), "levels up to Debug");
                });

                Test("log: a record goes to the session of the thread that logged it; a sliced call waits in slices and stops", () =>
                {
                    Log.Stop();
                    int before = Log.OpenSessions;
                    LogSession mine = Log.Open(LogLevel.Debug);
                    LogSession other = Log.Open(LogLevel.Debug);
                    try
                    {
                        Assert.Equal(before + 2, Log.OpenSessions, "sessions counted");
                        var o = api.Options();
                        o.DefaultRates.Add(new Rate(1, 60000));
                        using (var c = new Client(o))
                        using (var r1 = new Request("GET", "/api/machines"))
                        using (var r2 = new Request("GET", "/api/machines"))
                        {
                            Assert.Equal(200, SlicedCall.Send(c, r1, CancellationToken.None, mine).GetResult().Status, "first call on a worker");
                            SlicedCall<Response> waiting = SlicedCall.Send(c, r2, CancellationToken.None, mine);
                            Assert.True(!waiting.Wait(300), "the second waits for its quota, slice by slice");
                            var sw = Stopwatch.StartNew();
                            waiting.Stop();
                            Assert.Within(sw, 0, 1000, "stopped promptly");
                            Assert.Fails(ResultCode.Cancelled, "", () => { waiting.GetResult(); }, "the stopped call's own error");
                        }
                        LogRecord[] records = mine.Drain();
                        Assert.True(records.Any(x => x.Message.Contains("quota")), "the wait is logged to the worker's session: " +
                            string.Join(" | ", records.Select(x => x.ToString())));
                        Assert.True(!other.Drain().Any(x => x.Message.Contains("quota")), "and not to another runspace's");
                    }
                    finally
                    {
                        mine.Dispose();
                        other.Dispose();
                        other.Dispose(); // twice is fine
                    }
                    Assert.Equal(before, Log.OpenSessions, "the logger stops with the last session");

                    // A token provider's script block must run on its runspace's thread.
                    int providerThread = -1;
                    var withProvider = new ClientOptions
                    {
                        BaseUrl = api.Url,
                        TokenProvider = () =>
                        {
                            providerThread = Thread.CurrentThread.ManagedThreadId;
                            return Tuple.Create("provided-token", 3600.0);
                        },
                    };
                    using (var c = new Client(withProvider))
                    using (var r = new Request("GET", "/api/machines"))
                    {
                        try
                        {
                            SlicedCall.Send(c, r, CancellationToken.None, null).GetResult();
                        }
                        catch (QuotaGateException)
                        {
                            // The fake API may refuse the token; the provider ran all the same.
                        }
                    }
                    Assert.Equal(Thread.CurrentThread.ManagedThreadId, providerThread, "a client with a token provider sends on the caller's thread");

                    using (var c = new Client(api.Options()))
                    using (var r = new Request("GET", "/api/machines"))
                    {
                        r.AddQuery("$top", "50");
                        IEnumerator<string> items = c.Items(r, CancellationToken.None).GetEnumerator();
                        int count = 0;
                        try
                        {
                            while (true)
                            {
                                SlicedCall<bool> next = SlicedCall.MoveNext(c, r, items, null);
                                while (!next.Wait(50))
                                {
                                }
                                if (!next.GetResult())
                                {
                                    break;
                                }
                                count++;
                            }
                        }
                        finally
                        {
                            items.Dispose();
                        }
                        Assert.Equal(api.Machines + 1, count, "every item, moved on workers");
                    }
                });

                Test("log: levels go to the Warning, Verbose and Debug streams", () =>
                {
                    Assert.Equal("Warning", new LogRecord(LogLevel.Error, "e").Stream, "error");
                    Assert.Equal("Warning", new LogRecord(LogLevel.Warn, "w").Stream, "warn");
                    Assert.Equal("Verbose", new LogRecord(LogLevel.Info, "i").Stream, "info");
                    Assert.Equal("Debug", new LogRecord(LogLevel.Debug, "d").Stream, "debug");
                    Assert.Equal("Debug", new LogRecord(LogLevel.Trace, "t").Stream, "trace");
                });

                Test("client: quota waits are cancelled by a token and by qg_request_cancel", () =>
                {
                    var o = api.Options();
                    o.DefaultRates.Add(new Rate(1, 60000));
                    using (var c = new Client(o))
                    using (var cts = new CancellationTokenSource())
                    {
                        Assert.Equal(200, c.Send("GET", "/api/machines", null, CancellationToken.None).Status, "first call");
                        cts.CancelAfter(150);
                        var sw = Stopwatch.StartNew();
                        Assert.Throws<OperationCanceledException>(() => c.Send("GET", "/api/machines", null, cts.Token), "cancelled by token");
                        Assert.Within(sw, 100, 600, "cancelled promptly");
                        using (var r = new Request("GET", "/api/machines"))
                        {
                            var t = new Thread(() => { Thread.Sleep(150); r.Cancel(); });
                            t.Start();
                            sw.Restart();
                            Assert.Fails(ResultCode.Cancelled, "", () => c.Send(r), "qg_request_cancel from another thread");
                            Assert.Within(sw, 100, 600, "cancelled promptly");
                            t.Join();
                        }
                        string stats = c.StatisticsJson();
                        Assert.True(stats.Contains("\"buckets\""), "stats has buckets: " + stats);
                    }
                });

                Test("client: a shared limiter holds the quota for every client built with it", () =>
                {
                    using (var shared = new Limiter(new[] { new Rate(1, 60000) }))
                    {
                        var o = api.Options();
                        o.Limiter = shared;
                        o.Routes.Add(new Route("GET", "/api/machines/*", new Rate(1, 60000)));
                        o.Routes.Add(new Route(null, "/api/echo", new Rate(5, 1000)));
                        using (var c1 = new Client(o))
                        using (var c2 = new Client(o))
                        using (var cts = new CancellationTokenSource(300))
                        {
                            Assert.Equal(200, c1.Send("GET", "/api/machines/m0001", null, CancellationToken.None).Status, "first client");
                            Assert.Throws<OperationCanceledException>(() => c2.Send("GET", "/api/machines/m0002", null, cts.Token), "the second waits for the shared quota");
                        }
                    }
                });

                Test("client: authentication failures, access tokens, close", () =>
                {
                    var bad = api.Options();
                    bad.ClientSecret = Secure("wrong");
                    using (var c = new Client(bad))
                    {
                        var e = Assert.Throws<QuotaGateException>(() => c.Send("GET", "/api/machines", null, CancellationToken.None), "bad secret");
                        Assert.Equal(ResultCode.Auth, e.Code, "QG_ERR_AUTH: " + e.Message);
                        Assert.True(e.Message.Length > 0 && !e.Message.Contains("wrong"), "message without the secret: " + e.Message);
                    }
                    var token = new ClientOptions { BaseUrl = api.Url, AccessToken = Secure(FakeDefender.StaticToken) };
                    using (var c = new Client(token))
                    {
                        int before = api.TokenRequests;
                        Assert.Equal(200, c.Send("GET", "/api/machines", null, CancellationToken.None).Status, "with an access token");
                        Assert.Equal(before, api.TokenRequests, "no token request");
                        c.Close();
                        Assert.Fails(ResultCode.Closed, "", () => c.Send("GET", "/api/machines", null, CancellationToken.None), "send after close");
                        c.Dispose();
                        c.Dispose();
                        Assert.Throws<ObjectDisposedException>(() => c.StatisticsJson(), "after dispose");
                    }
                    Assert.Fails(ResultCode.NullArgument, "client is NULL", () =>
                    {
                        IntPtr json;
                        Native.Check(NativeMethods.qg_client_stats_json(new ClientHandle(), out json));
                    }, "NULL client");
                    Assert.Fails(ResultCode.NullArgument, "request is NULL", () => Native.Check(NativeMethods.qg_request_cancel(new RequestHandle())), "NULL request");
                });
            }

            if (!HasSimulatorAbi())
            {
                Skip("simulator tests", "the library does not export the simulator ABI (qg_sim_config_new)");
                return;
            }
            Test("simulator: start, client over every machine, log and stats", SimulatorRoundTrip);
            CredentialTests();
            Test("simulator: a client within the quota gets no 429; one above it is paused and retried", SimulatorThrottling);
            Test("simulator: a 429 past the attempt budget is QG_ERR_THROTTLED with Retry-After and attempts", SimulatorThrottledDetails);
            Test("simulator: a request's deadline bounds its quota wait", SimulatorRequestDeadline);
            Test("simulator: inbound jitter delays every request before it is counted; above 10 s it is refused", SimulatorInboundJitter);
            Test("simulator: bad settings fail with the library's message", () =>
            {
                SimConfigHandle c;
                Native.Check(NativeMethods.qg_sim_config_new(out c));
                using (c)
                {
                    Assert.Fails(ResultCode.InvalidArgument, "", () => Native.Check(NativeMethods.qg_sim_config_set_time_scale(c, 0)), "zero time scale");
                    Assert.Fails(ResultCode.InvalidArgument, "", () => Native.Check(NativeMethods.qg_sim_config_set_faults(c, 2.0, 0, 0)), "a rate above 1");
                    Assert.Fails(ResultCode.InvalidArgument, "", () => Native.Check(NativeMethods.qg_sim_config_set_retry_after_style(c, 99)), "unknown style");
                    Assert.Fails(ResultCode.NullArgument, "", () => Native.Check(NativeMethods.qg_sim_config_set_machines(new SimConfigHandle(), 1)), "NULL settings");
                }
            });
        }

        // ----- clouds, certificates, token providers, budgets -------------------------------

        static string dataDir;

        /// <summary>The repository's tests/data (test-only certificates), found from the working directory up.</summary>
        static string DataFile(string name)
        {
            if (dataDir == null)
            {
                string dir = System.IO.Directory.GetCurrentDirectory();
                while (dir != null && !System.IO.File.Exists(System.IO.Path.Combine(dir, "tests", "data", "app.crt")))
                {
                    dir = System.IO.Path.GetDirectoryName(dir);
                }
                if (dir == null)
                {
                    throw new AssertionException("tests/data not found above " + System.IO.Directory.GetCurrentDirectory());
                }
                dataDir = System.IO.Path.Combine(dir, "tests", "data");
            }
            return System.IO.Path.Combine(dataDir, name);
        }

        const string CertApp = "cert-app";

        static Simulator CertificateSimulator()
        {
            var so = new SimulatorOptions { Machines = 3, LiveResponseDelayMs = 0 };
            so.CertificateClients.Add(CertApp, System.IO.File.ReadAllText(DataFile("app.crt")));
            return new Simulator(so);
        }

        static ClientOptions CertClient(Simulator sim)
        {
            return new ClientOptions { BaseUrl = sim.Url, Authority = sim.Authority, TenantId = sim.TenantId, ClientId = CertApp };
        }

        static void SendsOk(ClientOptions o, string what)
        {
            using (var c = new Client(o))
            {
                Response r = c.Send("GET", "/api/machines?$top=1", null, CancellationToken.None);
                Assert.Equal(200, r.Status, what + ": " + r.BodyText);
            }
        }

        static void CredentialTests()
        {
            Test("cloud: every documented name is accepted; an unknown one fails with the list of names", () =>
            {
                ClientBuilderHandle b;
                Native.Check(NativeMethods.qg_client_builder_new(out b));
                using (b)
                {
                    foreach (string name in new[] { "commercial", "us", "eu", "uk", "au", "swa", "ina", "aea", "gcc", "gcc-high", "dod", "GCC-High" })
                    {
                        Native.Check(NativeMethods.qg_client_builder_set_cloud(b, Utf8.Encode(name, "name")));
                    }
                    var e = Assert.Fails(ResultCode.InvalidArgument, "gcc-high",
                        () => Native.Check(NativeMethods.qg_client_builder_set_cloud(b, Utf8.Encode("mars", "name"))), "unknown cloud");
                    Assert.True(e.Message.Contains("mars") && e.Message.Contains("commercial") && e.Message.Contains("dod"), "the names: " + e.Message);
                    Assert.Fails(ResultCode.NullArgument, "", () => Native.Check(NativeMethods.qg_client_builder_set_cloud(b, null)), "NULL cloud");
                }
                var o = new ClientOptions { Cloud = "Mars", AccessToken = Secure("t") };
                Assert.Fails(ResultCode.InvalidArgument, "commercial", () => new Client(o).Dispose(), "through ClientOptions");
                o.Cloud = "gcc-high";
                new Client(o).Dispose();
            });

            Test("cloud: base URL and authority override the cloud's, in either order", () =>
            {
                using (var sim = new Simulator(new SimulatorOptions { Machines = 2 }))
                {
                    var o = SimClient(sim);
                    o.Cloud = "gcc-high";
                    SendsOk(o, "gcc-high with the simulator's URLs");
                }
            });

            if (!System.IO.File.Exists(DataFile("app.crt")))
            {
                Skip("certificate tests", "tests/data/app.crt is missing");
                return;
            }

            Test("certificate: PEM files, PEM text, PFX and RS256 sign in to the simulator", () =>
            {
                using (var sim = CertificateSimulator())
                {
                    var o = CertClient(sim);
                    o.CertificatePath = DataFile("app.crt");
                    o.PrivateKeyPath = DataFile("app.key");
                    SendsOk(o, "PEM files");

                    o = CertClient(sim);
                    o.CertificatePath = DataFile("app.pem"); // both in one file
                    o.AssertionAlgorithm = AssertionAlgorithm.RS256;
                    SendsOk(o, "one PEM file, RS256");

                    o = CertClient(sim);
                    o.CertificatePem = System.IO.File.ReadAllText(DataFile("app.crt"));
                    o.PrivateKeyPem = Secure(System.IO.File.ReadAllText(DataFile("app-pkcs1.key")));
                    SendsOk(o, "PEM text, PKCS#1 key");

                    o = CertClient(sim);
                    o.PfxPath = DataFile("app.pfx");
                    o.PfxPassword = Secure("quotagate");
                    SendsOk(o, "PFX");
                }
            });

            Test("certificate: a key of another certificate or a wrong PFX password is refused with the library's message", () =>
            {
                var o = new ClientOptions { TenantId = "t", ClientId = CertApp, CertificatePath = DataFile("app.crt"), PrivateKeyPath = DataFile("other.key") };
                Assert.Fails(ResultCode.InvalidArgument, "does not belong", () => new Client(o).Dispose(), "other.key");
                o = new ClientOptions { TenantId = "t", ClientId = CertApp, PfxPath = DataFile("app.pfx"), PfxPassword = Secure("Hunter2-not-it") };
                var e = Assert.Throws<QuotaGateException>(() => new Client(o).Dispose(), "wrong password");
                Assert.Equal(ResultCode.InvalidArgument, e.Code, "wrong password: code");
                Assert.True(e.Message.Contains("password") && !e.Message.Contains("Hunter2"), "the password stays out of the message: " + e.Message);
                o = new ClientOptions { TenantId = "t", ClientId = CertApp, CertificatePath = DataFile("no-such.crt") };
                Assert.Fails(ResultCode.InvalidArgument, "no-such.crt", () => new Client(o).Dispose(), "missing file");
                o = new ClientOptions { PrivateKeyPath = DataFile("app.key") };
                Assert.Throws<ArgumentException>(() => new Client(o).Dispose(), "a key without its certificate");
                ClientBuilderHandle b;
                Native.Check(NativeMethods.qg_client_builder_new(out b));
                using (b)
                {
                    Assert.Fails(ResultCode.InvalidArgument, "", () => Native.Check(NativeMethods.qg_client_builder_set_assertion_algorithm(b, 7)), "unknown algorithm");
                }
            });

            Test("token provider: called for real tokens, kept alive across GC.Collect, refreshed near expiry", () =>
            {
                using (var sim = CertificateSimulator())
                {
                    int calls = 0;
                    Client c = TokenClient(sim, () =>
                    {
                        Interlocked.Increment(ref calls);
                        return Tuple.Create(sim.IssueToken(sim.ClientId), 1.0); // refreshed after 0.8 s
                    });
                    using (c)
                    {
                        Assert.Equal(200, c.Send("GET", "/api/machines", null, CancellationToken.None).Status, "first call");
                        Assert.Equal(1, calls, "the provider was called");
                        for (int i = 0; i < 3; i++)
                        {
                            GC.Collect();
                            GC.WaitForPendingFinalizers();
                        }
                        Assert.Equal(200, c.Send("GET", "/api/machines", null, CancellationToken.None).Status, "cached token");
                        Assert.Equal(1, calls, "the token is cached");
                        Thread.Sleep(1000);
                        GC.Collect();
                        GC.WaitForPendingFinalizers();
                        Assert.Equal(200, c.Send("GET", "/api/machines", null, CancellationToken.None).Status, "after GC and expiry");
                        Assert.Equal(2, calls, "the provider was called again after GC.Collect");
                        Assert.Equal(2, c.TokenProvider.Calls, "the bridge counts the calls");
                    }
                }
            });

            Test("token provider: an exception or a bad answer becomes an auth error with its message", () =>
            {
                using (var sim = CertificateSimulator())
                {
                    using (var c = TokenClient(sim, () => { throw new InvalidOperationException("vault is down"); }))
                    {
                        Assert.Fails(ResultCode.Auth, "vault is down", () => c.Send("GET", "/api/machines", null, CancellationToken.None), "throwing provider");
                        Assert.True(c.TokenProvider.LastError is InvalidOperationException, "LastError");
                        Assert.Fails(ResultCode.Auth, "vault is down", () => c.Send("GET", "/api/machines", null, CancellationToken.None), "still fails, no crash");
                    }
                    using (var c = TokenClient(sim, () => Tuple.Create("", 60.0)))
                    {
                        Assert.Fails(ResultCode.Auth, "no token", () => c.Send("GET", "/api/machines", null, CancellationToken.None), "empty token");
                    }
                    using (var c = TokenClient(sim, () => Tuple.Create(sim.IssueToken(sim.ClientId), 0.0)))
                    {
                        Assert.Fails(ResultCode.Auth, "above 0", () => c.Send("GET", "/api/machines", null, CancellationToken.None), "zero lifetime");
                    }
                }
            });

            Test("token provider: the token goes to the library's sink; a failure stays on this side", () =>
            {
                int calls = 0;
                string token = new string('x', 5000) + "é";
                var p = new TokenProvider(() => { calls++; return Tuple.Create(token, 2.5); });
                // Without a sink (NULL) the library refuses the token: the callback fails
                // with the library's reason kept here, and the source was asked once.
                Assert.Equal(ResultCode.Auth, p.Callback(IntPtr.Zero, IntPtr.Zero), "no sink");
                Assert.True(p.LastError is QuotaGateException, "the library's refusal: " + p.LastError);
                Assert.True(p.LastError.Message.IndexOf("xxxx", StringComparison.Ordinal) < 0, "the token is never quoted");
                Assert.Equal(1, calls, "the source was called once");
                var failing = new TokenProvider(() => { throw new Exception("ünreachable vault"); });
                Assert.Equal(ResultCode.Auth, failing.Callback(IntPtr.Zero, IntPtr.Zero), "failure code");
                Assert.True(failing.LastError != null && failing.LastError.Message == "ünreachable vault", "the reason is kept in LastError");
            });

            Test("library facts: clouds and defaults come from the library", () =>
            {
                string[] clouds = Native.CloudNames();
                Assert.Equal(11, clouds.Length, "clouds");
                Assert.Equal("commercial", clouds[0], "the first cloud");
                Assert.True(Array.IndexOf(clouds, "gcc-high") >= 0, "gcc-high");
                Assert.Equal(600000UL, Native.DefaultValue(DefaultSetting.HuntingBudgetPerHourMs), "hunting per hour");
                Assert.Equal(10800000UL, Native.DefaultValue(DefaultSetting.HuntingBudgetPerDayMs), "hunting per day");
                Assert.Fails(ResultCode.InvalidArgument, "unknown default", () => Native.DefaultValue(999), "an unknown default");
                // The library's own spellings pass; an unknown name fails with its list.
                Assert.True(Native.CheckCloud("gcchigh") && Native.CheckCloud("GCC_High") && Native.CheckCloud("eu"), "cloud spellings");
                var e = Assert.Throws<ArgumentException>(() => Native.CheckCloud("mars"), "an unknown cloud");
                Assert.True(e.Message.Contains("gcc-high") && e.Message.Contains("dod"), "the valid names: " + e.Message);
            });

            Test("header: every constant of the interop is the header's", HeaderConstants);

            Test("budgets: in-flight caps and the hunting run-time budget are set; bad values fail", () =>
            {
                using (var sim = CertificateSimulator())
                {
                    var o = SimClient(sim);
                    o.MaxInFlight.Add(new InFlightCap("POST", "/api/machines/{id}/runliveresponse", 10));
                    o.MaxInFlight.Add(new InFlightCap(null, "/api/machines/{id}/isolate", 0));
                    o.HuntingBudgetPerHourMs = 60000;
                    o.HuntingBudgetPolicy = HuntingBudgetPolicy.Fail;
                    o.MarginMs = 250;
                    using (var c = new Client(o))
                    {
                        Assert.Equal(200, c.Send("GET", "/api/machines", null, CancellationToken.None).Status, "a call");
                    }
                    o = SimClient(sim);
                    o.DefaultRates.Add(new Rate(50, 1000));
                    o.MarginMs = 250;
                    using (var c = new Client(o))
                    {
                        c.Send("GET", "/api/machines", null, CancellationToken.None);
                        Assert.True(Regex.IsMatch(c.StatisticsJson(), "\"window_ms\"\\s*:\\s*1250"), "the margin widens the window: " + c.StatisticsJson());
                    }
                    o = SimClient(sim);
                    o.MaxInFlight.Add(new InFlightCap(null, "api/relative", 1));
                    Assert.Fails(ResultCode.InvalidArgument, "", () => new Client(o).Dispose(), "a relative pattern");
                }
                ClientBuilderHandle b;
                Native.Check(NativeMethods.qg_client_builder_new(out b));
                using (b)
                {
                    Native.Check(NativeMethods.qg_client_builder_set_hunting_budget_ms(b, 0, 0));
                    Native.Check(NativeMethods.qg_client_builder_set_margin_ms(b, 500));
                    Assert.Fails(ResultCode.InvalidArgument, "", () => Native.Check(NativeMethods.qg_client_builder_set_hunting_budget_policy(b, 9)), "unknown policy");
                }
            });
        }

        // Not inlined, and the delegate made here: the test's frame holds only the client.
        [MethodImpl(MethodImplOptions.NoInlining)]
        static Client TokenClient(Simulator sim, Func<Tuple<string, double>> source)
        {
            var o = new ClientOptions { BaseUrl = sim.Url, TenantId = sim.TenantId, ClientId = sim.ClientId, TokenProvider = source };
            return new Client(o);
        }

        static string SimHunt(Client c, string query)
        {
            return c.Send("POST", "/api/advancedqueries/run", "{\"Query\":\"" + query + "\"}", CancellationToken.None).EnsureSuccess().BodyText;
        }

        static ClientOptions SimClient(Simulator sim)
        {
            return new ClientOptions { BaseUrl = sim.Url, Authority = sim.Authority, TenantId = sim.TenantId, ClientId = sim.ClientId, ClientSecret = sim.ClientSecret };
        }

        [MethodImpl(MethodImplOptions.NoInlining)]
        static void SimulatorThrottling()
        {
            var so = new SimulatorOptions { Machines = 10, TimeScale = 0.01, RetryAfterStyle = RetryAfterStyle.XMsMilliseconds };
            so.Limits.Add(new SimulatorLimit("default", 3, 60)); // 3 calls per 600 ms, scaled
            using (var sim = new Simulator(so))
            {
                var within = SimClient(sim);
                within.DefaultRates.Add(new Rate(3, 650));
                using (var c = new Client(within))
                {
                    var sw = Stopwatch.StartNew();
                    for (int i = 0; i < 7; i++)
                    {
                        Assert.Equal(200, c.Send("GET", "/api/machines", null, CancellationToken.None).Status, "call " + i);
                    }
                    Assert.Within(sw, 1250, 5000, "seven calls at 3 per 650 ms");
                    Assert.True(Regex.IsMatch(sim.StatisticsJson(), "\"throttled\"\\s*:\\s*0[,}]"), "no 429: " + sim.StatisticsJson());
                }
                using (var c = new Client(SimClient(sim))) // the built-in 100/min: too fast for this simulator
                {
                    uint attempts = 0;
                    for (int i = 0; i < 6; i++)
                    {
                        Response r = c.Send("GET", "/api/machines", null, CancellationToken.None);
                        Assert.Equal(200, r.Status, "call " + i + " answered after retries");
                        attempts += r.Attempts;
                    }
                    Assert.True(attempts > 6, "some calls were retried: " + attempts);
                    string stats = c.StatisticsJson();
                    Assert.True(!Regex.IsMatch(stats, "\"throttled\"\\s*:\\s*0[,}]"), "the client counted 429s: " + stats);
                }
                using (var c = new Client(SimClient(sim)))
                {
                    Assert.True(SimHunt(c, "DeviceInfo | take 3").Contains("\"Results\""), "hunting answers");
                }
            }
        }

        [MethodImpl(MethodImplOptions.NoInlining)]
        static void SimulatorRequestDeadline()
        {
            var so = new SimulatorOptions { Machines = 5 };
            using (var sim = new Simulator(so))
            {
                var options = SimClient(sim);
                options.DefaultRates.Add(new Rate(1, 60000));
                using (var c = new Client(options))
                {
                    Assert.Equal(200, c.Send("GET", "/api/machines", null, CancellationToken.None).Status, "the one call of the minute");
                    using (var r = new Request("GET", "/api/machines"))
                    {
                        r.SetDeadline(500);
                        var sw = Stopwatch.StartNew();
                        Assert.Fails(ResultCode.Timeout, "deadline", () => c.Send(r, CancellationToken.None), "a minute's wait past a 500 ms deadline");
                        Assert.Within(sw, 0, 1500, "failed at once");
                    }
                }
            }
        }

        [MethodImpl(MethodImplOptions.NoInlining)]
        static void SimulatorThrottledDetails()
        {
            var so = new SimulatorOptions { Machines = 3, TimeScale = 0.01 };
            so.Limits.Add(new SimulatorLimit("default", 1, 60));
            using (var sim = new Simulator(so))
            {
                var o = SimClient(sim);
                o.MaxAttempts = 1;
                using (var c = new Client(o))
                {
                    Assert.Equal(200, c.Send("GET", "/api/machines", null, CancellationToken.None).Status, "first call");
                    var e = Assert.Throws<QuotaGateException>(() => c.Send("GET", "/api/machines", null, CancellationToken.None), "second call throttled");
                    Assert.Equal(ResultCode.Throttled, e.Code, "QG_ERR_THROTTLED: " + e.Message);
                    Assert.Equal(429, e.HttpStatus, "status detail");
                    Assert.True(e.RetryAfterMs > 0, "Retry-After detail: " + e.RetryAfterMs);
                    Assert.Equal(1, e.Attempts, "attempts detail");
                    Assert.True(e.ServerCode != null && e.ServerMessage != null, "server code and message: " + e.ServerCode + " / " + e.ServerMessage);
                }
            }
        }

        [MethodImpl(MethodImplOptions.NoInlining)]
        static void SimulatorInboundJitter()
        {
            SimConfigHandle c;
            Native.Check(NativeMethods.qg_sim_config_new(out c));
            using (c)
            {
                Assert.Fails(ResultCode.InvalidArgument, "inbound_jitter must be at most 10s",
                    () => Native.Check(NativeMethods.qg_sim_config_set_inbound_jitter_ms(c, 10001)), "just above 10 s");
                Assert.Fails(ResultCode.InvalidArgument, "inbound_jitter",
                    () => Native.Check(NativeMethods.qg_sim_config_set_inbound_jitter_ms(c, ulong.MaxValue)), "the largest value");
                Native.Check(NativeMethods.qg_sim_config_set_inbound_jitter_ms(c, 10000));
                Native.Check(NativeMethods.qg_sim_config_set_inbound_jitter_ms(c, 0));
                Assert.Fails(ResultCode.NullArgument, "",
                    () => Native.Check(NativeMethods.qg_sim_config_set_inbound_jitter_ms(new SimConfigHandle(), 1)), "NULL settings");
            }
            Assert.Fails(ResultCode.InvalidArgument, "inbound_jitter", () =>
            {
                using (new Simulator(new SimulatorOptions { InboundJitterMs = 10001 }))
                {
                }
            }, "through SimulatorOptions");

            using (var sim = new Simulator(new SimulatorOptions { Machines = 3, InboundJitterMs = 50 }))
            using (var client = new Client(SimClient(sim)))
            {
                for (int i = 0; i < 4; i++)
                {
                    Assert.Equal(200, client.Send("GET", "/api/machines", null, CancellationToken.None).Status, "call " + i);
                }
                string log = sim.LogJson();
                List<double> delays = Regex.Matches(log, "\"inbound_delay_ms\":([-+0-9.eE]+)").Cast<Match>()
                    .Select(m => double.Parse(m.Groups[1].Value, System.Globalization.NumberStyles.Float,
                        System.Globalization.CultureInfo.InvariantCulture))
                    .ToList();
                Assert.Equal(5, delays.Count, "the token request and four calls: " + log);
                Assert.True(delays.All(d => d >= 0 && d <= 50), "each within 0..50 ms: " + log);
                Assert.Equal(delays.Count, delays.Distinct().Count(), "each its own delay: " + log);
            }
        }

        [MethodImpl(MethodImplOptions.NoInlining)]
        static void SimulatorRoundTrip()
        {
            var so = new SimulatorOptions { Machines = 120, TimeScale = 0.01, TokenLifetimeMs = 600000 };
            so.Limits.Add(new SimulatorLimit(null, 100, 60));
            so.Limits.Add(new SimulatorLimit("hunting", 45, 60));
            using (var sim = new Simulator(so))
            {
                Assert.True(sim.Url.StartsWith("http://127.0.0.1:"), "url " + sim.Url);
                Assert.True(sim.Authority.Length > 0 && sim.TenantId.Length > 0 && sim.ClientId.Length > 0, "credentials");
                var o = new ClientOptions { BaseUrl = sim.Url, Authority = sim.Authority, TenantId = sim.TenantId, ClientId = sim.ClientId, ClientSecret = sim.ClientSecret };
                using (var c = new Client(o))
                using (var r = new Request("GET", "/api/machines"))
                {
                    Assert.Equal(120, c.Items(r, CancellationToken.None).Count(), "every machine");
                    Response missing = c.Send("GET", "/api/machines/none", null, CancellationToken.None);
                    Assert.Equal(404, missing.Status, "404");
                    Assert.True(missing.Error.ServerCode != null, "server code");
                }
                Assert.True(sim.LogJson().StartsWith("["), "log");
                Assert.True(sim.StatisticsJson().Contains("\"requests\""), "stats");
                sim.Stop();
                sim.Dispose();
                sim.Dispose();
            }
        }
    }

    /// <summary>
    /// A small stand-in for the Defender API and its token endpoint, so the client's
    /// P/Invokes run against real HTTP even where the library's simulator has no C ABI.
    /// </summary>
    sealed class FakeDefender : IDisposable
    {
        public const string StaticToken = "static-token";
        const string Tenant = "tenant-1";
        const string ClientId = "client-1";
        const string Secret = "s3cret";
        const string IssuedToken = "issued-token";

        readonly System.Net.HttpListener listener = new System.Net.HttpListener();
        readonly Thread thread;
        int requestCount, tokenRequests, throttledOnce;

        public FakeDefender(int machines)
        {
            Machines = machines;
            var probe = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
            probe.Start();
            int port = ((System.Net.IPEndPoint)probe.LocalEndpoint).Port;
            probe.Stop();
            Url = "http://127.0.0.1:" + port;
            listener.Prefixes.Add(Url + "/");
            listener.Start();
            thread = new Thread(Serve) { IsBackground = true };
            thread.Start();
        }

        public int Machines { get; private set; }
        public string Url { get; private set; }

        public int TokenRequests
        {
            get { return Volatile.Read(ref tokenRequests); }
        }

        public ClientOptions Options()
        {
            return new ClientOptions
            {
                BaseUrl = Url,
                Authority = Url,
                TenantId = Tenant,
                ClientId = ClientId,
                ClientSecret = Program.Secure(Secret),
                MaxAttempts = 3,
            };
        }

        void Serve()
        {
            while (listener.IsListening)
            {
                System.Net.HttpListenerContext ctx;
                try
                {
                    ctx = listener.GetContext();
                }
                catch (Exception)
                {
                    return;
                }
                ThreadPool.QueueUserWorkItem(_ => Handle(ctx));
            }
        }

        void Handle(System.Net.HttpListenerContext ctx)
        {
            try
            {
                HandleRequest(ctx);
            }
            catch (Exception e)
            {
                Console.WriteLine("fake API: " + e);
            }
        }

        static string Json(string s)
        {
            var sb = new StringBuilder("\"");
            foreach (char ch in s)
            {
                if (ch == '"' || ch == '\\')
                {
                    sb.Append('\\');
                }
                sb.Append(ch);
            }
            return sb.Append('"').ToString();
        }

        static string Machine(string id)
        {
            return "{\"id\":" + Json(id) + ",\"computerDnsName\":" + Json(id + ".example") + "}";
        }

        List<string> AllIds()
        {
            var ids = Enumerable.Range(0, Machines).Select(i => "m" + i.ToString("D4")).ToList();
            ids.Add("Grüße-🔑");
            return ids;
        }

        void HandleRequest(System.Net.HttpListenerContext ctx)
        {
            var req = ctx.Request;
            // Mono reads the request line as Latin-1; the library sends a non-ASCII path as raw
            // UTF-8 bytes, so take the bytes back before decoding.
            string rawPath = req.RawUrl.Split('?')[0];
            string path = Uri.UnescapeDataString(new UTF8Encoding(false).GetString(Encoding.GetEncoding(28591).GetBytes(rawPath)));
            string body;
            using (var reader = new System.IO.StreamReader(req.InputStream, new UTF8Encoding(false)))
            {
                body = reader.ReadToEnd();
            }
            int n = Interlocked.Increment(ref requestCount);
            ctx.Response.Headers["request-id"] = "fake-" + n;

            if (req.HttpMethod == "POST" && path == "/" + Tenant + "/oauth2/v2.0/token")
            {
                Interlocked.Increment(ref tokenRequests);
                if (body.Contains("client_secret=" + Secret) && body.Contains("client_id=" + ClientId))
                {
                    Send(ctx, 200, "{\"token_type\":\"Bearer\",\"expires_in\":3599,\"access_token\":\"" + IssuedToken + "\"}");
                }
                else
                {
                    Send(ctx, 401, "{\"error\":\"invalid_client\",\"error_description\":\"AADSTS7000215: Invalid client secret provided.\"}");
                }
                return;
            }
            string auth = req.Headers["Authorization"];
            if (auth != "Bearer " + IssuedToken && auth != "Bearer " + StaticToken)
            {
                Error(ctx, 401, "Unauthorized", "no valid token", "corr-auth");
                return;
            }
            if (path == "/api/machines")
            {
                int top = int.Parse(req.QueryString["$top"] ?? "10");
                int skip = int.Parse(req.QueryString["$skip"] ?? "0");
                List<string> ids = AllIds();
                var page = ids.Skip(skip).Take(top).Select(Machine);
                string next = skip + top < ids.Count
                    ? ",\"@odata.nextLink\":" + Json(Url + "/api/machines?$top=" + top + "&$skip=" + (skip + top))
                    : "";
                Send(ctx, 200, "{\"@odata.context\":\"fake\",\"value\":[" + string.Join(",", page) + "]" + next + "}");
                return;
            }
            if (path.StartsWith("/api/machines/"))
            {
                string id = path.Substring("/api/machines/".Length);
                if (AllIds().Contains(id))
                {
                    Send(ctx, 200, Machine(id));
                }
                else
                {
                    Error(ctx, 404, "ResourceNotFound", "Machine " + id + " was not found", "corr-" + id);
                }
                return;
            }
            if (path == "/api/brokenlist")
            {
                Send(ctx, 200, "{\"value\":[" + Machine("a") + "," + Machine("b") + "],\"@odata.nextLink\":" + Json(Url + "/api/brokenlist-page2") + "}");
                return;
            }
            if (path == "/api/throttled-once")
            {
                if (Interlocked.Exchange(ref throttledOnce, 1) == 0)
                {
                    ctx.Response.Headers["Retry-After"] = "1";
                    Error(ctx, 429, "TooManyRequests", "API calls quota exceeded! maximum allowed 100 per 00:01:00", "corr-429");
                }
                else
                {
                    Send(ctx, 200, "{\"ok\":true}");
                }
                return;
            }
            if (path == "/api/echo")
            {
                string query = Uri.UnescapeDataString(req.Url.Query.TrimStart('?'));
                Send(ctx, 200, "query=" + query + "\nx-test=" + req.Headers["x-test"] + "\ntype=" + req.ContentType + "\nbody=" + body, "text/plain; charset=utf-8");
                return;
            }
            Error(ctx, 404, "ResourceNotFound", "no such path " + path, "corr-brokenlist");
        }

        static void Error(System.Net.HttpListenerContext ctx, int status, string code, string message, string target)
        {
            Send(ctx, status, "{\"error\":{\"code\":" + Json(code) + ",\"message\":" + Json(message) + ",\"target\":" + Json(target) + "}}");
        }

        static void Send(System.Net.HttpListenerContext ctx, int status, string text, string contentType = "application/json; charset=utf-8")
        {
            byte[] bytes = new UTF8Encoding(false).GetBytes(text);
            ctx.Response.StatusCode = status;
            ctx.Response.ContentType = contentType;
            ctx.Response.ContentLength64 = bytes.Length;
            ctx.Response.OutputStream.Write(bytes, 0, bytes.Length);
            ctx.Response.Close();
        }

        public void Dispose()
        {
            listener.Stop();
            listener.Close();
        }
    }
}
