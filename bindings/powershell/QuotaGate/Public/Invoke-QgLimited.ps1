<#
.SYNOPSIS
Runs a script block under a limiter's hold, so that the call it makes counts until it returns.

.DESCRIPTION
Waits in first-come, first-served order until the key's bucket admits a call (as
Wait-QgLimiter does, in short slices that Ctrl+C stops), runs the script block, and
releases the hold when the block ends, however it ends. The call's units count in every
window from admission until the block returns, and from then on: a server counts a call
when it arrives, between the send and the answer, so pacing your own Invoke-RestMethod
calls this way never lets one collide with the server's count, whatever the network's
delays. Wait-QgLimiter, by contrast, counts the call when it is admitted.

With pipeline input, the block runs once per object, each under a hold of its own, with
the object in $_. The block's output is written to the pipeline.

.PARAMETER Limiter
The limiter, from New-QgLimiter.

.PARAMETER ScriptBlock
The call to make under the hold: one HTTP call, typically Invoke-RestMethod.

.PARAMETER Key
The bucket's key. Default: the default bucket.

.PARAMETER Cost
Units the call takes (default 1); at most the smallest rate's calls.

.PARAMETER TimeoutSec
The longest wait for admission. A deadline that cannot be met fails at once. Default: no limit.

.PARAMETER InputObject
Objects to run the block for, one hold each, as $_.

.EXAMPLE
Invoke-QgLimited -Limiter $limiter -Key 'machines' { Invoke-RestMethod -Uri $uri -Headers $headers }

.EXAMPLE
$ids | Invoke-QgLimited -Limiter $limiter -Key 'tags' { Invoke-RestMethod -Method Post -Uri "$api/machines/$_/tags" -Headers $headers -Body $tag }

.OUTPUTS
What the script block writes.
#>
function Invoke-QgLimited {
    [CmdletBinding()]
    [OutputType([object])]
    param(
        [Parameter(Mandatory)]
        [QuotaGate.Interop.Limiter]$Limiter,

        [Parameter(Mandatory, Position = 0)]
        [scriptblock]$ScriptBlock,

        [AllowEmptyString()]
        [string]$Key = '',

        [ValidateRange('Positive')]
        [uint32]$Cost = 1,

        [ValidateRange('NonNegative')]
        [double]$TimeoutSec,

        [Parameter(ValueFromPipeline)]
        [object]$InputObject
    )
    begin {
        $timeoutMs = if ($PSBoundParameters.ContainsKey('TimeoutSec')) { [long][math]::Ceiling($TimeoutSec * 1000) } else { [long]-1 }
    }
    process {
        $hold = Wait-QgTurn -Cmdlet $PSCmdlet -Limiter $Limiter -Key $Key -Cost $Cost -TimeoutMs $timeoutMs -Hold
        try {
            if ($PSBoundParameters.ContainsKey('InputObject')) {
                $InputObject | ForEach-Object -Process $ScriptBlock
            } else {
                & $ScriptBlock
            }
        } finally {
            $hold.Dispose()
            Write-QgLog
        }
    }
}
