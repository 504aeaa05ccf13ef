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

        # The library decides which names are clouds, and lists them (Native.CloudNames).
        [ArgumentCompleter({
                param($Command, $Parameter, $Word)
                [QuotaGate.Interop.Native]::CloudNames() | Where-Object { $_ -like "$Word*" }
            })]
        [ValidateScript({ [QuotaGate.Interop.Native]::CheckCloud($_) })]
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
            # PEM or PFX: the library tells them apart by the file's content, and refuses
            # a key file for a PFX or a password for PEM.
            $options.CertificatePath = $path
            if ($PrivateKeyPath) {
                $options.PrivateKeyPath = $PSCmdlet.GetUnresolvedProviderPathFromPSPath($PrivateKeyPath)
            }
            if ($PSBoundParameters.ContainsKey('CertificatePassword')) {
                $options.PfxPassword = $CertificatePassword
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
