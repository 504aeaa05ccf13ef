// Limiters: rates, tickets, holds, the limiter itself and its statistics.
// Part of the module's bridge to libquotagate: see Native.cs.

using System;
using System.Threading;

namespace QuotaGate.Interop
{
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
                    Native.Check(NativeMethods.qg_limiter_builder_set_margin_ms(builder, marginMs));
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
}
