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
    FileList             = @('QuotaGate.psd1', 'QuotaGate.psm1', 'QuotaGate.Interop.cs', 'QuotaGate.Types.ps1xml', 'QuotaGate.Format.ps1xml')
    PrivateData          = @{
        PSData = @{
            Tags         = @('Defender', 'MDE', 'DefenderForEndpoint', 'RateLimit', 'Throttling', 'Quota', 'Security', 'API', 'PSEdition_Core', 'Windows', 'Linux', 'MacOS')
            LicenseUri   = 'https://example.invalid/quotagate/blob/main/LICENSE'
            ProjectUri   = 'https://example.invalid/quotagate'
            ReleaseNotes = 'First release: Connect-QgDefender, Invoke-QgRequest (with paging), Invoke-QgHunting, limiters (New/Wait/Test/Suspend-QgLimiter), Get-QgStatistics and the local simulator (Start/Stop-QgSimulator).'
        }
    }
}
