<#
.SYNOPSIS
Creates a limiter of calls by key with exact rolling windows.

.DESCRIPTION
Creates a limiter whose buckets (one per key) admit a call only when every rate allows
it over the last window, exactly: never more than the given calls in any window, and
callers served first come, first served. Use it to throttle your own loops
(Wait-QgLimiter), or give it to Connect-QgDefender -Limiter so that several clients share
one quota.

Give each rate as calls and seconds. PowerShell does not let a parameter be given
twice, so several rates go in one -Rate as a list: -Rate (100,60),(1500,3600), or as
strings: -Rate '100/60s','1500/1h'.

.PARAMETER Rate
One or more rates: calls,seconds pairs, or strings such as '100/60s', '1500/1h',
'45/1m', '10/500ms'. All apply at once.

.PARAMETER MarginMs
Widens every window by this many milliseconds, to absorb the delay between admission
here and the server's count.

.PARAMETER MaxBuckets
The most keys held at once (idle ones are dropped first). Default: 65536.

.PARAMETER Store
Shares every bucket with all processes that open the same store, instead of keeping
them in this session: 'file:///var/lib/quotagate/tenant.q' (the processes of one host;
on Windows 'file:///C:/ProgramData/quotagate/tenant.q') or
'redis://host:6379/0?prefix=qg' (many hosts; 'rediss://' for TLS; 'redis+cluster://h1:6379,h2:6379/'
for a Redis Cluster). Add
'on_unavailable=fail' to fail at once when the store cannot be reached; by default a
call waits and retries until its deadline.

.EXAMPLE
$limiter = New-QgLimiter -Rate 100,60

.EXAMPLE
$limiter = New-QgLimiter -Rate (100,60),(1500,3600) -MarginMs 250

.EXAMPLE
$limiter = New-QgLimiter -Rate '45/1m','1500/1h'

.EXAMPLE
$limiter = New-QgLimiter -Rate 100,60 -Store 'file:///var/lib/quotagate/tenant.q'

.OUTPUTS
QuotaGate.Interop.Limiter
#>
function New-QgLimiter {
    [CmdletBinding(SupportsShouldProcess, ConfirmImpact = 'None')]
    [OutputType('QuotaGate.Interop.Limiter')]
    param(
        [Parameter(Mandatory, Position = 0)]
        [object[]]$Rate,

        [ValidateRange('NonNegative')]
        [long]$MarginMs = 0,

        [ValidateRange('NonNegative')]
        [long]$MaxBuckets = 0,

        [ValidateNotNullOrEmpty()]
        [string]$Store
    )
    try {
        $rates = [QuotaGate.Interop.Rate[]]@(ConvertTo-QgRate $Rate)
        if ($PSCmdlet.ShouldProcess(($rates -join ', '), 'Create limiter')) {
            [QuotaGate.Interop.Limiter]::new($rates, [uint64]$MarginMs, [uint64]$MaxBuckets, $Store)
        }
        Write-QgLog
    } catch {
        Write-QgLog
        $PSCmdlet.ThrowTerminatingError((ConvertTo-QgErrorRecord $_ -Target $Rate))
    }
}
