<#
.SYNOPSIS
Starts the local simulator of the Defender API.

.DESCRIPTION
Starts the library's simulator of the Defender for Endpoint API on 127.0.0.1: token
endpoints, machines and alerts with paging, isolate, tags and advanced hunting, with the
published quotas enforced (429 with Retry-After) and optional faults. Use it to try
scripts offline: connect with Connect-QgDefender -Simulator. Stop it with
Stop-QgSimulator; it also stops when the module is removed.

.PARAMETER Machines
How many machines it serves.

.PARAMETER TimeScale
Shrinks every window and lifetime: 0.01 makes a 60 s window last 600 ms.

.PARAMETER Limit
Quotas by endpoint class ('default', 'hunting', ...), each as rates like New-QgLimiter's:
@{ default = (10,60); hunting = '2/1m' }. A class given here loses its built-in limits.

.PARAMETER TokenLifetimeSec
How long its tokens live, in seconds (fractions allowed, up to 86400).

.PARAMETER ErrorRate
The share of calls answered with 503 (0 to 1).

.PARAMETER ResetRate
The share of calls whose connection is reset after processing (0 to 1).

.PARAMETER LatencyMs
Added latency per call.

.PARAMETER InboundJitterMs
The most milliseconds a request waits on its way in, before the simulator counts it
(0 to 10000): each request, token requests included, waits a delay drawn uniformly from
0 to this, as a real server counts a call when it arrives. A call sent exactly one window
after another can then arrive inside the same window. Every run draws the same delays.

.PARAMETER RetryAfterStyle
How 429 answers say when to come back: Seconds (Retry-After, the default), HttpDate,
Milliseconds (retry-after-ms), XMsMilliseconds (x-ms-retry-after-ms), BodyOnly (the
limit only in the message, as advanced hunting does) or None.

.PARAMETER Port
The port to listen on. Default: any free port.

.EXAMPLE
$sim = Start-QgSimulator -Machines 500 -TimeScale 0.01

.EXAMPLE
$sim = Start-QgSimulator -Limit @{ default = (5,1) } -ErrorRate 0.05 -RetryAfterStyle HttpDate

.EXAMPLE
$sim = Start-QgSimulator -Limit @{ default = (5,1) } -InboundJitterMs 200

.OUTPUTS
QuotaGate.Interop.Simulator
#>
function Start-QgSimulator {
    [CmdletBinding(SupportsShouldProcess, ConfirmImpact = 'None')]
    [OutputType('QuotaGate.Interop.Simulator')]
    param(
        [ValidateRange(0, 1000000)]
        [int]$Machines,

        [ValidateRange(0.0001, 1000)]
        [double]$TimeScale,

        [hashtable]$Limit,

        [ValidateRange(0.001, 86400.0)]
        [double]$TokenLifetimeSec,

        [ValidateRange(0.0, 1.0)]
        [double]$ErrorRate = 0,

        [ValidateRange(0.0, 1.0)]
        [double]$ResetRate = 0,

        [ValidateRange(0, 600000)]
        [int]$LatencyMs = 0,

        [ValidateRange('NonNegative')]
        [int]$InboundJitterMs,

        [QuotaGate.Interop.RetryAfterStyle]$RetryAfterStyle,

        [ValidateRange(0, 65535)]
        [int]$Port = 0
    )
    try {
        $options = [QuotaGate.Interop.SimulatorOptions]::new()
        if ($PSBoundParameters.ContainsKey('Machines')) { $options.Machines = [uint32]$Machines }
        if ($PSBoundParameters.ContainsKey('TimeScale')) { $options.TimeScale = $TimeScale }
        if ($PSBoundParameters.ContainsKey('TokenLifetimeSec')) { $options.TokenLifetimeMs = [uint64]($TokenLifetimeSec * 1000) }
        $options.Error503Rate = $ErrorRate
        $options.ResetRate = $ResetRate
        $options.LatencyMs = [uint64]$LatencyMs
        if ($PSBoundParameters.ContainsKey('InboundJitterMs')) { $options.InboundJitterMs = [uint64]$InboundJitterMs }
        $options.Port = [uint16]$Port
        if ($PSBoundParameters.ContainsKey('RetryAfterStyle')) { $options.RetryAfterStyle = $RetryAfterStyle }
        if ($Limit) {
            foreach ($class in $Limit.Keys) {
                foreach ($rate in ConvertTo-QgRate @($Limit[$class])) {
                    $options.Limits.Add([QuotaGate.Interop.SimulatorLimit]::new([string]$class, $rate.Calls, $rate.WindowMs / 1000.0))
                }
            }
        }
        if (-not $PSCmdlet.ShouldProcess('127.0.0.1', 'Start the Defender API simulator')) {
            return
        }
        $sim = [QuotaGate.Interop.Simulator]::new($options)
    } catch {
        Write-QgLog
        $PSCmdlet.ThrowTerminatingError((ConvertTo-QgErrorRecord $_))
    }
    $script:Simulators.Add($sim)
    Write-Verbose "Simulator listening at $($sim.Url)."
    Write-QgLog
    $sim
}
