<#
.SYNOPSIS
Gets the statistics of a limiter's bucket, a client or a simulator.

.DESCRIPTION
With -Limiter, returns a snapshot of the key's bucket: calls admitted and refused, waits,
timeouts, cancellations, pauses, the queue, and the use of each window. Otherwise
returns the client's counters (requests, retries, throttled answers, token requests)
and its buckets, for the given client or the session's default one. With -Simulator,
returns what the simulator counted (requests, 429s, peaks per window). Every field is
named in PascalCase (TotalWaitMs, TokenRequests, ByStatus); maps keyed by data (bucket
keys, route classes, HTTP statuses) are dictionaries with their keys as they are.

.PARAMETER Limiter
The limiter whose bucket to read.

.PARAMETER Key
The bucket's key. Default: the default bucket.

.PARAMETER Client
The client to read. Default: the session's default client.

.PARAMETER Simulator
A simulator from Start-QgSimulator.

.EXAMPLE
Get-QgStatistics -Limiter $limiter -Key 'isolate'

.EXAMPLE
(Get-QgStatistics).Buckets

.EXAMPLE
Get-QgStatistics -Simulator $sim

.OUTPUTS
QuotaGate.Interop.BucketStatistics, or System.Management.Automation.PSCustomObject
#>
function Get-QgStatistics {
    [CmdletBinding(DefaultParameterSetName = 'Client')]
    [OutputType('QuotaGate.Interop.BucketStatistics', 'System.Management.Automation.PSCustomObject')]
    param(
        [Parameter(Mandatory, ParameterSetName = 'Limiter')]
        [QuotaGate.Interop.Limiter]$Limiter,

        [Parameter(ParameterSetName = 'Limiter', Position = 0)]
        [AllowEmptyString()]
        [string]$Key = '',

        [Parameter(ParameterSetName = 'Client', ValueFromPipeline)]
        [QuotaGate.Interop.Client]$Client,

        [Parameter(Mandatory, ParameterSetName = 'Simulator')]
        [QuotaGate.Interop.Simulator]$Simulator
    )
    process {
        try {
            switch ($PSCmdlet.ParameterSetName) {
                'Limiter' { $Limiter.GetStatistics($Key) }
                'Simulator' {
                    ConvertTo-QgStatistics (ConvertFrom-QgJson $Simulator.StatisticsJson() -AsHashtable)
                }
                default {
                    $json = (Resolve-QgClient $Client).StatisticsJson()
                    ConvertTo-QgStatistics (ConvertFrom-QgJson $json -AsHashtable)
                }
            }
            Write-QgLog
        } catch {
            Write-QgLog
            $PSCmdlet.ThrowTerminatingError((ConvertTo-QgErrorRecord $_))
        }
    }
}
