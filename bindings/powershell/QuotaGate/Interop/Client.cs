// The throttling-aware client: requests, responses and paging.
// Part of the module's bridge to libquotagate: see Native.cs.

using System;
using System.Collections.Generic;
using System.Security;
using System.Text;
using System.Threading;

namespace QuotaGate.Interop
{
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
                    Native.Check(NativeMethods.qg_client_builder_set_token_source(b, tokenProvider.Callback, IntPtr.Zero));
                }
                SetText(b, NativeMethods.qg_client_builder_set_scope, options.Scope, "Scope");
                SetText(b, NativeMethods.qg_client_builder_set_resource, options.Resource, "Resource");
                SetText(b, NativeMethods.qg_client_builder_set_proxy, options.Proxy, "Proxy");
                SetText(b, NativeMethods.qg_client_builder_set_store, options.Store, "Store");
                SetValue<ulong>(b, NativeMethods.qg_client_builder_set_timeout_ms, options.TimeoutMs);
                SetValue<ulong>(b, NativeMethods.qg_client_builder_set_connect_timeout_ms, options.ConnectTimeoutMs);
                SetValue<ulong>(b, NativeMethods.qg_client_builder_set_max_pages, options.MaxPages);
                SetValue<ulong>(b, NativeMethods.qg_client_builder_set_max_body_bytes, options.MaxBodyBytes);
                SetValue<uint>(b, NativeMethods.qg_client_builder_set_max_attempts, options.MaxAttempts);
                SetValue<ulong>(b, NativeMethods.qg_client_builder_set_max_quota_wait_ms, options.MaxQuotaWaitMs);
                SetValue<ulong>(b, NativeMethods.qg_client_builder_set_margin_ms, options.MarginMs);
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
                        options.HuntingBudgetPerHourMs ?? Native.DefaultValue(DefaultSetting.HuntingBudgetPerHourMs),
                        options.HuntingBudgetPerDayMs ?? Native.DefaultValue(DefaultSetting.HuntingBudgetPerDayMs)));
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
                // PEM or PFX: the library tells them apart by the file's content.
                SetWiping(Utf8.Encode(o.PfxPassword, "PfxPassword"),
                    password => NativeMethods.qg_client_builder_set_certificate_file(b, Utf8.Encode(o.CertificatePath, "CertificatePath"),
                        Utf8.Encode(o.PrivateKeyPath, "PrivateKeyPath"), password));
            }
            else if (o.CertificatePem != null)
            {
                SetWiping(Utf8.Encode(o.PrivateKeyPem, "PrivateKeyPem"),
                    key => NativeMethods.qg_client_builder_set_certificate_pem(b, Utf8.Encode(o.CertificatePem, "CertificatePem"), key));
            }
            else if (o.PfxPath != null)
            {
                SetWiping(Utf8.Encode(o.PfxPassword, "PfxPassword"),
                    password => NativeMethods.qg_client_builder_set_certificate_file(b, Utf8.Encode(o.PfxPath, "PfxPath"), null, password));
            }
            else if (o.PrivateKeyPath != null || o.PrivateKeyPem != null || o.PfxPassword != null)
            {
                throw new ArgumentException("a private key or PFX password was given without its certificate");
            }
        }

        delegate uint ValueSetter<T>(ClientBuilderHandle b, T value);

        /// <summary>Sets a number the options give; null leaves the library's default.</summary>
        static void SetValue<T>(ClientBuilderHandle b, ValueSetter<T> set, T? value) where T : struct
        {
            if (value.HasValue)
            {
                Native.Check(set(b, value.Value));
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
            if (value != null)
            {
                SetWiping(Utf8.Encode(value, name), bytes => set(b, bytes));
            }
        }

        /// <summary>Runs a setter with secret bytes (or null), and wipes them however it ends.</summary>
        static void SetWiping(byte[] secret, Func<byte[], uint> set)
        {
            try
            {
                Native.Check(set(secret));
            }
            finally
            {
                if (secret != null)
                {
                    Array.Clear(secret, 0, secret.Length);
                }
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
            return Walk<string>(first, token, NextItem);
        }

        /// <summary>Every page as a response, following @odata.nextLink.</summary>
        public IEnumerable<Response> Pages(Request first, CancellationToken token)
        {
            return Walk<Response>(first, token, NextPage);
        }

        /// <summary>Takes the next element of a walk; a result code other than Ok leaves it unset.</summary>
        delegate uint PageStep<T>(PagesHandle pages, out T next);

        static uint NextItem(PagesHandle pages, out string item)
        {
            IntPtr text;
            uint rc = NativeMethods.qg_pages_next_item(pages, out text);
            item = rc == ResultCode.Ok ? NativeMethods.TakeString(text) : null;
            return rc;
        }

        static uint NextPage(PagesHandle pages, out Response page)
        {
            ResponseHandle response;
            uint rc = NativeMethods.qg_pages_next(pages, out response);
            page = rc == ResultCode.Ok ? new Response(response) : null;
            return rc;
        }

        // Checks the request now: the iterator's body runs only at the first MoveNext.
        IEnumerable<T> Walk<T>(Request first, CancellationToken token, PageStep<T> step)
        {
            if (first == null)
            {
                throw new ArgumentNullException("first");
            }
            return WalkIterator(first, token, step);
        }

        IEnumerable<T> WalkIterator<T>(Request first, CancellationToken token, PageStep<T> step)
        {
            PagesHandle pages;
            ThrowClient(NativeMethods.qg_client_pages(handle, first.Handle, out pages), token);
            using (pages)
            using (token.Register(first.CancelQuietly))
            {
                while (true)
                {
                    T next;
                    uint rc = step(pages, out next);
                    if (rc == ResultCode.Done)
                    {
                        yield break;
                    }
                    ThrowClient(rc, token);
                    yield return next;
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
            return Native.CheckString(NativeMethods.qg_client_stats_json(handle, out json), json);
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
}
