<#
.SYNOPSIS
Sends a request to the Defender API within its quotas.

.DESCRIPTION
Sends one request through a QuotaGate client: the call waits for its quota, gets a
token, is retried after a 429 (once the server's Retry-After has passed) or a 5xx, and
its JSON answer is returned as objects. With -All, a list is followed over every page
(@odata.nextLink) and its items are written to the pipeline one by one, with progress.

A failed call (an HTTP error status, a throttled or timed-out call, a lost connection)
is written as a non-terminating error, so that a pipeline of paths goes on with the next
one; -ErrorAction Stop makes it terminating. Its exception
(QuotaGate.Interop.QuotaGateException) carries the status, the server's error code and
message, the correlation id (Target) and the request id; its id names the status
(QuotaGate.Http404) or the failure (QuotaGate.Throttled), with -All as without. A
missing connection or an invalid argument stops the cmdlet.

The library's log is written as it comes, also while a call waits: warnings (a limit
adopted from the server, a call not repeated) to the warning stream, waits for quota and
retries to verbose (-Verbose), and details to debug (-Debug). A wait longer than a
second shows progress with the expected wait.

.PARAMETER Path
The path, e.g. /api/machines, or an absolute URL.

.PARAMETER Method
The HTTP method. Default: GET.

.PARAMETER Body
The body: a string is sent as is; any other object is sent as JSON (ConvertTo-Json
-Depth 10).

.PARAMETER Query
Query parameters, e.g. @{ '$filter' = "healthStatus eq 'Active'"; '$top' = 1000 }; the
library percent-encodes them.

.PARAMETER Headers
Extra request headers.

.PARAMETER ContentType
The body's content type. Default: application/json.

.PARAMETER All
Follow every page of a list and write its items one by one.

.PARAMETER AsHashtable
Return the JSON answer as hashtables instead of objects: needed when its keys differ
only by case, which objects cannot hold.

.PARAMETER Deadline
Seconds that bound everything the call does: the quota wait, the token fetch, every
attempt, retry and backoff (with -All, every page together). Past it the call fails with
a timeout, at once when a wait could not end in time. Default: no deadline (each attempt
is bounded by the connection's -TimeoutSec).

.PARAMETER Client
The client to use. Default: the session's default client.

.EXAMPLE
Invoke-QgRequest /api/machines -Query @{ '$filter' = "healthStatus eq 'Active'" } -All

.EXAMPLE
Invoke-QgRequest -Method POST -Path "/api/machines/$id/isolate" -Body @{ Comment = 'IR-1234'; IsolationType = 'Selective' }

.EXAMPLE
Invoke-QgRequest /api/alerts -All | Where-Object severity -eq 'High' | Select-Object -First 20

.OUTPUTS
System.Management.Automation.PSCustomObject
#>
function Invoke-QgRequest {
    [CmdletBinding()]
    [OutputType([psobject])]
    param(
        [Parameter(Mandatory, Position = 0, ValueFromPipelineByPropertyName)]
        [Alias('Uri')]
        [ValidateNotNullOrEmpty()]
        [string]$Path,

        [ValidateSet('GET', 'POST', 'PUT', 'PATCH', 'DELETE')]
        [string]$Method = 'GET',

        [object]$Body,

        [hashtable]$Query,

        [hashtable]$Headers,

        [string]$ContentType,

        [switch]$All,

        [switch]$AsHashtable,

        [ValidateRange(0.001, 604800.0)]
        [double]$Deadline,

        [QuotaGate.Interop.Client]$Client
    )
    process {
        $request = $null
        $stop = $null
        try {
            $useClient = Resolve-QgClient $Client
            $request = [QuotaGate.Interop.Request]::new($Method.ToUpperInvariant(), $Path)
            if ($PSBoundParameters.ContainsKey('Deadline')) {
                [void]$request.SetDeadline([long][math]::Ceiling($Deadline * 1000))
            }
            if ($Query) {
                foreach ($name in $Query.Keys) {
                    [void]$request.AddQuery([string]$name, [string]$Query[$name])
                }
            }
            if ($Headers) {
                foreach ($name in $Headers.Keys) {
                    [void]$request.SetHeader([string]$name, [string]$Headers[$name])
                }
            }
            if ($null -ne $Body) {
                $text = if ($Body -is [string]) { $Body } else { ConvertTo-Json -InputObject $Body -Depth 10 -Compress }
                [void]$request.SetBody($text, $(if ($ContentType) { $ContentType } else { $null }))
            }
            # Ctrl+C cancels the native wait from a timer thread.
            $stop = [QuotaGate.Interop.StopSignal]::new($PSCmdlet)
            if ($All) {
                $activity = "$Method $Path"
                $count = 0
                # MoveNext, not foreach: foreach hides the library's exception behind its own
                # record, and the finally frees the pages when Select-Object -First stops early.
                $items = $useClient.Items($request, $stop.Token).GetEnumerator()
                try {
                    while (Wait-QgCall ([QuotaGate.Interop.SlicedCall]::MoveNext($useClient, $request, $items, $script:LogSession)) $activity) {
                        $count++
                        Write-QgLog
                        if ($count % 100 -eq 1) {
                            Write-Progress -Activity $activity -Status "$count items"
                        }
                        ConvertFrom-QgJson $items.Current -AsHashtable:$AsHashtable
                    }
                } finally {
                    $items.Dispose()
                }
                Write-QgLog
                Write-Progress -Activity $activity -Completed
                Write-Verbose "$activity`: $count items."
            } else {
                $response = Send-QgRequest -Client $useClient -Request $request -Stop $stop -Activity "$Method $Path"
                if ($response.ContentType -and $response.ContentType -notmatch 'json') {
                    $response.BodyText
                } else {
                    ConvertFrom-QgJson $response.BodyText -AsHashtable:$AsHashtable
                }
            }
        } catch {
            Write-QgLog
            if ($PSCmdlet.Stopping -or $_.Exception -is [System.Management.Automation.PipelineStoppedException]) {
                throw
            }
            Write-QgCallError -Cmdlet $PSCmdlet -ErrorRecord $_ -Target $Path
        } finally {
            if ($stop) { $stop.Dispose() }
            if ($request) { $request.Dispose() }
            Write-QgLog
        }
    }
}
