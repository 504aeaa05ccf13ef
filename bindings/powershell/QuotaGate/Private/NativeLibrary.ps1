# Finding libquotagate (QUOTAGATE_LIBRARY, runtimes/<rid>/native, a checkout's target/)
# and loading it with the interop types.

function Get-QgRuntimeIdentifier {
    # The runtime identifiers (RIDs) to look for, most specific first.
    $arch = switch ([System.Runtime.InteropServices.RuntimeInformation]::ProcessArchitecture.ToString()) {
        'X64' { 'x64' }
        'Arm64' { 'arm64' }
        'X86' { 'x86' }
        'Arm' { 'arm' }
        default { $_.ToLowerInvariant() }
    }
    if ($IsWindows) {
        "win-$arch"
    } elseif ($IsMacOS) {
        "osx-$arch"
    } else {
        if (Get-ChildItem -Path '/lib' -Filter 'ld-musl-*' -ErrorAction Ignore) {
            "linux-musl-$arch"
        }
        "linux-$arch"
    }
}

function Get-QgLibraryCandidate {
    # Every path the module tries, in order. $env:QUOTAGATE_LIBRARY replaces them all.
    if ($env:QUOTAGATE_LIBRARY) {
        return , @($env:QUOTAGATE_LIBRARY)
    }
    $file = if ($IsWindows) { 'quotagate.dll' } elseif ($IsMacOS) { 'libquotagate.dylib' } else { 'libquotagate.so' }
    $paths = [System.Collections.Generic.List[string]]::new()
    foreach ($rid in Get-QgRuntimeIdentifier) {
        $paths.Add([System.IO.Path]::Combine($script:ModuleRoot, 'runtimes', $rid, 'native', $file))
    }
    # A checkout of the repository: bindings/powershell/QuotaGate -> the repository root.
    $targets = [System.Collections.Generic.List[string]]::new()
    if ($env:CARGO_TARGET_DIR) {
        $targets.Add($env:CARGO_TARGET_DIR)
    }
    $targets.Add([System.IO.Path]::GetFullPath([System.IO.Path]::Combine($script:ModuleRoot, '..', '..', '..', 'target')))
    foreach ($target in $targets) {
        foreach ($buildProfile in 'release', 'debug') {
            $paths.Add([System.IO.Path]::Combine($target, $buildProfile, $file))
        }
    }
    , $paths.ToArray()
}

function Import-QgNativeLibrary {
    $candidates = Get-QgLibraryCandidate
    $library = $candidates | Where-Object { Test-Path -LiteralPath $_ -PathType Leaf } | Select-Object -First 1
    if (-not $library) {
        $how = if ($env:QUOTAGATE_LIBRARY) { 'QUOTAGATE_LIBRARY names a file that does not exist' } else {
            'build it with "cargo build --release", or set QUOTAGATE_LIBRARY to its path'
        }
        throw [System.IO.FileNotFoundException]::new(
            "QuotaGate cannot find libquotagate ($how). Tried:`n  " + ($candidates -join "`n  "))
    }
    if (-not ('QuotaGate.Interop.Native' -as [type])) {
        # Runspaces that import the module at once (ForEach-Object -Parallel) compile it once.
        $mutex = [System.Threading.Mutex]::new($false, "QuotaGate.Interop.AddType.$PID")
        [void]$mutex.WaitOne()
        try {
            if (-not ('QuotaGate.Interop.Native' -as [type])) {
                # The interop's files compile together, into one assembly.
                $sources = Get-ChildItem -LiteralPath ([System.IO.Path]::Combine($script:ModuleRoot, 'Interop')) -Filter '*.cs' | Sort-Object Name
                Add-Type -LiteralPath $sources.FullName -IgnoreWarnings
            }
        } finally {
            $mutex.ReleaseMutex()
            $mutex.Dispose()
        }
    }
    [QuotaGate.Interop.Native]::Load((Resolve-Path -LiteralPath $library).ProviderPath)
}
