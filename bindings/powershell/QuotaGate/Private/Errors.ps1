# The library's exceptions as error records.

function ConvertTo-QgErrorRecord {
    # An error record for a failure, with the library's message and the server's details.
    # The id, category and whether it ends the cmdlet come from the interop layer.
    param(
        [Parameter(Mandatory)][object]$ErrorOrException,
        [object]$Target
    )
    $exception = if ($ErrorOrException -is [System.Management.Automation.ErrorRecord]) { $ErrorOrException.Exception } else { $ErrorOrException }
    $report = [QuotaGate.Interop.ErrorReport]::For($exception)
    # A record this module made already keeps its id, unless the library's exception is in it:
    # foreach gives an enumerator's exception the id of its type, QuotaGate.Interop.*.
    if ($ErrorOrException -is [System.Management.Automation.ErrorRecord] -and
        $report.Exception -isnot [QuotaGate.Interop.QuotaGateException] -and
        $ErrorOrException.FullyQualifiedErrorId -like 'QuotaGate.*' -and
        $ErrorOrException.FullyQualifiedErrorId -notlike 'QuotaGate.Interop.*') {
        return $ErrorOrException
    }
    $record = [System.Management.Automation.ErrorRecord]::new(
        $report.Exception, $report.Id, [System.Management.Automation.ErrorCategory]$report.Category, $Target)
    $e = $report.Exception
    if ($e -is [QuotaGate.Interop.QuotaGateException] -and ($e.Target -or $e.RequestId)) {
        $record.ErrorDetails = [System.Management.Automation.ErrorDetails]::new($e.Message)
        $record.ErrorDetails.RecommendedAction =
            "Quote correlation id '$($e.Target)' and request id '$($e.RequestId)' to support."
    }
    $record
}

function Test-QgTerminating {
    # True when no other pipeline item can escape the failure (no connection, bad arguments,
    # a closed client); a failed call (HTTP error, throttled, timed out) ends only its item.
    param([Parameter(Mandatory)][System.Management.Automation.ErrorRecord]$Record)
    [QuotaGate.Interop.ErrorReport]::For($Record.Exception).Terminating
}

function Write-QgCallError {
    # Reports the failure of one pipeline item's call as $Cmdlet: a failure that no other item
    # can escape (Test-QgTerminating) ends the cmdlet, any other is written and the next item
    # runs. A stopped pipeline is not a failure: the caller rethrows it before calling this.
    param(
        [Parameter(Mandatory)][System.Management.Automation.PSCmdlet]$Cmdlet,
        [Parameter(Mandatory)][System.Management.Automation.ErrorRecord]$ErrorRecord,
        [object]$Target
    )
    $record = ConvertTo-QgErrorRecord $ErrorRecord -Target $Target
    if (Test-QgTerminating $record) {
        $Cmdlet.ThrowTerminatingError($record)
    }
    $Cmdlet.WriteError($record)
}
