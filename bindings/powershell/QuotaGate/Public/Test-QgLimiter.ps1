<#
.SYNOPSIS
Tries to take a call from a limiter without waiting.

.DESCRIPTION
Returns $true when the key's bucket admits the call now (the call is then counted, so
make it), and $false when it would have to wait; the wait it would need is written to
the verbose stream. Never waits.

.PARAMETER Limiter
The limiter, from New-QgLimiter.

.PARAMETER Key
The bucket's key. Default: the default bucket.

.PARAMETER Cost
Units the call takes (default 1).

.EXAMPLE
if (Test-QgLimiter -Limiter $limiter -Key 'export') { Invoke-QgRequest /api/machines/SoftwareVulnerabilitiesByMachine }

.OUTPUTS
System.Boolean
#>
function Test-QgLimiter {
    [CmdletBinding()]
    [OutputType([bool])]
    param(
        [Parameter(Mandatory, Position = 0)]
        [QuotaGate.Interop.Limiter]$Limiter,

        [Parameter(Position = 1)]
        [AllowEmptyString()]
        [string]$Key = '',

        [ValidateRange('Positive')]
        [uint32]$Cost = 1
    )
    try {
        [uint64]$waitMs = 0
        $admitted = $Limiter.TryAcquire($Key, $Cost, [ref]$waitMs)
    } catch {
        Write-QgLog
        $PSCmdlet.ThrowTerminatingError((ConvertTo-QgErrorRecord $_ -Target $Key))
    }
    if (-not $admitted) {
        Write-Verbose "'$Key' would admit the call in $waitMs ms."
    }
    Write-QgLog
    $admitted
}
