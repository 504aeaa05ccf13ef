@{
    RootModule           = 'QuotaGate.psm1'
    ModuleVersion        = '0.1.0'
    GUID                 = '04e1b3d5-bed8-4946-ac5d-c83ed1e1adcd'
    Author               = 'The quotagate maintainers'
    CompanyName          = 'quotagate'
    Copyright            = '(c) The quotagate maintainers. MIT OR Apache-2.0.'
    Description          = 'Keeps PowerShell scripts inside the Microsoft Defender for Endpoint API quotas: an exact rolling-window limiter and a throttling-aware client (tokens, Retry-After, paging), backed by the native libquotagate library.'
    PowerShellVersion    = '7.2'
    CompatiblePSEditions = @('Core')
    FunctionsToExport    = @(
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
    CmdletsToExport      = @()
    VariablesToExport    = @()
    AliasesToExport      = @()
    TypesToProcess       = @('QuotaGate.Types.ps1xml')
    FormatsToProcess     = @('QuotaGate.Format.ps1xml')
    # Every file of the module: Build-QuotaGateModule.ps1 stages these and nothing else.
    FileList             = @(
        'QuotaGate.psd1'
        'QuotaGate.psm1'
        'QuotaGate.Types.ps1xml'
        'QuotaGate.Format.ps1xml'
        'Interop/Calls.cs'
        'Interop/Client.cs'
        'Interop/ClientOptions.cs'
        'Interop/Codes.cs'
        'Interop/Errors.cs'
        'Interop/Handles.cs'
        'Interop/Limiter.cs'
        'Interop/Log.cs'
        'Interop/Native.cs'
        'Interop/NativeMethods.cs'
        'Interop/Simulator.cs'
        'Private/Calls.ps1'
        'Private/Client.ps1'
        'Private/Convert.ps1'
        'Private/Errors.ps1'
        'Private/Log.ps1'
        'Private/NativeLibrary.ps1'
        'Public/Connect-QgDefender.ps1'
        'Public/Disconnect-QgDefender.ps1'
        'Public/Get-QgContext.ps1'
        'Public/Get-QgLibrary.ps1'
        'Public/Get-QgStatistics.ps1'
        'Public/Invoke-QgHunting.ps1'
        'Public/Invoke-QgLimited.ps1'
        'Public/Invoke-QgRequest.ps1'
        'Public/New-QgLimiter.ps1'
        'Public/Start-QgSimulator.ps1'
        'Public/Stop-QgSimulator.ps1'
        'Public/Suspend-QgLimiter.ps1'
        'Public/Test-QgLimiter.ps1'
        'Public/Wait-QgLimiter.ps1'
    )
    PrivateData          = @{
        PSData = @{
            Tags         = @('Defender', 'MDE', 'DefenderForEndpoint', 'RateLimit', 'Throttling', 'Quota', 'Security', 'API', 'PSEdition_Core', 'Windows', 'Linux', 'MacOS')
            LicenseUri   = 'https://example.invalid/quotagate/blob/main/LICENSE'
            ProjectUri   = 'https://example.invalid/quotagate'
            ReleaseNotes = 'First release: Connect-QgDefender, Invoke-QgRequest (with paging), Invoke-QgHunting, limiters (New/Wait/Test/Suspend-QgLimiter), Get-QgStatistics and the local simulator (Start/Stop-QgSimulator).'
        }
    }
}
