// What a client is built from: routes, in-flight caps, token providers and the options.
// Part of the module's bridge to libquotagate: see Native.cs.

using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Security;
using System.Text;
using System.Threading;

namespace QuotaGate.Interop
{
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
    /// Bridges a managed token source to qg_token_source_fn: calls it and hands the UTF-8
    /// token to the library's sink (which copies it), and turns every exception into a
    /// failure code with the exception kept here, since nothing may unwind into native
    /// code. The library calls it one at a time per client.
    /// </summary>
    public sealed class TokenProvider
    {
        static readonly UTF8Encoding StrictUtf8 = new UTF8Encoding(false, true);

        readonly Func<Tuple<string, double>> source;
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
        internal TokenSourceCallback Callback { get; private set; }

        /// <summary>How many times the source was called.</summary>
        public int Calls
        {
            get { return Volatile.Read(ref calls); }
        }

        /// <summary>The last exception the source threw (or the last invalid answer), or null.</summary>
        public Exception LastError { get; private set; }

        uint Invoke(IntPtr userData, IntPtr sink)
        {
            byte[] token = null;
            try
            {
                ulong expiresMs;
                token = Fetch(out expiresMs);
                Native.Check(NativeMethods.qg_token_sink_set(sink, token, new UIntPtr((ulong)token.Length), expiresMs));
                LastError = null;
                return ResultCode.Ok;
            }
            catch (Exception e)
            {
                // The library never quotes a token: the reason travels on this side.
                LastError = e;
                return ResultCode.Auth;
            }
            finally
            {
                if (token != null)
                {
                    Array.Clear(token, 0, token.Length);
                }
            }
        }

        byte[] Fetch(out ulong expiresMs)
        {
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
            expiresMs = ms >= long.MaxValue ? long.MaxValue : (ulong)ms;
            if (answer.Item1.IndexOf('\0') >= 0)
            {
                throw new InvalidOperationException("the token provider's token contains a NUL character");
            }
            try
            {
                return StrictUtf8.GetBytes(answer.Item1);
            }
            catch (EncoderFallbackException)
            {
                throw new InvalidOperationException("the token provider's token is not valid Unicode");
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
        /// <summary>The password of a PFX <see cref="PfxPath"/> or <see cref="CertificatePath"/>; null is empty. The library refuses one for PEM files.</summary>
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
}
