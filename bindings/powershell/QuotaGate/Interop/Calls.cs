// Blocking calls made interruptible: Ctrl+C as a cancellation token, and calls run on a
// worker so that a PowerShell thread waits in slices.
// Part of the module's bridge to libquotagate: see Native.cs.

using System;
using System.Collections.Generic;
using System.Reflection;
using System.Threading;
using System.Threading.Tasks;

namespace QuotaGate.Interop
{
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
}
