<#
.SYNOPSIS
Pauses a limiter's bucket.

.DESCRIPTION
Makes every caller of the key's bucket wait until the given time has passed, as the
client does when the server answers 429. A later pause extends the current one; a
shorter one never shortens it.

.PARAMETER Limiter
The limiter, from New-QgLimiter.

.PARAMETER Key
The bucket's key. Default: the default bucket.

.PARAMETER Seconds
How long the bucket stays paused from now.

.EXAMPLE
Suspend-QgLimiter -Limiter $limiter -Key 'hunting' -Seconds 30

.OUTPUTS
None
#>
function Suspend-QgLimiter {
    [CmdletBinding(SupportsShouldProcess, ConfirmImpact = 'Low')]
    [OutputType([void])]
    param(
        [Parameter(Mandatory, Position = 0)]
        [QuotaGate.Interop.Limiter]$Limiter,

        [Parameter(Position = 1)]
        [AllowEmptyString()]
        [string]$Key = '',

        [Parameter(Mandatory)]
        [ValidateRange(0.0, 31536000.0)]
        [double]$Seconds
    )
    if (-not $PSCmdlet.ShouldProcess("bucket '$Key'", "Pause for $Seconds s")) {
        return
    }
    try {
        $Limiter.Pause($Key, [uint64][math]::Ceiling($Seconds * 1000))
        Write-QgLog
    } catch {
        Write-QgLog
        $PSCmdlet.ThrowTerminatingError((ConvertTo-QgErrorRecord $_ -Target $Key))
    }
}
