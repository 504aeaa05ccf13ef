#Requires -Version 7.2
# QuotaGate: keeps PowerShell scripts inside the Microsoft Defender for Endpoint API
# quotas. The work is done by libquotagate; this module finds and loads it, and turns
# its objects and errors into cmdlets, pipeline objects and error records.

Set-StrictMode -Version 3.0

# ----- locating and loading the native library -------------------------------------------

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
        $paths.Add([System.IO.Path]::Combine($PSScriptRoot, 'runtimes', $rid, 'native', $file))
    }
    # A checkout of the repository: bindings/powershell/QuotaGate -> the repository root.
    $targets = [System.Collections.Generic.List[string]]::new()
    if ($env:CARGO_TARGET_DIR) {
        $targets.Add($env:CARGO_TARGET_DIR)
    }
    $targets.Add([System.IO.Path]::GetFullPath([System.IO.Path]::Combine($PSScriptRoot, '..', '..', '..', 'target')))
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
                Add-Type -Path ([System.IO.Path]::Combine($PSScriptRoot, 'QuotaGate.Interop.cs')) -IgnoreWarnings
            }
        } finally {
            $mutex.ReleaseMutex()
            $mutex.Dispose()
        }
    }
    [QuotaGate.Interop.Native]::Load((Resolve-Path -LiteralPath $library).ProviderPath)
}

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

# ----- private helpers --------------------------------------------------------------------

function Write-QgLog {
    # Writes this runspace's records of the library's log: errors and warnings to the warning
    # stream, info (waits, retries) to verbose, debug and trace to debug. Binds the calling
    # thread, so that what the library logs on it from now on comes to this runspace.
    $script:LogSession.Bind()
    foreach ($record in $script:LogSession.Drain()) {
        $script:LastLogMessage = $record.Message
        $text = "quotagate $($record.Level.ToString().ToLowerInvariant()): $($record.Message)"
        switch ($record.Stream) {
            'Warning' { Write-Warning $text }
            'Verbose' { Write-Verbose $text }
            default { Write-Debug $text }
        }
    }
}

function Wait-QgSlice {
    # Runs $Slice, a wait of at most 200 ms that returns $true once done, until it is done:
    # between slices, the log is written and, after a second, progress with the last record
    # (which tells the expected wait) and Ctrl+C gets its turn.
    param(
        [Parameter(Mandatory)][scriptblock]$Slice,
        [Parameter(Mandatory)][string]$Activity
    )
    $script:LastLogMessage = $null
    $watch = [System.Diagnostics.Stopwatch]::StartNew()
    $shown = $false
    try {
        while (-not (& $Slice)) {
            Write-QgLog
            if ($watch.ElapsedMilliseconds -ge 1000) {
                $operation = if ($script:LastLogMessage) { $script:LastLogMessage } else { 'waiting for quota' }
                Write-Progress -Id 1 -Activity $Activity -Status "Waiting for $([int]$watch.Elapsed.TotalSeconds) s" -CurrentOperation $operation
                $shown = $true
            }
        }
    } finally {
        if ($shown) {
            Write-Progress -Id 1 -Activity $Activity -Completed
        }
    }
}

function Wait-QgCall {
    # Waits in slices for a call run on a worker (QuotaGate.Interop.SlicedCall); returns its
    # result or throws its error. A stop cancels the call.
    param(
        [Parameter(Mandatory)][object]$Call,
        [Parameter(Mandatory)][string]$Activity
    )
    try {
        Wait-QgSlice { $Call.Wait(200) } $Activity
    } finally {
        $Call.Stop()
    }
    $Call.GetResult()
}

function ConvertTo-QgErrorRecord {
    # An error record for a failure, with the library's message and the server's details.
    # The id, category and whether it ends the cmdlet come from the interop layer.
    param(
        [Parameter(Mandatory)][object]$ErrorOrException,
        [object]$Target
    )
    $exception = if ($ErrorOrException -is [System.Management.Automation.ErrorRecord]) { $ErrorOrException.Exception } else { $ErrorOrException }
    $report = [QuotaGate.Interop.ErrorReport]::For($exception)
    # A record this module made already keeps its id, unless the library's exception is in it:
    # foreach gives an enumerator's exception the id of its type, QuotaGate.Interop.*.
    if ($ErrorOrException -is [System.Management.Automation.ErrorRecord] -and
        $report.Exception -isnot [QuotaGate.Interop.QuotaGateException] -and
        $ErrorOrException.FullyQualifiedErrorId -like 'QuotaGate.*' -and
        $ErrorOrException.FullyQualifiedErrorId -notlike 'QuotaGate.Interop.*') {
        return $ErrorOrException
    }
    $record = [System.Management.Automation.ErrorRecord]::new(
        $report.Exception, $report.Id, [System.Management.Automation.ErrorCategory]$report.Category, $Target)
    $e = $report.Exception
    if ($e -is [QuotaGate.Interop.QuotaGateException] -and ($e.Target -or $e.RequestId)) {
        $record.ErrorDetails = [System.Management.Automation.ErrorDetails]::new($e.Message)
        $record.ErrorDetails.RecommendedAction =
            "Quote correlation id '$($e.Target)' and request id '$($e.RequestId)' to support."
    }
    $record
}

function Test-QgTerminating {
    # True when no other pipeline item can escape the failure (no connection, bad arguments,
    # a closed client); a failed call (HTTP error, throttled, timed out) ends only its item.
    param([Parameter(Mandatory)][System.Management.Automation.ErrorRecord]$Record)
    [QuotaGate.Interop.ErrorReport]::For($Record.Exception).Terminating
}

function Resolve-QgClient {
    param([object]$Client)
    if ($Client) {
        return $Client
    }
    if (-not $script:DefaultClient) {
        throw [System.InvalidOperationException]::new(
            'QuotaGate is not connected: run Connect-QgDefender first, or pass -Client.')
    }
    $script:DefaultClient
}

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

function ConvertFrom-QgTokenAnswer {
    # What a -TokenProvider script block returned, as the (token, seconds) pair the interop
    # layer takes: an object or hashtable with AccessToken (or Token) and ExpiresIn seconds
    # (or ExpiresOn, a point in time), or the two-element array token, seconds.
    param([object[]]$Answer)
    $token = $null
    $seconds = $null
    if ($Answer.Count -eq 1) {
        $a = $Answer[0]
        $get = {
            param([string[]]$Names)
            foreach ($n in $Names) {
                if ($a -is [System.Collections.IDictionary]) {
                    if ($a.Contains($n)) { return $a[$n] }
                } elseif ($a.PSObject.Properties[$n]) {
                    return $a.$n
                }
            }
        }
        $token = & $get 'AccessToken', 'Token', 'access_token'
        $expiresIn = & $get 'ExpiresIn', 'expires_in'
        $expiresOn = & $get 'ExpiresOn', 'expires_on'
        if ($null -ne $expiresIn) {
            $seconds = [double]$expiresIn
        } elseif ($expiresOn -is [datetimeoffset]) {
            $seconds = ($expiresOn - [datetimeoffset]::UtcNow).TotalSeconds
        } elseif ($expiresOn -is [datetime]) {
            $seconds = ($expiresOn.ToUniversalTime() - [datetime]::UtcNow).TotalSeconds
        }
    } elseif ($Answer.Count -eq 2) {
        $token = $Answer[0]
        $seconds = [double]$Answer[1]
    }
    if ($token -is [securestring]) {
        $token = [System.Net.NetworkCredential]::new('', $token).Password
    }
    if ([string]::IsNullOrEmpty($token) -or $null -eq $seconds) {
        throw [System.ArgumentException]::new(
            'the -TokenProvider script block must return @{ AccessToken = <token>; ExpiresIn = <seconds> } or the array <token>, <seconds>')
    }
    [System.Tuple]::Create([string]$token, [double]$seconds)
}

function New-QgTokenSource {
    # The script block as the Func the interop layer calls when the client needs a token.
    # It runs on the thread that sends the call: this session's, for ordinary use.
    param([scriptblock]$Provider)
    $convert = ${function:ConvertFrom-QgTokenAnswer}
    $source = {
        & $convert -Answer @(& $Provider)
    }.GetNewClosure()
    [System.Func[System.Tuple[string, double]]]$source
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

# ----- connecting ---------------------------------------------------------------------------

<#
.SYNOPSIS
Connects to the Defender for Endpoint API through a throttling-aware client.

.DESCRIPTION
Creates a quotagate client and makes it the session's default for the other QuotaGate
cmdlets; -PassThru also returns it, and Get-QgContext shows it. Every call made through
it waits for its turn in the published quotas (100 calls per minute and 1,500 per hour
by default, lower for advanced hunting and other endpoints), caches its OAuth2 token,
honours Retry-After on 429 answers and follows @odata.nextLink pages.

No request is sent here: the token is fetched by the first call, and a bad secret is
reported then.

.PARAMETER TenantId
The Entra ID tenant (directory) id.

.PARAMETER ClientId
The application (client) id of the app registration.

.PARAMETER ClientSecret
The app's client secret, as a SecureString.

.PARAMETER Credential
The app id as user name and the client secret as password.

.PARAMETER AccessToken
A ready bearer token, instead of tenant, app id and secret. It is not refreshed.

.PARAMETER CertificatePath
Signs in with a certificate instead of a secret: a PEM certificate file (.crt, .cer,
.pem; with -PrivateKeyPath, or holding the key too), or a PKCS#12 file (.pfx, .p12) with
its key, opened with -CertificatePassword. Upload the public certificate to the app
registration. The key is read now and kept in memory that is wiped when the client is
freed.

.PARAMETER PrivateKeyPath
The PEM file of the certificate's RSA private key (unencrypted PKCS#8 PRIVATE KEY or
PKCS#1 RSA PRIVATE KEY). Omit it when the -CertificatePath file holds both.

.PARAMETER CertificatePassword
The password of a .pfx/.p12 -CertificatePath. Not used with PEM files.

.PARAMETER AssertionAlgorithm
How client assertions are signed: PS256 (the default) or RS256 for older identity
platforms.

.PARAMETER TokenProvider
A script block that returns an access token when the client needs one (first call, near
the token's end, or after a 401): either a hashtable or object with AccessToken (or
Token, a string or SecureString) and ExpiresIn (seconds) or ExpiresOn (a date), or a
two-element array: the token, then its lifetime in seconds. An error it throws fails the
call with an authentication error carrying the message. It runs on the thread that sends
the call, one call at a time, and must not send calls with this client.

.PARAMETER Cloud
The cloud or region: commercial (the default), the regions us, eu, uk, au, swa, ina,
aea, or the US government clouds gcc, gcc-high, dod. It sets the API base URL, the login
authority and the token scope together; -BaseUrl and -Authority still override their
part.

.PARAMETER Simulator
A simulator from Start-QgSimulator: connects to it with its own credentials.

.PARAMETER BaseUrl
The API's base URL, e.g. https://api.security.microsoft.com or a regional host.
Default: https://api.securitycenter.microsoft.com.

.PARAMETER Authority
The login authority. Default: https://login.microsoftonline.com, or the -Cloud's
(https://login.microsoftonline.us for gcc-high and dod).

.PARAMETER AllowInsecureHttp
Accept http:// for -BaseUrl or -Authority on a host that is not loopback. The client
secret and every token then cross the network unencrypted, so this is refused without
the switch; use it only behind a TLS-terminating proxy on a network you trust. http:// to
localhost, 127.0.0.0/8 or ::1 (the simulator) needs no switch.

.PARAMETER TimeoutSec
The time limit of one HTTP exchange, in seconds (default 300).

.PARAMETER MaxAttempts
The most attempts for one call (throttled, 5xx or failed connections).

.PARAMETER MaxQuotaWaitSec
The longest a call may wait for its quota before it fails (default 15 minutes).

.PARAMETER Limiter
A limiter from New-QgLimiter to share quotas with other clients in this process.

.PARAMETER Proxy
A proxy URL. Default: HTTPS_PROXY, ALL_PROXY and NO_PROXY from the environment.

.PARAMETER Store
Shares the quotas with every process (and host) that opens the same store:
'file:///var/lib/quotagate/tenant.q' for parallel jobs and scheduled scripts on one
machine, 'redis://host:6379/0?prefix=qg' for collectors on several. Not with -Limiter.

.PARAMETER PassThru
Returns the client, to pass as -Client or to keep beside the session's default.

.PARAMETER Rate
Replaces the library's default rates (100 per minute and 1,500 per hour) of every
bucket without a route: calls,seconds pairs or strings such as '100/60s','1500/1h', as
New-QgLimiter takes them.

.PARAMETER Route
Rates of your own for some requests, before the built-in routes: a hashtable from
'METHOD /path/pattern' (or '/path/pattern' for any method; * matches one segment) to
rates, e.g. @{ 'POST /api/machines/*/isolate' = '10/1m' }.

.PARAMETER MaxInFlight
Caps the calls under way at once: a hashtable from 'METHOD /path/pattern' to the cap,
e.g. @{ 'POST /api/machines/{id}/runliveresponse' = 10 }; 0 lifts a cap.

.PARAMETER HuntingBudgetPerHourSec
The advanced hunting run time allowed per rolling hour, in seconds (0: no limit).

.PARAMETER HuntingBudgetPerDaySec
The advanced hunting run time allowed per rolling day, in seconds (0: no limit).

.PARAMETER HuntingBudgetPolicy
What a hunting query does when the run-time budget is spent: Wait (the default) or Fail
at once with a throttled error.

.PARAMETER MarginMs
Widens every window of the client's own limiter by this many milliseconds. Not used
with -Limiter: give that limiter its own margin.

.PARAMETER ConnectTimeoutSec
The time limit for opening a connection, in seconds.

.PARAMETER MaxBodyBytes
The largest answer body accepted, in bytes.

.PARAMETER MaxPages
The most pages one -All run follows before it fails (default 100,000); a next link that
leads back to a page already fetched fails at once.

.PARAMETER Scope
The OAuth2 scope to ask tokens for, instead of the cloud's.

.PARAMETER Resource
The resource to ask tokens for, for identity platforms that take one instead of a scope.

.EXAMPLE
$secret = Read-Host -AsSecureString 'Client secret'
Connect-QgDefender -TenantId $tenant -ClientId $appId -ClientSecret $secret

.EXAMPLE
Connect-QgDefender -TenantId $tenant -Credential (Get-Credential -UserName $appId)

.EXAMPLE
$sim = Start-QgSimulator -Machines 500
Connect-QgDefender -Simulator $sim

.EXAMPLE
$eu = Connect-QgDefender -Cloud eu -TenantId $tenant -ClientId $appId -ClientSecret $secret -PassThru
Invoke-QgRequest /api/machines -Client $eu

.EXAMPLE
Connect-QgDefender -TenantId $tenant -ClientId $appId -ClientSecret $secret -Route @{ 'POST /api/machines/*/isolate' = '10/1m' } -MaxInFlight @{ 'POST /api/machines/{id}/runliveresponse' = 10 } -HuntingBudgetPerHourSec 300 -HuntingBudgetPolicy Fail

Isolates at most 10 machines a minute, runs at most 10 live response sessions at once,
and fails hunting queries at once after 5 minutes of run time in an hour.

.EXAMPLE
Connect-QgDefender -Cloud gcc-high -TenantId $tenant -ClientId $appId -ClientSecret $secret

Connects to the US Government GCC High cloud: api-gov.securitycenter.microsoft.us,
signing in at login.microsoftonline.us.

.EXAMPLE
Connect-QgDefender -TenantId $tenant -ClientId $appId -CertificatePath /etc/mde/app.crt -PrivateKeyPath /etc/mde/app.key

Signs in with a certificate and its PEM key instead of a secret.

.EXAMPLE
$password = Read-Host -AsSecureString 'PFX password'
Connect-QgDefender -Cloud eu -TenantId $tenant -ClientId $appId -CertificatePath ./app.pfx -CertificatePassword $password

Signs in with a PKCS#12 file, as Windows and Azure Key Vault export it, in the EU region.

.EXAMPLE
Connect-QgDefender -TokenProvider {
    $t = Get-AzAccessToken -ResourceUrl 'https://api.securitycenter.microsoft.com'
    @{ AccessToken = $t.Token; ExpiresOn = $t.ExpiresOn }
}

Takes tokens from another module, asked again whenever the cached one nears its end.
Returning @{ AccessToken = $token; ExpiresIn = 3599 } or the array $token, 3599 works
as well.

.OUTPUTS
None, or QuotaGate.Interop.Client with -PassThru.
#>
function Connect-QgDefender {
    [CmdletBinding(DefaultParameterSetName = 'ClientSecret')]
    [OutputType('QuotaGate.Interop.Client')]
    param(
        [Parameter(Mandatory, ParameterSetName = 'ClientSecret')]
        [Parameter(Mandatory, ParameterSetName = 'Credential')]
        [Parameter(Mandatory, ParameterSetName = 'Certificate')]
        [Parameter(ParameterSetName = 'TokenProvider')]
        [ValidateNotNullOrEmpty()]
        [string]$TenantId,

        [Parameter(Mandatory, ParameterSetName = 'ClientSecret')]
        [Parameter(Mandatory, ParameterSetName = 'Certificate')]
        [Parameter(ParameterSetName = 'TokenProvider')]
        [ValidateNotNullOrEmpty()]
        [string]$ClientId,

        [Parameter(Mandatory, ParameterSetName = 'ClientSecret')]
        [securestring]$ClientSecret,

        [Parameter(Mandatory, ParameterSetName = 'Credential')]
        [pscredential]$Credential,

        [Parameter(Mandatory, ParameterSetName = 'AccessToken')]
        [securestring]$AccessToken,

        [Parameter(Mandatory, ParameterSetName = 'Simulator')]
        [QuotaGate.Interop.Simulator]$Simulator,

        [Parameter(Mandatory, ParameterSetName = 'Certificate')]
        [ValidateNotNullOrEmpty()]
        [string]$CertificatePath,

        [Parameter(ParameterSetName = 'Certificate')]
        [ValidateNotNullOrEmpty()]
        [string]$PrivateKeyPath,

        [Parameter(ParameterSetName = 'Certificate')]
        [securestring]$CertificatePassword,

        [Parameter(ParameterSetName = 'Certificate')]
        [ValidateSet('PS256', 'RS256')]
        [string]$AssertionAlgorithm,

        [Parameter(Mandatory, ParameterSetName = 'TokenProvider')]
        [scriptblock]$TokenProvider,

        [ValidateSet('commercial', 'us', 'eu', 'uk', 'au', 'swa', 'ina', 'aea', 'gcc', 'gcc-high', 'dod')]
        [string]$Cloud,

        [ValidateNotNullOrEmpty()]
        [string]$BaseUrl,

        [ValidateNotNullOrEmpty()]
        [string]$Authority,

        [switch]$AllowInsecureHttp,

        [ValidateRange(1, 86400)]
        [int]$TimeoutSec,

        [ValidateRange(1, 100)]
        [int]$MaxAttempts,

        [ValidateRange(0, 86400)]
        [int]$MaxQuotaWaitSec,

        [QuotaGate.Interop.Limiter]$Limiter,

        [string]$Proxy,

        [ValidateNotNullOrEmpty()]
        [string]$Store,

        [object[]]$Rate,

        [hashtable]$Route,

        [hashtable]$MaxInFlight,

        [ValidateRange(0.0, 86400.0)]
        [double]$HuntingBudgetPerHourSec,

        [ValidateRange(0.0, 86400.0)]
        [double]$HuntingBudgetPerDaySec,

        [QuotaGate.Interop.HuntingBudgetPolicy]$HuntingBudgetPolicy,

        [ValidateRange('NonNegative')]
        [long]$MarginMs,

        [ValidateRange(0.001, 86400.0)]
        [double]$ConnectTimeoutSec,

        [ValidateRange('Positive')]
        [long]$MaxBodyBytes,

        [ValidateRange('Positive')]
        [long]$MaxPages,

        [ValidateNotNullOrEmpty()]
        [string]$Scope,

        [ValidateNotNullOrEmpty()]
        [string]$Resource,

        [switch]$PassThru
    )
    $options = [QuotaGate.Interop.ClientOptions]::new()
    switch ($PSCmdlet.ParameterSetName) {
        'ClientSecret' {
            $options.TenantId = $TenantId
            $options.ClientId = $ClientId
            $options.ClientSecret = $ClientSecret
        }
        'Credential' {
            $options.TenantId = $TenantId
            $options.ClientId = $Credential.UserName
            $options.ClientSecret = $Credential.Password
        }
        'AccessToken' {
            $options.AccessToken = $AccessToken
        }
        'Certificate' {
            $options.TenantId = $TenantId
            $options.ClientId = $ClientId
            # Relative to the current PowerShell location, which .NET does not follow.
            $path = $PSCmdlet.GetUnresolvedProviderPathFromPSPath($CertificatePath)
            if ([System.IO.Path]::GetExtension($path) -in '.pfx', '.p12') {
                if ($PSBoundParameters.ContainsKey('PrivateKeyPath')) {
                    $PSCmdlet.ThrowTerminatingError([System.Management.Automation.ErrorRecord]::new(
                            [System.ArgumentException]::new('-PrivateKeyPath is for PEM certificates: a .pfx/.p12 file holds its key.'),
                            'QuotaGate.PrivateKeyWithPfx', 'InvalidArgument', $PrivateKeyPath))
                }
                $options.PfxPath = $path
                $options.PfxPassword = $CertificatePassword
            } else {
                if ($PSBoundParameters.ContainsKey('CertificatePassword')) {
                    $PSCmdlet.ThrowTerminatingError([System.Management.Automation.ErrorRecord]::new(
                            [System.ArgumentException]::new('-CertificatePassword is for .pfx/.p12 files: PEM keys are read unencrypted.'),
                            'QuotaGate.PasswordWithPem', 'InvalidArgument', $CertificatePath))
                }
                $options.CertificatePath = $path
                if ($PrivateKeyPath) {
                    $options.PrivateKeyPath = $PSCmdlet.GetUnresolvedProviderPathFromPSPath($PrivateKeyPath)
                }
            }
            if ($AssertionAlgorithm) {
                $options.AssertionAlgorithm = [QuotaGate.Interop.AssertionAlgorithm]$AssertionAlgorithm
            }
        }
        'TokenProvider' {
            if ($TenantId) { $options.TenantId = $TenantId }
            if ($ClientId) { $options.ClientId = $ClientId }
            $options.TokenProvider = New-QgTokenSource -Provider $TokenProvider
        }
        'Simulator' {
            $options.BaseUrl = $Simulator.Url
            $options.Authority = $Simulator.Authority
            $options.TenantId = $Simulator.TenantId
            $options.ClientId = $Simulator.ClientId
            $options.ClientSecret = $Simulator.ClientSecret
        }
    }
    if ($PSBoundParameters.ContainsKey('Cloud')) { $options.Cloud = $Cloud }
    if ($PSBoundParameters.ContainsKey('BaseUrl')) { $options.BaseUrl = $BaseUrl }
    if ($PSBoundParameters.ContainsKey('Authority')) { $options.Authority = $Authority }
    $options.AllowInsecureHttp = [bool]$AllowInsecureHttp
    if ($PSBoundParameters.ContainsKey('TimeoutSec')) { $options.TimeoutMs = [uint64]$TimeoutSec * 1000 }
    if ($PSBoundParameters.ContainsKey('MaxAttempts')) { $options.MaxAttempts = [uint32]$MaxAttempts }
    if ($PSBoundParameters.ContainsKey('MaxQuotaWaitSec')) { $options.MaxQuotaWaitMs = [uint64]$MaxQuotaWaitSec * 1000 }
    if ($PSBoundParameters.ContainsKey('Proxy')) { $options.Proxy = $Proxy }
    if ($PSBoundParameters.ContainsKey('Store')) { $options.Store = $Store }
    if ($Limiter) { $options.Limiter = $Limiter }
    if ($PSBoundParameters.ContainsKey('HuntingBudgetPerHourSec')) { $options.HuntingBudgetPerHourMs = [uint64][math]::Round($HuntingBudgetPerHourSec * 1000) }
    if ($PSBoundParameters.ContainsKey('HuntingBudgetPerDaySec')) { $options.HuntingBudgetPerDayMs = [uint64][math]::Round($HuntingBudgetPerDaySec * 1000) }
    if ($PSBoundParameters.ContainsKey('HuntingBudgetPolicy')) { $options.HuntingBudgetPolicy = $HuntingBudgetPolicy }
    if ($PSBoundParameters.ContainsKey('MarginMs')) { $options.MarginMs = [uint64]$MarginMs }
    if ($PSBoundParameters.ContainsKey('ConnectTimeoutSec')) { $options.ConnectTimeoutMs = [uint64][math]::Ceiling($ConnectTimeoutSec * 1000) }
    if ($PSBoundParameters.ContainsKey('MaxBodyBytes')) { $options.MaxBodyBytes = [uint64]$MaxBodyBytes }
    if ($PSBoundParameters.ContainsKey('MaxPages')) { $options.MaxPages = [uint64]$MaxPages }
    if ($PSBoundParameters.ContainsKey('Scope')) { $options.Scope = $Scope }
    if ($PSBoundParameters.ContainsKey('Resource')) { $options.Resource = $Resource }
    try {
        foreach ($r in $(if ($Rate) { ConvertTo-QgRate $Rate })) {
            $options.DefaultRates.Add($r)
        }
        if ($Route) {
            foreach ($target in $Route.Keys) {
                foreach ($r in ConvertTo-QgRate @($Route[$target])) {
                    $options.Routes.Add([QuotaGate.Interop.Route]::Parse([string]$target, $r))
                }
            }
        }
        if ($MaxInFlight) {
            foreach ($target in $MaxInFlight.Keys) {
                $options.MaxInFlight.Add([QuotaGate.Interop.InFlightCap]::Parse([string]$target, [uint32]$MaxInFlight[$target]))
            }
        }
        $client = [QuotaGate.Interop.Client]::new($options)
    } catch {
        Write-QgLog
        # The target names the cloud, never a URL: a refused one may carry a password.
        $PSCmdlet.ThrowTerminatingError((ConvertTo-QgErrorRecord $_ -Target $options.Cloud))
    }
    # The previous default is not closed: a script may still hold it for another tenant.
    $script:DefaultClient = $client
    Write-Verbose "Connected to $(if ($options.BaseUrl) { $options.BaseUrl } else { 'the default Defender API' })."
    Write-QgLog
    if ($PassThru) {
        $client
    }
}

<#
.SYNOPSIS
Closes a QuotaGate client.

.DESCRIPTION
Closes the given client, or the session's default client, and releases it. Waits and
calls in progress on it end with a "closed" error. Disconnecting the default client
leaves the session without one until the next Connect-QgDefender.

.PARAMETER Client
The client to close. Default: the session's default client.

.EXAMPLE
Disconnect-QgDefender

.EXAMPLE
$c = Connect-QgDefender -AccessToken $token; Disconnect-QgDefender -Client $c

.OUTPUTS
None
#>
function Disconnect-QgDefender {
    [CmdletBinding()]
    [OutputType([void])]
    param(
        [Parameter(ValueFromPipeline)]
        [QuotaGate.Interop.Client]$Client
    )
    process {
        $target = if ($Client) { $Client } else { $script:DefaultClient }
        if (-not $target) {
            Write-Verbose 'No client to disconnect.'
            return
        }
        try {
            if (-not $target.Handle.IsClosed) {
                $target.Close()
            }
        } catch {
            Write-QgLog
            $PSCmdlet.ThrowTerminatingError((ConvertTo-QgErrorRecord $_ -Target $target))
        } finally {
            $target.Dispose()
            if ([object]::ReferenceEquals($target, $script:DefaultClient)) {
                $script:DefaultClient = $null
            }
            Write-QgLog
        }
    }
}

<#
.SYNOPSIS
Shows the current QuotaGate connection.

.DESCRIPTION
Returns the session's default client as Connect-QgDefender set it up, or the given
client: its tenant, app (client) id, cloud, base URL and authority (empty when they are
the cloud's), the store that shares its quotas, how it signs in, and the buckets it has
used with the use of each window. Returns nothing when the session is not connected.
Secrets and tokens are never shown.

.PARAMETER Client
The client to show. Default: the session's default client.

.EXAMPLE
Get-QgContext

.EXAMPLE
(Get-QgContext).Buckets | Format-Table

.OUTPUTS
QuotaGate.Context
#>
function Get-QgContext {
    [CmdletBinding()]
    [OutputType('QuotaGate.Context')]
    param(
        [Parameter(ValueFromPipeline)]
        [QuotaGate.Interop.Client]$Client
    )
    process {
        $target = if ($Client) { $Client } else { $script:DefaultClient }
        if (-not $target) {
            Write-QgLog
            return
        }
        try {
            $stats = ConvertTo-QgStatistics (ConvertFrom-QgJson $target.StatisticsJson() -AsHashtable)
        } catch {
            Write-QgLog
            $PSCmdlet.ThrowTerminatingError((ConvertTo-QgErrorRecord $_ -Target $target))
        }
        # One object per bucket, with the fields the library reports for it.
        $buckets = foreach ($key in $stats.Buckets.Keys) {
            $bucket = [pscustomobject]@{ PSTypeName = 'QuotaGate.BucketUse'; Key = $key }
            foreach ($field in $stats.Buckets[$key].PSObject.Properties) {
                $bucket | Add-Member -NotePropertyName $field.Name -NotePropertyValue $field.Value
            }
            $bucket
        }
        Write-QgLog
        [pscustomobject]@{
            PSTypeName = 'QuotaGate.Context'
            TenantId   = $target.TenantId
            ClientId   = $target.ClientId
            Cloud      = $target.Cloud
            BaseUrl    = $target.BaseUrl
            Authority  = $target.Authority
            Store      = $target.Store
            AuthMethod = $target.AuthMethod
            Buckets    = @($buckets)
        }
    }
}

# ----- requests -----------------------------------------------------------------------------

<#
.SYNOPSIS
Sends a request to the Defender API within its quotas.

.DESCRIPTION
Sends one request through a QuotaGate client: the call waits for its quota, gets a
token, is retried after a 429 (once the server's Retry-After has passed) or a 5xx, and
its JSON answer is returned as objects. With -All, a list is followed over every page
(@odata.nextLink) and its items are written to the pipeline one by one, with progress.

A failed call (an HTTP error status, a throttled or timed-out call, a lost connection)
is written as a non-terminating error, so that a pipeline of paths goes on with the next
one; -ErrorAction Stop makes it terminating. Its exception
(QuotaGate.Interop.QuotaGateException) carries the status, the server's error code and
message, the correlation id (Target) and the request id; its id names the status
(QuotaGate.Http404) or the failure (QuotaGate.Throttled), with -All as without. A
missing connection or an invalid argument stops the cmdlet.

The library's log is written as it comes, also while a call waits: warnings (a limit
adopted from the server, a call not repeated) to the warning stream, waits for quota and
retries to verbose (-Verbose), and details to debug (-Debug). A wait longer than a
second shows progress with the expected wait.

.PARAMETER Path
The path, e.g. /api/machines, or an absolute URL.

.PARAMETER Method
The HTTP method. Default: GET.

.PARAMETER Body
The body: a string is sent as is; any other object is sent as JSON (ConvertTo-Json
-Depth 10).

.PARAMETER Query
Query parameters, e.g. @{ '$filter' = "healthStatus eq 'Active'"; '$top' = 1000 }; the
library percent-encodes them.

.PARAMETER Headers
Extra request headers.

.PARAMETER ContentType
The body's content type. Default: application/json.

.PARAMETER All
Follow every page of a list and write its items one by one.

.PARAMETER AsHashtable
Return the JSON answer as hashtables instead of objects: needed when its keys differ
only by case, which objects cannot hold.

.PARAMETER Deadline
Seconds that bound everything the call does: the quota wait, the token fetch, every
attempt, retry and backoff (with -All, every page together). Past it the call fails with
a timeout, at once when a wait could not end in time. Default: no deadline (each attempt
is bounded by the connection's -TimeoutSec).

.PARAMETER Client
The client to use. Default: the session's default client.

.EXAMPLE
Invoke-QgRequest /api/machines -Query @{ '$filter' = "healthStatus eq 'Active'" } -All

.EXAMPLE
Invoke-QgRequest -Method POST -Path "/api/machines/$id/isolate" -Body @{ Comment = 'IR-1234'; IsolationType = 'Selective' }

.EXAMPLE
Invoke-QgRequest /api/alerts -All | Where-Object severity -eq 'High' | Select-Object -First 20

.OUTPUTS
System.Management.Automation.PSCustomObject
#>
function Invoke-QgRequest {
    [CmdletBinding()]
    [OutputType([psobject])]
    param(
        [Parameter(Mandatory, Position = 0, ValueFromPipelineByPropertyName)]
        [Alias('Uri')]
        [ValidateNotNullOrEmpty()]
        [string]$Path,

        [ValidateSet('GET', 'POST', 'PUT', 'PATCH', 'DELETE')]
        [string]$Method = 'GET',

        [object]$Body,

        [hashtable]$Query,

        [hashtable]$Headers,

        [string]$ContentType,

        [switch]$All,

        [switch]$AsHashtable,

        [ValidateRange(0.001, 604800.0)]
        [double]$Deadline,

        [QuotaGate.Interop.Client]$Client
    )
    process {
        $request = $null
        $stop = $null
        try {
            $useClient = Resolve-QgClient $Client
            $request = [QuotaGate.Interop.Request]::new($Method.ToUpperInvariant(), $Path)
            if ($PSBoundParameters.ContainsKey('Deadline')) {
                [void]$request.SetDeadline([long][math]::Ceiling($Deadline * 1000))
            }
            if ($Query) {
                foreach ($name in $Query.Keys) {
                    [void]$request.AddQuery([string]$name, [string]$Query[$name])
                }
            }
            if ($Headers) {
                foreach ($name in $Headers.Keys) {
                    [void]$request.SetHeader([string]$name, [string]$Headers[$name])
                }
            }
            if ($null -ne $Body) {
                $text = if ($Body -is [string]) { $Body } else { ConvertTo-Json -InputObject $Body -Depth 10 -Compress }
                [void]$request.SetBody($text, $(if ($ContentType) { $ContentType } else { $null }))
            }
            # Ctrl+C cancels the native wait from a timer thread.
            $stop = [QuotaGate.Interop.StopSignal]::new($PSCmdlet)
            if ($All) {
                $activity = "$Method $Path"
                $count = 0
                # MoveNext, not foreach: foreach hides the library's exception behind its own
                # record, and the finally frees the pages when Select-Object -First stops early.
                $items = $useClient.Items($request, $stop.Token).GetEnumerator()
                try {
                    while (Wait-QgCall ([QuotaGate.Interop.SlicedCall]::MoveNext($useClient, $request, $items, $script:LogSession)) $activity) {
                        $count++
                        Write-QgLog
                        if ($count % 100 -eq 1) {
                            Write-Progress -Activity $activity -Status "$count items"
                        }
                        ConvertFrom-QgJson $items.Current -AsHashtable:$AsHashtable
                    }
                } finally {
                    $items.Dispose()
                }
                Write-QgLog
                Write-Progress -Activity $activity -Completed
                Write-Verbose "$activity`: $count items."
            } else {
                $response = Wait-QgCall ([QuotaGate.Interop.SlicedCall]::Send($useClient, $request, $stop.Token, $script:LogSession)) "$Method $Path"
                Write-QgLog
                if (-not $response.IsSuccess) {
                    throw $response.Error
                }
                if ($response.ContentType -and $response.ContentType -notmatch 'json') {
                    $response.BodyText
                } else {
                    ConvertFrom-QgJson $response.BodyText -AsHashtable:$AsHashtable
                }
            }
        } catch {
            Write-QgLog
            if ($PSCmdlet.Stopping -or $_.Exception -is [System.Management.Automation.PipelineStoppedException]) {
                throw
            }
            $record = ConvertTo-QgErrorRecord $_ -Target $Path
            if (Test-QgTerminating $record) {
                $PSCmdlet.ThrowTerminatingError($record)
            }
            $PSCmdlet.WriteError($record)
        } finally {
            if ($stop) { $stop.Dispose() }
            if ($request) { $request.Dispose() }
            Write-QgLog
        }
    }
}

<#
.SYNOPSIS
Runs an advanced hunting query and returns its rows.

.DESCRIPTION
Sends POST /api/advancedqueries/run with the KQL query through a QuotaGate client, so
that it waits for the hunting quota (45 calls per minute, 1,500 per hour), and writes
each row of the result as an object. Errors from the service (a bad query, a result
too large) are non-terminating errors with the server's code and message, so that the
next query from the pipeline still runs.

.PARAMETER Query
The KQL query. Accepts pipeline input: several queries run one after the other.

.PARAMETER AsHashtable
Write the rows as hashtables instead of objects: needed when columns differ only by
case, as "project Name, name" makes them.

.PARAMETER Client
The client to use. Default: the session's default client.

.EXAMPLE
Invoke-QgHunting -Query 'DeviceInfo | where OSPlatform == "Windows10" | take 10'

.EXAMPLE
'DeviceProcessEvents | take 5', 'DeviceNetworkEvents | take 5' | Invoke-QgHunting

.EXAMPLE
Invoke-QgHunting -Query 'DeviceInfo | project DeviceName, devicename = tolower(DeviceName)' -AsHashtable

.OUTPUTS
System.Management.Automation.PSCustomObject
#>
function Invoke-QgHunting {
    [CmdletBinding()]
    [OutputType([psobject])]
    param(
        [Parameter(Mandatory, Position = 0, ValueFromPipeline)]
        [ValidateNotNullOrEmpty()]
        [string]$Query,

        [switch]$AsHashtable,

        [QuotaGate.Interop.Client]$Client
    )
    process {
        $stop = $null
        $request = $null
        try {
            $useClient = Resolve-QgClient $Client
            $stop = [QuotaGate.Interop.StopSignal]::new($PSCmdlet)
            $request = [QuotaGate.Interop.Request]::new('POST', '/api/advancedqueries/run')
            [void]$request.SetBody((ConvertTo-Json -InputObject @{ Query = $Query } -Compress), $null)
            $response = Wait-QgCall ([QuotaGate.Interop.SlicedCall]::Send($useClient, $request, $stop.Token, $script:LogSession)) 'Advanced hunting'
            Write-QgLog
            if (-not $response.IsSuccess) {
                throw $response.Error
            }
            $result = ConvertFrom-QgJson $response.BodyText -AsHashtable:$AsHashtable
            $rows = if ($result -is [System.Collections.IDictionary]) {
                if ($result.Contains('Results')) { $result['Results'] }
            } elseif ($result -and $result.PSObject.Properties['Results']) {
                $result.Results
            }
            foreach ($row in $rows) {
                $row
            }
        } catch {
            Write-QgLog
            if ($PSCmdlet.Stopping -or $_.Exception -is [System.Management.Automation.PipelineStoppedException]) {
                throw
            }
            $record = ConvertTo-QgErrorRecord $_ -Target $Query
            if (Test-QgTerminating $record) {
                $PSCmdlet.ThrowTerminatingError($record)
            }
            $PSCmdlet.WriteError($record)
        } finally {
            if ($stop) { $stop.Dispose() }
            if ($request) { $request.Dispose() }
            Write-QgLog
        }
    }
}

# ----- limiters -----------------------------------------------------------------------------

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
'redis://host:6379/0?prefix=qg' (many hosts; 'rediss://' for TLS). Add
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

<#
.SYNOPSIS
Waits until a limiter admits a call.

.DESCRIPTION
Waits in first-come, first-served order until the key's bucket admits a call of the
given cost, then returns (with -PassThru, passes the input object on). The wait runs in
short slices, so Ctrl+C stops it within a fraction of a second and gives up the place
in the queue without taking a permit.

Pipe objects through it to pace a loop: each object waits for its own permit.

.PARAMETER Limiter
The limiter, from New-QgLimiter.

.PARAMETER Key
The bucket's key, e.g. a tenant or an endpoint. Default: the default bucket.

.PARAMETER Cost
Units the call takes (default 1); at most the smallest rate's calls.

.PARAMETER TimeoutSec
The longest wait. A deadline that cannot be met fails at once. Default: no limit.

.PARAMETER InputObject
Objects to pass on, one permit each, with -PassThru.

.PARAMETER PassThru
Write each input object once it is admitted.

.EXAMPLE
Wait-QgLimiter -Limiter $limiter -Key 'isolate'

.EXAMPLE
$ids | Wait-QgLimiter -Limiter $limiter -PassThru | ForEach-Object { Invoke-QgRequest -Method POST "/api/machines/$_/tags" -Body $tag }

.OUTPUTS
None, or the input objects with -PassThru.
#>
function Wait-QgLimiter {
    [CmdletBinding()]
    [OutputType([object])]
    param(
        [Parameter(Mandatory, Position = 0)]
        [QuotaGate.Interop.Limiter]$Limiter,

        [Parameter(Position = 1)]
        [AllowEmptyString()]
        [string]$Key = '',

        [ValidateRange('Positive')]
        [uint32]$Cost = 1,

        [ValidateRange('NonNegative')]
        [double]$TimeoutSec,

        [Parameter(ValueFromPipeline)]
        [object]$InputObject,

        [switch]$PassThru
    )
    begin {
        $timeoutMs = if ($PSBoundParameters.ContainsKey('TimeoutSec')) { [long][math]::Ceiling($TimeoutSec * 1000) } else { [long]-1 }
    }
    process {
        $watch = [System.Diagnostics.Stopwatch]::StartNew()
        try {
            # Waited here in slices, so that Ctrl+C, the log and progress get their turn;
            # disposing the ticket gives up its place when the wait is stopped.
            $ticket = $Limiter.Enqueue($Key, $Cost, $timeoutMs)
            try {
                Wait-QgSlice { $ticket.Wait(200) } "Waiting for quota on '$Key'"
            } finally {
                $ticket.Dispose()
            }
        } catch {
            if ($PSCmdlet.Stopping -or $_.Exception -is [System.Management.Automation.PipelineStoppedException]) {
                throw
            }
            Write-QgLog
            $PSCmdlet.ThrowTerminatingError((ConvertTo-QgErrorRecord $_ -Target $Key))
        }
        if ($watch.ElapsedMilliseconds -ge 1) {
            Write-Verbose "Waited $($watch.ElapsedMilliseconds) ms for quota on '$Key'."
        }
        Write-QgLog
        if ($PassThru) {
            $InputObject
        }
    }
}

<#
.SYNOPSIS
Runs a script block under a limiter's hold, so that the call it makes counts until it returns.

.DESCRIPTION
Waits in first-come, first-served order until the key's bucket admits a call (as
Wait-QgLimiter does, in short slices that Ctrl+C stops), runs the script block, and
releases the hold when the block ends, however it ends. The call's units count in every
window from admission until the block returns, and from then on: a server counts a call
when it arrives, between the send and the answer, so pacing your own Invoke-RestMethod
calls this way never lets one collide with the server's count, whatever the network's
delays. Wait-QgLimiter, by contrast, counts the call when it is admitted.

With pipeline input, the block runs once per object, each under a hold of its own, with
the object in $_. The block's output is written to the pipeline.

.PARAMETER Limiter
The limiter, from New-QgLimiter.

.PARAMETER ScriptBlock
The call to make under the hold: one HTTP call, typically Invoke-RestMethod.

.PARAMETER Key
The bucket's key. Default: the default bucket.

.PARAMETER Cost
Units the call takes (default 1); at most the smallest rate's calls.

.PARAMETER TimeoutSec
The longest wait for admission. A deadline that cannot be met fails at once. Default: no limit.

.PARAMETER InputObject
Objects to run the block for, one hold each, as $_.

.EXAMPLE
Invoke-QgLimited -Limiter $limiter -Key 'machines' { Invoke-RestMethod -Uri $uri -Headers $headers }

.EXAMPLE
$ids | Invoke-QgLimited -Limiter $limiter -Key 'tags' { Invoke-RestMethod -Method Post -Uri "$api/machines/$_/tags" -Headers $headers -Body $tag }

.OUTPUTS
What the script block writes.
#>
function Invoke-QgLimited {
    [CmdletBinding()]
    [OutputType([object])]
    param(
        [Parameter(Mandatory)]
        [QuotaGate.Interop.Limiter]$Limiter,

        [Parameter(Mandatory, Position = 0)]
        [scriptblock]$ScriptBlock,

        [AllowEmptyString()]
        [string]$Key = '',

        [ValidateRange('Positive')]
        [uint32]$Cost = 1,

        [ValidateRange('NonNegative')]
        [double]$TimeoutSec,

        [Parameter(ValueFromPipeline)]
        [object]$InputObject
    )
    begin {
        $timeoutMs = if ($PSBoundParameters.ContainsKey('TimeoutSec')) { [long][math]::Ceiling($TimeoutSec * 1000) } else { [long]-1 }
    }
    process {
        try {
            $ticket = $Limiter.EnqueueHold($Key, $Cost, $timeoutMs)
            try {
                Wait-QgSlice { $ticket.Wait(200) } "Waiting for quota on '$Key'"
                $hold = $ticket.TakeHold()
            } finally {
                $ticket.Dispose()
            }
        } catch {
            if ($PSCmdlet.Stopping -or $_.Exception -is [System.Management.Automation.PipelineStoppedException]) {
                throw
            }
            Write-QgLog
            $PSCmdlet.ThrowTerminatingError((ConvertTo-QgErrorRecord $_ -Target $Key))
        }
        try {
            if ($PSBoundParameters.ContainsKey('InputObject')) {
                $InputObject | ForEach-Object -Process $ScriptBlock
            } else {
                & $ScriptBlock
            }
        } finally {
            $hold.Dispose()
            Write-QgLog
        }
    }
}

<#
.SYNOPSIS
Tries to take a call from a limiter without waiting.

.DESCRIPTION
Returns $true when the key's bucket admits the call now (the call is then counted, so
make it), and $false when it would have to wait; the wait it would need is written to
the verbose stream. Never waits.

.PARAMETER Limiter
The limiter, from New-QgLimiter.

.PARAMETER Key
The bucket's key. Default: the default bucket.

.PARAMETER Cost
Units the call takes (default 1).

.EXAMPLE
if (Test-QgLimiter -Limiter $limiter -Key 'export') { Invoke-QgRequest /api/machines/SoftwareVulnerabilitiesByMachine }

.OUTPUTS
System.Boolean
#>
function Test-QgLimiter {
    [CmdletBinding()]
    [OutputType([bool])]
    param(
        [Parameter(Mandatory, Position = 0)]
        [QuotaGate.Interop.Limiter]$Limiter,

        [Parameter(Position = 1)]
        [AllowEmptyString()]
        [string]$Key = '',

        [ValidateRange('Positive')]
        [uint32]$Cost = 1
    )
    try {
        [uint64]$waitMs = 0
        $admitted = $Limiter.TryAcquire($Key, $Cost, [ref]$waitMs)
    } catch {
        Write-QgLog
        $PSCmdlet.ThrowTerminatingError((ConvertTo-QgErrorRecord $_ -Target $Key))
    }
    if (-not $admitted) {
        Write-Verbose "'$Key' would admit the call in $waitMs ms."
    }
    Write-QgLog
    $admitted
}

<#
.SYNOPSIS
Pauses a limiter's bucket.

.DESCRIPTION
Makes every caller of the key's bucket wait until the given time has passed, as the
client does when the server answers 429. A later pause extends the current one; a
shorter one never shortens it.

.PARAMETER Limiter
The limiter, from New-QgLimiter.

.PARAMETER Key
The bucket's key. Default: the default bucket.

.PARAMETER Seconds
How long the bucket stays paused from now.

.EXAMPLE
Suspend-QgLimiter -Limiter $limiter -Key 'hunting' -Seconds 30

.OUTPUTS
None
#>
function Suspend-QgLimiter {
    [CmdletBinding(SupportsShouldProcess, ConfirmImpact = 'Low')]
    [OutputType([void])]
    param(
        [Parameter(Mandatory, Position = 0)]
        [QuotaGate.Interop.Limiter]$Limiter,

        [Parameter(Position = 1)]
        [AllowEmptyString()]
        [string]$Key = '',

        [Parameter(Mandatory)]
        [ValidateRange(0.0, 31536000.0)]
        [double]$Seconds
    )
    if (-not $PSCmdlet.ShouldProcess("bucket '$Key'", "Pause for $Seconds s")) {
        return
    }
    try {
        $Limiter.Pause($Key, [uint64][math]::Ceiling($Seconds * 1000))
        Write-QgLog
    } catch {
        Write-QgLog
        $PSCmdlet.ThrowTerminatingError((ConvertTo-QgErrorRecord $_ -Target $Key))
    }
}

<#
.SYNOPSIS
Gets the statistics of a limiter's bucket, a client or a simulator.

.DESCRIPTION
With -Limiter, returns a snapshot of the key's bucket: calls admitted and refused, waits,
timeouts, cancellations, pauses, the queue, and the use of each window. Otherwise
returns the client's counters (requests, retries, throttled answers, token requests)
and its buckets, for the given client or the session's default one. With -Simulator,
returns what the simulator counted (requests, 429s, peaks per window). Every field is
named in PascalCase (TotalWaitMs, TokenRequests, ByStatus); maps keyed by data (bucket
keys, route classes, HTTP statuses) are dictionaries with their keys as they are.

.PARAMETER Limiter
The limiter whose bucket to read.

.PARAMETER Key
The bucket's key. Default: the default bucket.

.PARAMETER Client
The client to read. Default: the session's default client.

.PARAMETER Simulator
A simulator from Start-QgSimulator.

.EXAMPLE
Get-QgStatistics -Limiter $limiter -Key 'isolate'

.EXAMPLE
(Get-QgStatistics).Buckets

.EXAMPLE
Get-QgStatistics -Simulator $sim

.OUTPUTS
QuotaGate.Interop.BucketStatistics, or System.Management.Automation.PSCustomObject
#>
function Get-QgStatistics {
    [CmdletBinding(DefaultParameterSetName = 'Client')]
    [OutputType('QuotaGate.Interop.BucketStatistics', 'System.Management.Automation.PSCustomObject')]
    param(
        [Parameter(Mandatory, ParameterSetName = 'Limiter')]
        [QuotaGate.Interop.Limiter]$Limiter,

        [Parameter(ParameterSetName = 'Limiter', Position = 0)]
        [AllowEmptyString()]
        [string]$Key = '',

        [Parameter(ParameterSetName = 'Client', ValueFromPipeline)]
        [QuotaGate.Interop.Client]$Client,

        [Parameter(Mandatory, ParameterSetName = 'Simulator')]
        [QuotaGate.Interop.Simulator]$Simulator
    )
    process {
        try {
            switch ($PSCmdlet.ParameterSetName) {
                'Limiter' { $Limiter.GetStatistics($Key) }
                'Simulator' {
                    ConvertTo-QgStatistics (ConvertFrom-QgJson $Simulator.StatisticsJson() -AsHashtable)
                }
                default {
                    $json = (Resolve-QgClient $Client).StatisticsJson()
                    ConvertTo-QgStatistics (ConvertFrom-QgJson $json -AsHashtable)
                }
            }
            Write-QgLog
        } catch {
            Write-QgLog
            $PSCmdlet.ThrowTerminatingError((ConvertTo-QgErrorRecord $_))
        }
    }
}

# ----- the simulator ------------------------------------------------------------------------

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

<#
.SYNOPSIS
Shows the loaded libquotagate: its path, version and optional parts.

.DESCRIPTION
Returns the path the module loaded libquotagate from, its version, and the optional parts
it was built with: 'sim' (Start-QgSimulator), 'pfx' (-CertificatePath with a .pfx file)
and 'redis' (redis:// and rediss:// stores). A cmdlet that needs a missing part fails
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
