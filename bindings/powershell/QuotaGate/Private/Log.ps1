# The library's log records, written to this runspace's streams.

function Write-QgLog {
    # Writes this runspace's records of the library's log: errors and warnings to the warning
    # stream, info (waits, retries) to verbose, debug and trace to debug. Binds the calling
    # thread, so that what the library logs on it from now on comes to this runspace.
    $script:LogSession.Bind()
    foreach ($record in $script:LogSession.Drain()) {
        $script:LastLogMessage = $record.Message
        $text = "quotagate $($record.Level.ToString().ToLowerInvariant()): $($record.Message)"
        switch ($record.Stream) {
            'Warning' { Write-Warning $text }
            'Verbose' { Write-Verbose $text }
            default { Write-Debug $text }
        }
    }
}
