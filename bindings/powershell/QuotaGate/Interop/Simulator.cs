// The library's local simulator of the Defender API.
// Part of the module's bridge to libquotagate: see Native.cs.

using System;
using System.Collections.Generic;
using System.Security;

namespace QuotaGate.Interop
{
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
                    Native.Check(NativeMethods.qg_sim_config_set_limit_ms(c, Utf8.Encode(l.EndpointClass, "EndpointClass"), l.Calls, (ulong)Math.Round(l.WindowSeconds * 1000.0)));
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
            return Utf8.ReadChecked(
                (byte[] buf, UIntPtr len, out UIntPtr written) => NativeMethods.qg_sim_info(handle, field, buf, len, out written));
        }

        public SimHandle Handle
        {
            get { return handle; }
        }

        /// <summary>A token for <paramref name="clientId"/> without a token request, for tests of token providers.</summary>
        public string IssueToken(string clientId)
        {
            byte[] id = Utf8.Encode(clientId, "clientId");
            return Utf8.ReadChecked(
                (byte[] buf, UIntPtr len, out UIntPtr written) => NativeMethods.qg_sim_issue_token(handle, id, buf, len, out written));
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
            return Native.CheckString(NativeMethods.qg_sim_log_json(handle, out json), json);
        }

        /// <summary>The simulator's counters as a JSON object.</summary>
        public string StatisticsJson()
        {
            IntPtr json;
            return Native.CheckString(NativeMethods.qg_sim_stats_json(handle, out json), json);
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
}
