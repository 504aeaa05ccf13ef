#Requires -Version 7.2
# QuotaGate: keeps PowerShell scripts inside the Microsoft Defender for Endpoint API
# quotas. The work is done by libquotagate; this module finds and loads it, and turns
# its objects and errors into cmdlets, pipeline objects and error records.

Set-StrictMode -Version 3.0

# The functions live in Private/ (helpers) and Public/ (one file per exported command).
# Dot-sourced here, they are defined in this module's scope and share its $script:
# variables; $script:ModuleRoot is this folder, where the library and interop are found.
$script:ModuleRoot = $PSScriptRoot
foreach ($folder in 'Private', 'Public') {
    foreach ($file in Get-ChildItem -LiteralPath (Join-Path $PSScriptRoot $folder) -Filter '*.ps1' | Sort-Object Name) {
        . $file.FullName
    }
}
# The loop's variables would otherwise be seen by every function of the module.
Remove-Variable -Name 'folder', 'file'

Import-QgNativeLibrary

# This runspace's records of the library's log; the library logs while any runspace has one.
$script:LogSession = [QuotaGate.Interop.Log]::Open([QuotaGate.Interop.LogLevel]::Debug)
$script:LogSession.Bind()
$script:LastLogMessage = $null
$script:DefaultClient = $null
$script:Simulators = [System.Collections.Generic.List[object]]::new()

$ExecutionContext.SessionState.Module.OnRemove = {
    if ($script:DefaultClient) {
        $script:DefaultClient.Dispose()
        $script:DefaultClient = $null
    }
    foreach ($sim in $script:Simulators) {
        $sim.Dispose()
    }
    $script:Simulators.Clear()
    $script:LogSession.Dispose()
}

Export-ModuleMember -Function @(
    'Connect-QgDefender'
    'Disconnect-QgDefender'
    'Get-QgContext'
    'Invoke-QgRequest'
    'Invoke-QgHunting'
    'New-QgLimiter'
    'Wait-QgLimiter'
    'Invoke-QgLimited'
    'Test-QgLimiter'
    'Suspend-QgLimiter'
    'Get-QgStatistics'
    'Start-QgSimulator'
    'Stop-QgSimulator'
    'Get-QgLibrary'
)
