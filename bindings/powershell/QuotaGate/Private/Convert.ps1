# Rates, JSON and statistics between PowerShell and the library.

function ConvertTo-QgRate {
    # Rates as the cmdlets accept them: (calls, seconds) pairs, strings such as
    # '100/60s', '1500/1h', '45/1m', '10/500ms', or [QuotaGate.Interop.Rate] objects.
    param([object[]]$Rate)
    $isNumber = { param($x) $x -is [int] -or $x -is [long] -or $x -is [double] -or $x -is [decimal] -or $x -is [uint32] }
    if ($Rate.Count -eq 2 -and (& $isNumber $Rate[0]) -and (& $isNumber $Rate[1])) {
        $Rate = , @($Rate[0], $Rate[1])
    }
    foreach ($r in $Rate) {
        if ($r -is [QuotaGate.Interop.Rate]) {
            $r
            continue
        }
        $calls = $null
        $seconds = $null
        if ($r -is [string]) {
            if ($r -match '^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h)?\s*$') {
                $calls = [uint32]$Matches[1]
                $factor = switch ($Matches[3]) {
                    'ms' { 0.001 }
                    'm' { 60 }
                    'min' { 60 }
                    'h' { 3600 }
                    default { 1 }
                }
                $seconds = [double]$Matches[2] * $factor
            }
        } elseif ($r -is [System.Collections.IList] -and $r.Count -eq 2 -and (& $isNumber $r[0]) -and (& $isNumber $r[1])) {
            $calls = [uint32]$r[0]
            $seconds = [double]$r[1]
        }
        if ($null -eq $calls) {
            throw [System.ArgumentException]::new(
                "'$r' is not a rate: give calls and seconds, as in -Rate 100,60 or -Rate (100,60),(1500,3600) or -Rate '100/60s','1500/1h'.")
        }
        [QuotaGate.Interop.Rate]::new($calls, [uint64][math]::Round($seconds * 1000))
    }
}

function ConvertFrom-QgJson {
    # -AsHashtable keeps keys that differ only by case (KQL's project Name, name), which
    # objects cannot hold.
    param([string]$Json, [switch]$AsHashtable)
    if ([string]::IsNullOrWhiteSpace($Json)) {
        return
    }
    ConvertFrom-Json -InputObject $Json -Depth 100 -AsHashtable:$AsHashtable
}

# Maps of the library's statistics JSON whose keys are data (bucket keys, route classes,
# HTTP statuses) rather than field names.
$script:QgDataMaps = @('buckets', 'in_flight_peaks', 'by_status', 'max_in_window', 'max_in_flight')

# 'total_wait_ms' -> 'TotalWaitMs': the names of the limiter's BucketStatistics.
function ConvertTo-QgPascalName {
    param([string]$Name)
    -join @($Name -split '_' | Where-Object { $_ } | ForEach-Object {
            $_.Substring(0, 1).ToUpperInvariant() + $_.Substring(1)
        })
}

# Statistics parsed from the library's JSON (with -AsHashtable), named as the limiter's
# are: each object's fields in PascalCase, the data maps kept as dictionaries with their
# keys as they are.
function ConvertTo-QgStatistics {
    param($Value, [switch]$KeysAreData)
    if ($Value -is [System.Collections.IDictionary]) {
        if ($KeysAreData) {
            foreach ($key in @($Value.Keys)) {
                $Value[$key] = ConvertTo-QgStatistics $Value[$key]
            }
            return $Value
        }
        $fields = [ordered]@{}
        foreach ($key in $Value.Keys) {
            $isData = $key -in $script:QgDataMaps
            $fields[(ConvertTo-QgPascalName $key)] = ConvertTo-QgStatistics $Value[$key] -KeysAreData:$isData
        }
        return [pscustomobject]$fields
    }
    if ($Value -is [System.Collections.IList]) {
        return , @(foreach ($item in $Value) { ConvertTo-QgStatistics $item })
    }
    $Value
}
