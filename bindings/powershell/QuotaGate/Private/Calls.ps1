# Waiting in slices for calls run on a worker, so that logs and progress show meanwhile.

function Wait-QgSlice {
    # Runs $Slice, a wait of at most 200 ms that returns $true once done, until it is done:
    # between slices, the log is written and, after a second, progress with the last record
    # (which tells the expected wait) and Ctrl+C gets its turn.
    param(
        [Parameter(Mandatory)][scriptblock]$Slice,
        [Parameter(Mandatory)][string]$Activity
    )
    $script:LastLogMessage = $null
    $watch = [System.Diagnostics.Stopwatch]::StartNew()
    $shown = $false
    try {
        while (-not (& $Slice)) {
            Write-QgLog
            if ($watch.ElapsedMilliseconds -ge 1000) {
                $operation = if ($script:LastLogMessage) { $script:LastLogMessage } else { 'waiting for quota' }
                Write-Progress -Id 1 -Activity $Activity -Status "Waiting for $([int]$watch.Elapsed.TotalSeconds) s" -CurrentOperation $operation
                $shown = $true
            }
        }
    } finally {
        if ($shown) {
            Write-Progress -Id 1 -Activity $Activity -Completed
        }
    }
}

function Wait-QgCall {
    # Waits in slices for a call run on a worker (QuotaGate.Interop.SlicedCall); returns its
    # result or throws its error. A stop cancels the call.
    param(
        [Parameter(Mandatory)][object]$Call,
        [Parameter(Mandatory)][string]$Activity
    )
    try {
        Wait-QgSlice { $Call.Wait(200) } $Activity
    } finally {
        $Call.Stop()
    }
    $Call.GetResult()
}

function Send-QgRequest {
    # Sends a request on a worker, waiting in slices (Wait-QgCall); returns the response, or
    # throws the error of an unsuccessful one.
    param(
        [Parameter(Mandatory)][object]$Client,
        [Parameter(Mandatory)][object]$Request,
        [Parameter(Mandatory)][object]$Stop,
        [Parameter(Mandatory)][string]$Activity
    )
    $response = Wait-QgCall ([QuotaGate.Interop.SlicedCall]::Send($Client, $Request, $Stop.Token, $script:LogSession)) $Activity
    Write-QgLog
    if (-not $response.IsSuccess) {
        throw $response.Error
    }
    $response
}

function Wait-QgTurn {
    # Queues for a call in a limiter's bucket and waits in slices, so that Ctrl+C, the log and
    # progress get their turn; the ticket gives up its place however the wait ends. With
    # -Hold, returns the admitted call's hold. A failure ends $Cmdlet with its error record.
    param(
        [Parameter(Mandatory)][System.Management.Automation.PSCmdlet]$Cmdlet,
        [Parameter(Mandatory)][object]$Limiter,
        [string]$Key,
        [uint32]$Cost,
        [long]$TimeoutMs,
        [switch]$Hold
    )
    try {
        $ticket = if ($Hold) { $Limiter.EnqueueHold($Key, $Cost, $TimeoutMs) } else { $Limiter.Enqueue($Key, $Cost, $TimeoutMs) }
        try {
            Wait-QgSlice { $ticket.Wait(200) } "Waiting for quota on '$Key'"
            if ($Hold) {
                $ticket.TakeHold()
            }
        } finally {
            $ticket.Dispose()
        }
    } catch {
        if ($Cmdlet.Stopping -or $_.Exception -is [System.Management.Automation.PipelineStoppedException]) {
            throw
        }
        Write-QgLog
        $Cmdlet.ThrowTerminatingError((ConvertTo-QgErrorRecord $_ -Target $Key))
    }
}
