<#
.SYNOPSIS
Stops a simulator started by Start-QgSimulator.

.DESCRIPTION
Stops the given simulators and releases them; without -Simulator, stops every simulator
this session started.

.PARAMETER Simulator
The simulators to stop. Accepts pipeline input.

.EXAMPLE
Stop-QgSimulator -Simulator $sim

.EXAMPLE
Stop-QgSimulator

.OUTPUTS
None
#>
function Stop-QgSimulator {
    [CmdletBinding(SupportsShouldProcess, ConfirmImpact = 'Low')]
    [OutputType([void])]
    param(
        [Parameter(ValueFromPipeline)]
        [QuotaGate.Interop.Simulator[]]$Simulator
    )
    process {
        # Bound here, not in begin: pipeline input is bound only once process runs.
        $targets = if ($PSBoundParameters.ContainsKey('Simulator')) { $Simulator } else { @($script:Simulators) }
        foreach ($sim in $targets) {
            if (-not $PSCmdlet.ShouldProcess($sim.Url, 'Stop the simulator')) {
                continue
            }
            try {
                if (-not $sim.Handle.IsClosed) {
                    $sim.Stop()
                }
            } catch {
                Write-QgLog
                $PSCmdlet.ThrowTerminatingError((ConvertTo-QgErrorRecord $_ -Target $sim.Url))
            } finally {
                $sim.Dispose()
                [void]$script:Simulators.Remove($sim)
                Write-QgLog
            }
        }
    }
}
