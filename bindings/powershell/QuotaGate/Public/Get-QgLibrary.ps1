<#
.SYNOPSIS
Shows the loaded libquotagate: its path, version and optional parts.

.DESCRIPTION
Returns the path the module loaded libquotagate from, its version, and the optional parts
it was built with: 'sim' (Start-QgSimulator), 'pfx' (-CertificatePath with a .pfx file)
and 'redis' (redis://, rediss:// and Redis Cluster stores). A cmdlet that needs a missing part fails
with an error that names it.

.EXAMPLE
(Get-QgLibrary).Features -contains 'redis'

.OUTPUTS
PSCustomObject with Path, Version and Features.
#>
function Get-QgLibrary {
    [CmdletBinding()]
    [OutputType([pscustomobject])]
    param()
    Write-QgLog
    [pscustomobject]@{
        Path     = [QuotaGate.Interop.Native]::LibraryPath
        Version  = [QuotaGate.Interop.Native]::Version
        Features = [QuotaGate.Interop.Native]::Features
    }
}
