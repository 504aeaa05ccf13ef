<#
.SYNOPSIS
Waits until a limiter admits a call.

.DESCRIPTION
Waits in first-come, first-served order until the key's bucket admits a call of the
given cost, then returns (with -PassThru, passes the input object on). The wait runs in
short slices, so Ctrl+C stops it within a fraction of a second and gives up the place
in the queue without taking a permit.

Pipe objects through it to pace a loop: each object waits for its own permit.

.PARAMETER Limiter
The limiter, from New-QgLimiter.

.PARAMETER Key
The bucket's key, e.g. a tenant or an endpoint. Default: the default bucket.

.PARAMETER Cost
Units the call takes (default 1); at most the smallest rate's calls.

.PARAMETER TimeoutSec
The longest wait. A deadline that cannot be met fails at once. Default: no limit.

.PARAMETER InputObject
Objects to pass on, one permit each, with -PassThru.

.PARAMETER PassThru
Write each input object once it is admitted.

.EXAMPLE
Wait-QgLimiter -Limiter $limiter -Key 'isolate'

.EXAMPLE
$ids | Wait-QgLimiter -Limiter $limiter -PassThru | ForEach-Object { Invoke-QgRequest -Method POST "/api/machines/$_/tags" -Body $tag }

.OUTPUTS
None, or the input objects with -PassThru.
#>
function Wait-QgLimiter {
    [CmdletBinding()]
    [OutputType([object])]
    param(
        [Parameter(Mandatory, Position = 0)]
        [QuotaGate.Interop.Limiter]$Limiter,

        [Parameter(Position = 1)]
        [AllowEmptyString()]
        [string]$Key = '',

        [ValidateRange('Positive')]
        [uint32]$Cost = 1,

        [ValidateRange('NonNegative')]
        [double]$TimeoutSec,

        [Parameter(ValueFromPipeline)]
        [object]$InputObject,

        [switch]$PassThru
    )
    begin {
        $timeoutMs = if ($PSBoundParameters.ContainsKey('TimeoutSec')) { [long][math]::Ceiling($TimeoutSec * 1000) } else { [long]-1 }
    }
    process {
        $watch = [System.Diagnostics.Stopwatch]::StartNew()
        Wait-QgTurn -Cmdlet $PSCmdlet -Limiter $Limiter -Key $Key -Cost $Cost -TimeoutMs $timeoutMs
        if ($watch.ElapsedMilliseconds -ge 1) {
            Write-Verbose "Waited $($watch.ElapsedMilliseconds) ms for quota on '$Key'."
        }
        Write-QgLog
        if ($PassThru) {
            $InputObject
        }
    }
}
