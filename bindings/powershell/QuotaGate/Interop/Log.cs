// The library's log, kept per runspace.
// Part of the module's bridge to libquotagate: see Native.cs.

using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Threading;

namespace QuotaGate.Interop
{
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
