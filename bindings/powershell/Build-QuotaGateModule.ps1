#Requires -Version 7.2
<#
.SYNOPSIS
Stages the QuotaGate module with a freshly built libquotagate, ready to import or publish.

.DESCRIPTION
Builds the library in release mode with cargo (unless -NoBuild), then copies the module
(the files of its manifest's FileList: QuotaGate.psd1, QuotaGate.psm1, the C# interop
in Interop/, the functions in Private/ and Public/, and the .ps1xml type and format
data) to <OutputPath>/QuotaGate, in their folders, and the library, stripped (unless
cross-built), to <OutputPath>/QuotaGate/runtimes/<rid>/native/, where the module looks
first.
Run it once per platform (or with -Target for a cross build) into the same OutputPath to
gather several runtimes in one module, then Import-Module or Publish-Module the folder.

.PARAMETER OutputPath
Where to stage the module. Default: target/powershell/module in the repository.

.PARAMETER Target
A Rust target triple to build for (cargo build --target), e.g. aarch64-unknown-linux-gnu.

.PARAMETER RuntimeIdentifier
The .NET runtime identifier to stage the library under, e.g. linux-arm64. Default: the
one of this machine, or the one that matches -Target.

.PARAMETER NoBuild
Use the release library already built instead of running cargo.

.EXAMPLE
./bindings/powershell/Build-QuotaGateModule.ps1
Import-Module ./target/powershell/module/QuotaGate

.EXAMPLE
./bindings/powershell/Build-QuotaGateModule.ps1 -OutputPath ./out
Publish-Module -Path ./out/QuotaGate -NuGetApiKey $key
#>
[CmdletBinding()]
param(
    [string]$OutputPath,
    [string]$Target,
    [string]$RuntimeIdentifier,
    [switch]$NoBuild
)

Set-StrictMode -Version 3.0
$ErrorActionPreference = 'Stop'

$repository = [System.IO.Path]::GetFullPath([System.IO.Path]::Combine($PSScriptRoot, '..', '..'))
$source = Join-Path $PSScriptRoot 'QuotaGate'
if (-not $OutputPath) {
    $OutputPath = [System.IO.Path]::Combine($repository, 'target', 'powershell', 'module')
}

function Get-RidFromTarget([string]$Triple) {
    $arch = switch -Regex ($Triple) {
        '^x86_64' { 'x64' }
        '^aarch64' { 'arm64' }
        '^i[3-6]86' { 'x86' }
        '^arm' { 'arm' }
        default { throw "No runtime identifier is known for the target '$Triple'; pass -RuntimeIdentifier." }
    }
    $os = switch -Regex ($Triple) {
        'windows' { 'win' }
        'apple' { 'osx' }
        'linux-musl' { 'linux-musl' }
        'linux' { 'linux' }
        default { throw "No runtime identifier is known for the target '$Triple'; pass -RuntimeIdentifier." }
    }
    "$os-$arch"
}

function Get-HostRid {
    $arch = [System.Runtime.InteropServices.RuntimeInformation]::ProcessArchitecture.ToString().ToLowerInvariant()
    $os = if ($IsWindows) { 'win' } elseif ($IsMacOS) { 'osx' } else { 'linux' }
    "$os-$arch"
}

if (-not $RuntimeIdentifier) {
    $RuntimeIdentifier = if ($Target) { Get-RidFromTarget $Target } else { Get-HostRid }
}
$file = switch -Wildcard ($RuntimeIdentifier) {
    'win-*' { 'quotagate.dll' }
    'osx-*' { 'libquotagate.dylib' }
    default { 'libquotagate.so' }
}

if (-not $NoBuild) {
    $cargoArgs = @('build', '--release', '--manifest-path', (Join-Path $repository 'Cargo.toml'))
    if ($Target) {
        $cargoArgs += @('--target', $Target)
    }
    Write-Verbose "cargo $($cargoArgs -join ' ')"
    & cargo @cargoArgs
    if ($LASTEXITCODE -ne 0) {
        throw "cargo build failed with exit code $LASTEXITCODE."
    }
}

$targetDir = if ($env:CARGO_TARGET_DIR) { $env:CARGO_TARGET_DIR } else { Join-Path $repository 'target' }
$built = if ($Target) {
    [System.IO.Path]::Combine($targetDir, $Target, 'release', $file)
} else {
    [System.IO.Path]::Combine($targetDir, 'release', $file)
}
if (-not (Test-Path -LiteralPath $built -PathType Leaf)) {
    throw "The release library is not at '$built'; build it first or drop -NoBuild."
}

$module = Join-Path $OutputPath 'QuotaGate'
$native = [System.IO.Path]::Combine($module, 'runtimes', $RuntimeIdentifier, 'native')
New-Item -ItemType Directory -Force -Path $native | Out-Null
# The manifest's FileList names every file the module needs, by its path in the module.
foreach ($name in (Import-PowerShellDataFile -LiteralPath (Join-Path $source 'QuotaGate.psd1')).FileList) {
    $destination = Join-Path $module $name
    New-Item -ItemType Directory -Force -Path (Split-Path -Parent $destination) | Out-Null
    Copy-Item -LiteralPath (Join-Path $source $name) -Destination $destination -Force
}
Copy-Item -LiteralPath $built -Destination $native -Force
# The module ships the library stripped, as scripts/install and the Python wheel do
# (33 MB to 5 MB). A cross build keeps its symbols: this host's strip may not read it.
if (-not $Target -and -not $IsWindows) {
    $stripArgs = if ($IsMacOS) { @('-x') } else { @('--strip-unneeded') }
    & strip @stripArgs (Join-Path $native $file)
    if ($LASTEXITCODE -ne 0) {
        throw "strip failed with exit code $LASTEXITCODE."
    }
}

$manifest = Test-ModuleManifest -Path (Join-Path $module 'QuotaGate.psd1')
Write-Verbose "Staged QuotaGate $($manifest.Version) with $RuntimeIdentifier/$file in $module."
Get-Item -LiteralPath $module
