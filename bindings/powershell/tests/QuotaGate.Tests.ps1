#Requires -Version 7.2
#Requires -Modules @{ ModuleName = 'Pester'; ModuleVersion = '5.0.0' }
# Pester 5 tests of every QuotaGate cmdlet against the library's local simulator.
#
#   $env:QUOTAGATE_LIBRARY = '/path/to/libquotagate.so'   # or build into target/
#   Invoke-Pester -Path bindings/powershell/tests -CI

BeforeAll {
    $script:ModuleManifest = Join-Path $PSScriptRoot '..' 'QuotaGate' 'QuotaGate.psd1'
    Import-Module $script:ModuleManifest -Force
    $script:Sim = Start-QgSimulator -Machines 120 -TimeScale 0.01

    function script:New-TestSecret([string]$Text) {
        ConvertTo-SecureString -String $Text -AsPlainText -Force
    }
}

AfterAll {
    Stop-QgSimulator
    Disconnect-QgDefender
    Remove-Module QuotaGate -Force
}

Describe 'The module' {
    BeforeAll {
        $script:Manifest = Import-PowerShellDataFile $script:ModuleManifest
        $script:Commands = Get-Command -Module QuotaGate
    }

    It 'has a valid manifest for PowerShell 7.2 Core' {
        $m = Test-ModuleManifest -Path $script:ModuleManifest
        $m.Version | Should -Be '0.1.0'
        $m.PowerShellVersion | Should -Be '7.2'
        $m.CompatiblePSEditions | Should -Be @('Core')
        $script:Manifest.PrivateData.PSData.Tags | Should -Not -BeNullOrEmpty
        $script:Manifest.PrivateData.PSData.ProjectUri | Should -Not -BeNullOrEmpty
        $script:Manifest.PrivateData.PSData.LicenseUri | Should -Not -BeNullOrEmpty
        $script:Manifest.PrivateData.PSData.ReleaseNotes | Should -Not -BeNullOrEmpty
    }

    It 'exports exactly the functions of the manifest' {
        ($script:Commands.Name | Sort-Object) | Should -Be ($script:Manifest.FunctionsToExport | Sort-Object)
        $script:Manifest.CmdletsToExport | Should -BeNullOrEmpty
        $script:Manifest.AliasesToExport | Should -BeNullOrEmpty
    }

    It 'uses approved verbs only' {
        $approved = (Get-Verb).Verb
        foreach ($command in $script:Commands) {
            $command.Verb | Should -BeIn $approved -Because $command.Name
        }
    }

    It 'documents every command, parameter and example' {
        $common = @([System.Management.Automation.PSCmdlet]::CommonParameters) + @([System.Management.Automation.PSCmdlet]::OptionalCommonParameters)
        foreach ($command in $script:Commands) {
            $help = Get-Help $command.Name -Full
            $help.Synopsis | Should -Not -BeNullOrEmpty -Because $command.Name
            $help.Synopsis | Should -Not -Match '^\S+ \[' -Because "$($command.Name) has a written synopsis, not the syntax"
            ($help.description.Text -join '') | Should -Not -BeNullOrEmpty -Because $command.Name
            @($help.examples.example).Count | Should -BeGreaterThan 0 -Because $command.Name
            foreach ($name in $command.Parameters.Keys | Where-Object { $_ -notin $common }) {
                $parameter = $help.parameters.parameter | Where-Object name -EQ $name
                ($parameter.description.Text -join '') | Should -Not -BeNullOrEmpty -Because "$($command.Name) -$name"
            }
        }
    }

    It 'loads its type and format data, listed in the manifest' {
        foreach ($file in @($script:Manifest.TypesToProcess) + @($script:Manifest.FormatsToProcess)) {
            $script:Manifest.FileList | Should -Contain $file
            Join-Path $PSScriptRoot '..' 'QuotaGate' $file | Should -Exist
        }
        foreach ($type in 'QuotaGate.Interop.BucketStatistics', 'QuotaGate.Context', 'QuotaGate.Interop.Simulator') {
            Get-FormatData -TypeName $type | Should -Not -BeNullOrEmpty -Because $type
        }
        (Get-TypeData -TypeName 'QuotaGate.Interop.Client').DefaultDisplayPropertySet.ReferencedProperties | Should -Contain 'TenantId'
    }

    It 'shows clients, simulators and statistics without handles or secrets' {
        $client = Connect-QgDefender -Simulator $script:Sim -PassThru
        try {
            $shown = ($client | Out-String) + ($script:Sim | Out-String) + (Get-QgContext | Out-String)
            $shown | Should -Not -BeLike '*Handle*'
            $shown | Should -Not -BeLike "*$([System.Net.NetworkCredential]::new('', $script:Sim.ClientSecret).Password)*"
            $shown | Should -BeLike "*$($script:Sim.TenantId)*"
            $limiter = New-QgLimiter -Rate 2, 60
            Wait-QgLimiter -Limiter $limiter -Key 'k'
            (Get-QgStatistics -Limiter $limiter -Key 'k' | Out-String -Width 250) | Should -BeLike '*1/2 in 60000 ms*'
        } finally {
            Disconnect-QgDefender -Client $client
        }
    }

    It 'shows the loaded library, its version and its features' {
        $library = Get-QgLibrary
        $library.Version | Should -Be '0.1.0'
        $library.Path | Should -Not -BeNullOrEmpty
        ($library.Features | Sort-Object) | Should -Be @('pfx', 'redis', 'sim')
    }

    It 'names every path it tried when the library is missing' {
        $pwsh = (Get-Process -Id $PID).Path
        $script = "`$env:QUOTAGATE_LIBRARY = '/nonexistent/libquotagate-test.so'; Import-Module '$script:ModuleManifest'"
        $output = & $pwsh -NoProfile -NonInteractive -Command $script 2>&1 | Out-String
        $output | Should -BeLike '*cannot find libquotagate*'
        $output | Should -BeLike '*/nonexistent/libquotagate-test.so*'
    }

    It 'refuses a library that fails the version check again on the next load' {
        # A fresh process, since this one has loaded the library; the internal Load overload
        # checks against a version that no library serves.
        $pwsh = (Get-Process -Id $PID).Path
        $interop = (Get-ChildItem -LiteralPath (Join-Path $PSScriptRoot '..' 'QuotaGate' 'Interop') -Filter '*.cs').FullName
        $library = [QuotaGate.Interop.Native]::LibraryPath
        $script = @"
Add-Type -Path '$($interop -join "', '")' -IgnoreWarnings
`$load = [QuotaGate.Interop.Native].GetMethod('Load', [System.Reflection.BindingFlags]'NonPublic, Static', `$null, [type[]]@([string], [uint32]), `$null)
foreach (`$attempt in 1, 2) {
    try { [void]`$load.Invoke(`$null, @('$library', [uint32]99000000)); 'loaded' } catch { 'refused' }
    if ([QuotaGate.Interop.Native]::LibraryPath) { 'recorded' }
}
"@
        $output = & $pwsh -NoProfile -NonInteractive -Command $script
        $output | Should -Be @('refused', 'refused')
    }
}

Describe 'Connect-QgDefender and Disconnect-QgDefender' {
    AfterEach {
        Disconnect-QgDefender
    }

    It 'connects to a simulator, returns the client with -PassThru and makes it the default' {
        $client = Connect-QgDefender -Simulator $script:Sim -PassThru
        $client | Should -BeOfType ([QuotaGate.Interop.Client])
        (Invoke-QgRequest /api/machines -Query @{ '$top' = 1 }).value.Count | Should -Be 1
    }

    It 'writes nothing without -PassThru' {
        Connect-QgDefender -Simulator $script:Sim | Should -BeNullOrEmpty
    }

    It 'shows the current connection with Get-QgContext' {
        Connect-QgDefender -Simulator $script:Sim
        Invoke-QgRequest /api/machines -Query @{ '$top' = 1 } | Out-Null
        $context = Get-QgContext
        $context.PSObject.TypeNames | Should -Contain 'QuotaGate.Context'
        $context.TenantId | Should -Be $script:Sim.TenantId
        $context.ClientId | Should -Be $script:Sim.ClientId
        $context.BaseUrl | Should -Be $script:Sim.Url
        $context.Authority | Should -Be $script:Sim.Authority
        $context.AuthMethod | Should -Be 'ClientSecret'
        $context.Buckets | Should -Not -BeNullOrEmpty
        $context.Buckets[0].Key | Should -Not -BeNullOrEmpty
        $context.Buckets[0].Windows | Should -Not -BeNullOrEmpty
        ($context | Out-String) | Should -Not -BeLike '*Handle*'
        ($context | Out-String) | Should -Not -BeLike "*$([System.Net.NetworkCredential]::new('', $script:Sim.ClientSecret).Password)*"
    }

    It 'shows the cloud and the store of a connection, and nothing without one' {
        $path = Join-Path ([System.IO.Path]::GetTempPath()) "qg-pester-context-$PID.q"
        $store = ([System.Uri]$path).AbsoluteUri
        try {
            Connect-QgDefender -Cloud gcc-high -AccessToken (New-TestSecret 'token') -Store $store
            $context = Get-QgContext
            $context.Cloud | Should -Be 'gcc-high'
            $context.Store | Should -Be $store
            $context.AuthMethod | Should -Be 'AccessToken'
            Disconnect-QgDefender
            Get-QgContext | Should -BeNullOrEmpty
        } finally {
            Remove-Item $path -ErrorAction SilentlyContinue
        }
    }

    It 'connects with a tenant, client id and secret' {
        $params = @{
            TenantId     = $script:Sim.TenantId
            ClientId     = $script:Sim.ClientId
            ClientSecret = $script:Sim.ClientSecret
            BaseUrl      = $script:Sim.Url
            Authority    = $script:Sim.Authority
            TimeoutSec   = 30
        }
        Connect-QgDefender @params | Out-Null
        (Invoke-QgRequest /api/machines -Query @{ '$top' = 2 }).value.Count | Should -Be 2
    }

    It 'shares its quotas through -Store' {
        $path = Join-Path ([System.IO.Path]::GetTempPath()) "qg-pester-client-$PID.q"
        Remove-Item $path -ErrorAction SilentlyContinue
        try {
            Connect-QgDefender -Simulator $script:Sim -Store ([System.Uri]$path).AbsoluteUri | Out-Null
            (Invoke-QgRequest /api/machines -Query @{ '$top' = 1 }).value.Count | Should -Be 1
            Disconnect-QgDefender
            (Get-Item $path).Length | Should -BeGreaterThan 0
        } finally {
            Remove-Item $path -ErrorAction SilentlyContinue
        }
    }

    It 'connects with a credential' {
        $credential = [pscredential]::new($script:Sim.ClientId, $script:Sim.ClientSecret)
        Connect-QgDefender -TenantId $script:Sim.TenantId -Credential $credential -BaseUrl $script:Sim.Url -Authority $script:Sim.Authority | Out-Null
        (Invoke-QgRequest /api/machines -Query @{ '$top' = 1 }).value.Count | Should -Be 1
    }

    It 'reports a wrong secret on the first call as an authentication error' {
        Connect-QgDefender -TenantId $script:Sim.TenantId -ClientId $script:Sim.ClientId -ClientSecret (New-TestSecret 'wrong') `
            -BaseUrl $script:Sim.Url -Authority $script:Sim.Authority -MaxAttempts 1 | Out-Null
        $err = { Invoke-QgRequest /api/machines } | Should -Throw -PassThru
        $err.Exception | Should -BeOfType ([QuotaGate.Interop.QuotaGateException])
        $err.Exception.Code | Should -Be ([QuotaGate.Interop.ResultCode]::Auth)
        $err.CategoryInfo.Category | Should -Be 'AuthenticationError'
        $err.FullyQualifiedErrorId | Should -BeLike 'QuotaGate.Auth*'
        $err.Exception.Message | Should -Not -BeLike '*wrong*'
    }

    It 'rejects a bad base URL with the library''s message' {
        $err = { Connect-QgDefender -AccessToken (New-TestSecret 'token') -BaseUrl 'not a url' } | Should -Throw -PassThru
        $err.Exception | Should -BeOfType ([QuotaGate.Interop.QuotaGateException])
        $err.Exception.Message | Should -Not -BeNullOrEmpty
    }

    It 'refuses http:// off loopback without -AllowInsecureHttp, and never shows a password' {
        $err = { Connect-QgDefender -AccessToken (New-TestSecret 'token') -BaseUrl 'http://api.example.com' } |
            Should -Throw -PassThru
        $err.Exception.Message | Should -BeLike '*not a loopback host*allow_insecure_http*'
        $client = Connect-QgDefender -AccessToken (New-TestSecret 'token') -BaseUrl 'http://api.example.com' -AllowInsecureHttp -PassThru
        $client | Should -Not -BeNullOrEmpty
        Disconnect-QgDefender
        $err = { Connect-QgDefender -AccessToken (New-TestSecret 'token') -BaseUrl 'https://me:hunter2@api.example.com' } |
            Should -Throw -PassThru
        $err.Exception.Message | Should -BeLike '*user name or password*'
        ($err | Out-String) | Should -Not -BeLike '*hunter2*'
    }

    It 'leaves the session without a client after Disconnect-QgDefender' {
        Connect-QgDefender -Simulator $script:Sim | Out-Null
        Disconnect-QgDefender
        { Invoke-QgRequest /api/machines } | Should -Throw '*not connected*'
    }

    It 'closes a given client and keeps the default' {
        $default = Connect-QgDefender -Simulator $script:Sim -PassThru
        $other = [QuotaGate.Interop.Client]::new([QuotaGate.Interop.ClientOptions]@{ BaseUrl = $script:Sim.Url; AccessToken = (New-TestSecret 'x') })
        Disconnect-QgDefender -Client $other
        $other.Handle.IsClosed | Should -BeTrue
        $default.Handle.IsClosed | Should -BeFalse
        (Invoke-QgRequest /api/machines -Query @{ '$top' = 1 }).value.Count | Should -Be 1
    }
}

Describe 'Connect-QgDefender with the client builder''s settings' {
    AfterEach {
        Disconnect-QgDefender
    }

    It 'replaces the default rates with -Rate and adds routes with -Route' {
        Connect-QgDefender -Simulator $script:Sim -Rate 7, 60 -Route @{ 'GET /api/alerts' = '3/1m' }
        Invoke-QgRequest /api/machines -Query @{ '$top' = 1 } | Out-Null
        Invoke-QgRequest /api/alerts -Query @{ '$top' = 1 } | Out-Null
        $calls = (Get-QgContext).Buckets.Windows.Calls
        $calls | Should -Contain 7
        $calls | Should -Contain 3
        $calls | Should -Not -Contain 100
    }

    It 'widens the windows by -MarginMs' {
        Connect-QgDefender -Simulator $script:Sim -Rate 50, 1 -MarginMs 250
        Invoke-QgRequest /api/machines -Query @{ '$top' = 1 } | Out-Null
        (Get-QgContext).Buckets.Windows.WindowMs | Should -Contain 1250
    }

    It 'caps the calls under way with -MaxInFlight' {
        Connect-QgDefender -Simulator $script:Sim -Route @{ 'GET /api/machines' = '50/1m' } -MaxInFlight @{ 'GET /api/machines' = 2 }
        Invoke-QgRequest /api/machines -Query @{ '$top' = 1 } | Out-Null
        (Get-QgStatistics).InFlightPeaks.Values | Should -Contain 1
    }

    It 'passes the library''s refusal of a bad in-flight cap on' {
        $err = { Connect-QgDefender -Simulator $script:Sim -MaxInFlight @{ 'GET api/machines' = 2 } } | Should -Throw -PassThru
        $err.Exception | Should -BeOfType ([QuotaGate.Interop.QuotaGateException])
        $err.Exception.Message | Should -BeLike "*starts with '/'*"
        $err.CategoryInfo.Category | Should -Be 'InvalidArgument'
    }

    It 'turns the hunting budget off with 0, with the Fail policy' {
        Connect-QgDefender -Simulator $script:Sim -HuntingBudgetPerHourSec 0 -HuntingBudgetPerDaySec 0 -HuntingBudgetPolicy Fail
        (Invoke-QgHunting -Query 'DeviceInfo | take 2').Count | Should -Be 2
        { Connect-QgDefender -Simulator $script:Sim -HuntingBudgetPolicy Sometimes } |
            Should -Throw -ExceptionType ([System.Management.Automation.ParameterBindingException])
    }

    It 'refuses an answer above -MaxBodyBytes' {
        Connect-QgDefender -Simulator $script:Sim -MaxBodyBytes 1000 -ConnectTimeoutSec 5
        $err = { Invoke-QgRequest /api/machines -ErrorAction Stop } | Should -Throw -PassThru
        $err.Exception.Code | Should -Be ([QuotaGate.Interop.ResultCode]::BodyTooLarge)
        $err.FullyQualifiedErrorId | Should -BeLike 'QuotaGate.BodyTooLarge*'
    }
}

Describe 'Connect-QgDefender with a cloud, a certificate or a token provider' {
    BeforeAll {
        $script:Data = Join-Path $PSScriptRoot '..' '..' '..' 'tests' 'data'
        $options = [QuotaGate.Interop.SimulatorOptions]::new()
        $options.CertificateClients.Add('cert-app', (Get-Content -Raw (Join-Path $script:Data 'app.crt')))
        $script:CertSim = [QuotaGate.Interop.Simulator]::new($options)
        $script:CertParams = @{
            TenantId  = $script:CertSim.TenantId
            ClientId  = 'cert-app'
            BaseUrl   = $script:CertSim.Url
            Authority = $script:CertSim.Authority
        }
    }

    AfterAll {
        $script:CertSim.Dispose()
    }

    AfterEach {
        Disconnect-QgDefender
    }

    It 'accepts every documented cloud name' {
        foreach ($cloud in 'commercial', 'us', 'eu', 'uk', 'au', 'swa', 'ina', 'aea', 'gcc', 'gcc-high', 'dod') {
            $client = Connect-QgDefender -Cloud $cloud -AccessToken (New-TestSecret 'token') -PassThru
            $client | Should -BeOfType ([QuotaGate.Interop.Client]) -Because $cloud
            Disconnect-QgDefender -Client $client
        }
    }

    It 'takes the spellings the library takes, and lists its clouds for completion' {
        $client = Connect-QgDefender -Cloud gcchigh -AccessToken (New-TestSecret 'token') -PassThru
        $client | Should -BeOfType ([QuotaGate.Interop.Client])
        Disconnect-QgDefender -Client $client
        [QuotaGate.Interop.Native]::CloudNames() | Should -Contain 'gcc-high'
    }

    It 'rejects an unknown cloud before calling the library' {
        { Connect-QgDefender -Cloud 'mars' -AccessToken (New-TestSecret 'token') } |
            Should -Throw -ExceptionType ([System.Management.Automation.ParameterBindingException])
    }

    It 'lets -BaseUrl override the cloud''s API host' {
        Connect-QgDefender -Cloud gcc-high -Simulator $script:Sim -BaseUrl $script:Sim.Url -Authority $script:Sim.Authority | Out-Null
        (Invoke-QgRequest /api/machines -Query @{ '$top' = 1 }).value.Count | Should -Be 1
    }

    It 'signs in with a PEM certificate and key file' {
        Connect-QgDefender @script:CertParams -CertificatePath (Join-Path $script:Data 'app.crt') `
            -PrivateKeyPath (Join-Path $script:Data 'app.key') | Out-Null
        (Invoke-QgRequest /api/machines -Query @{ '$top' = 1 }).value.Count | Should -Be 1
    }

    It 'signs in with one PEM file holding both, with RS256' {
        Connect-QgDefender @script:CertParams -CertificatePath (Join-Path $script:Data 'app.pem') -AssertionAlgorithm RS256 | Out-Null
        (Invoke-QgRequest /api/machines -Query @{ '$top' = 1 }).value.Count | Should -Be 1
    }

    It 'signs in with a PFX file and its password' {
        Connect-QgDefender @script:CertParams -CertificatePath (Join-Path $script:Data 'app.pfx') `
            -CertificatePassword (New-TestSecret 'quotagate') | Out-Null
        (Invoke-QgRequest /api/machines -Query @{ '$top' = 1 }).value.Count | Should -Be 1
    }

    It 'resolves a relative certificate path from the current location' {
        Push-Location $script:Data
        try {
            Connect-QgDefender @script:CertParams -CertificatePath ./app.pem | Out-Null
        } finally {
            Pop-Location
        }
        (Invoke-QgRequest /api/machines -Query @{ '$top' = 1 }).value.Count | Should -Be 1
    }

    It 'refuses a key that is not the certificate''s with the library''s message' {
        $err = { Connect-QgDefender @script:CertParams -CertificatePath (Join-Path $script:Data 'app.crt') `
                -PrivateKeyPath (Join-Path $script:Data 'other.key') } | Should -Throw -PassThru
        $err.Exception | Should -BeOfType ([QuotaGate.Interop.QuotaGateException])
        $err.Exception.Code | Should -Be ([QuotaGate.Interop.ResultCode]::InvalidArgument)
        $err.Exception.Message | Should -BeLike '*does not belong*'
    }

    It 'refuses a wrong PFX password without showing it' {
        $err = { Connect-QgDefender @script:CertParams -CertificatePath (Join-Path $script:Data 'app.pfx') `
                -CertificatePassword (New-TestSecret 'not-the-password') } | Should -Throw -PassThru
        $err.Exception.Code | Should -Be ([QuotaGate.Interop.ResultCode]::InvalidArgument)
        $err.Exception.Message | Should -Not -BeLike '*not-the-password*'
    }

    It 'refuses a password with PEM files and a key file with a PFX' {
        { Connect-QgDefender @script:CertParams -CertificatePath (Join-Path $script:Data 'app.pem') -CertificatePassword (New-TestSecret 'x') } |
            Should -Throw '*-CertificatePassword*'
        { Connect-QgDefender @script:CertParams -CertificatePath (Join-Path $script:Data 'app.pfx') -PrivateKeyPath (Join-Path $script:Data 'app.key') } |
            Should -Throw '*-PrivateKeyPath*'
    }

    It 'takes tokens from a script block returning a hashtable' {
        $script:ProviderCalls = 0
        $sim = $script:Sim
        Connect-QgDefender -BaseUrl $sim.Url -TenantId $sim.TenantId -ClientId $sim.ClientId -TokenProvider {
            $script:ProviderCalls++
            @{ AccessToken = $script:Sim.IssueToken($script:Sim.ClientId); ExpiresIn = 3599 }
        } | Out-Null
        (Invoke-QgRequest /api/machines -Query @{ '$top' = 1 }).value.Count | Should -Be 1
        [System.GC]::Collect()
        [System.GC]::WaitForPendingFinalizers()
        (Invoke-QgRequest /api/machines -Query @{ '$top' = 1 }).value.Count | Should -Be 1
        $script:ProviderCalls | Should -Be 1
    }

    It 'takes tokens from a script block returning token and seconds' {
        $sim = $script:Sim
        Connect-QgDefender -BaseUrl $sim.Url -TokenProvider { $script:Sim.IssueToken($script:Sim.ClientId), 3599 } | Out-Null
        (Invoke-QgRequest /api/machines -Query @{ '$top' = 1 }).value.Count | Should -Be 1
    }

    It 'takes a SecureString token with an ExpiresOn date' {
        $sim = $script:Sim
        Connect-QgDefender -BaseUrl $sim.Url -TokenProvider {
            [pscustomobject]@{
                Token     = ConvertTo-SecureString -String $script:Sim.IssueToken($script:Sim.ClientId) -AsPlainText -Force
                ExpiresOn = [datetimeoffset]::UtcNow.AddHours(1)
            }
        } | Out-Null
        (Invoke-QgRequest /api/machines -Query @{ '$top' = 1 }).value.Count | Should -Be 1
    }

    It 'turns an error of the token provider into an authentication error with its message' {
        Connect-QgDefender -BaseUrl $script:Sim.Url -TokenProvider { throw 'the vault is sealed' } | Out-Null
        $err = { Invoke-QgRequest /api/machines } | Should -Throw -PassThru
        $err.Exception.Code | Should -Be ([QuotaGate.Interop.ResultCode]::Auth)
        $err.Exception.Message | Should -BeLike '*the vault is sealed*'
    }

    It 'explains what a token provider must return' {
        Connect-QgDefender -BaseUrl $script:Sim.Url -TokenProvider { 'just a token' } | Out-Null
        $err = { Invoke-QgRequest /api/machines } | Should -Throw -PassThru
        $err.Exception.Code | Should -Be ([QuotaGate.Interop.ResultCode]::Auth)
        $err.Exception.Message | Should -BeLike '*ExpiresIn*'
    }
}

Describe 'Invoke-QgRequest' {
    BeforeAll {
        Connect-QgDefender -Simulator $script:Sim | Out-Null
    }

    It 'returns the JSON answer as objects' {
        $page = Invoke-QgRequest /api/machines -Query @{ '$top' = 5 }
        $page.value.Count | Should -Be 5
        $page.value[0].id | Should -Not -BeNullOrEmpty
        $page.'@odata.nextLink' | Should -Not -BeNullOrEmpty
    }

    It 'writes every item of every page with -All' {
        $items = Invoke-QgRequest /api/machines -Query @{ '$top' = 25 } -All
        $items.Count | Should -Be 120
        ($items.id | Sort-Object -Unique).Count | Should -Be 120
    }

    It 'streams -All so that Select-Object -First stops early' {
        $before = (Get-QgStatistics -Simulator $script:Sim).Requests
        $first = Invoke-QgRequest /api/machines -Query @{ '$top' = 10 } -All | Select-Object -First 3
        $first.Count | Should -Be 3
        ((Get-QgStatistics -Simulator $script:Sim).Requests - $before) | Should -BeLessOrEqual 2
    }

    It 'sends a hashtable body as JSON' {
        $machine = (Invoke-QgRequest /api/machines -Query @{ '$top' = 1 }).value[0]
        $tagged = Invoke-QgRequest -Method POST -Path "/api/machines/$($machine.id)/tags" -Body @{ Value = 'pester'; Action = 'Add' }
        $tagged.machineTags | Should -Contain 'pester'
    }

    It 'sends a string body as is' {
        $machine = (Invoke-QgRequest /api/machines -Query @{ '$top' = 1 }).value[0]
        $tagged = Invoke-QgRequest -Method POST -Path "/api/machines/$($machine.id)/tags" -Body '{"Value":"raw","Action":"Add"}'
        $tagged.machineTags | Should -Contain 'raw'
    }

    It 'turns an HTTP error into an error record with the server''s details' {
        $err = { Invoke-QgRequest /api/machines/does-not-exist -ErrorAction Stop } | Should -Throw -PassThru
        $err.Exception | Should -BeOfType ([QuotaGate.Interop.QuotaGateException])
        $err.Exception.HttpStatus | Should -Be 404
        $err.Exception.ServerCode | Should -Not -BeNullOrEmpty
        $err.Exception.ServerMessage | Should -Not -BeNullOrEmpty
        $err.Exception.RequestId | Should -Not -BeNullOrEmpty
        $err.Exception.Message | Should -BeLike '*404*'
        $err.CategoryInfo.Category | Should -Be 'ObjectNotFound'
        $err.FullyQualifiedErrorId | Should -BeLike 'QuotaGate.Http404*'
        $err.TargetObject | Should -Be '/api/machines/does-not-exist'
    }

    It 'reports an HTTP error of -All with its status, not as a stopped operation' {
        $err = { Invoke-QgRequest /api/machines/does-not-exist -All -ErrorAction Stop } | Should -Throw -PassThru
        $err.Exception | Should -BeOfType ([QuotaGate.Interop.QuotaGateException])
        $err.FullyQualifiedErrorId | Should -BeLike 'QuotaGate.Http404*'
        $err.CategoryInfo.Category | Should -Be 'ObjectNotFound'
    }

    It 'writes a failed item as a non-terminating error and goes on with the next' {
        $paths = [pscustomobject]@{ Path = '/api/machines/does-not-exist' }, [pscustomobject]@{ Path = '/api/machines' }
        $pages = $paths | Invoke-QgRequest -Query @{ '$top' = 1 } -ErrorVariable failures -ErrorAction SilentlyContinue
        @($pages).Count | Should -Be 1
        $pages.value.Count | Should -Be 1
        $failures.Count | Should -Be 1
        $failures[0].FullyQualifiedErrorId | Should -BeLike 'QuotaGate.Http404*'
        $failures[0].TargetObject | Should -Be '/api/machines/does-not-exist'
    }

    It 'returns hashtables with -AsHashtable, with -All as without' {
        $page = Invoke-QgRequest /api/machines -Query @{ '$top' = 2 } -AsHashtable
        $page | Should -BeOfType ([System.Collections.IDictionary])
        $page['value'].Count | Should -Be 2
        $items = Invoke-QgRequest /api/machines -Query @{ '$top' = 50 } -All -AsHashtable
        $items.Count | Should -Be 120
        $items[0] | Should -BeOfType ([System.Collections.IDictionary])
    }

    It 'takes the path from the pipeline by property name' {
        $page = [pscustomobject]@{ Path = '/api/machines' } | Invoke-QgRequest -Query @{ '$top' = 2 }
        $page.value.Count | Should -Be 2
    }

    It 'shows waits for quota and retries with -Verbose' {
        $slow = Start-QgSimulator -Machines 5 -Limit @{ default = '2/1s' }
        try {
            $client = Connect-QgDefender -Simulator $slow -PassThru
            $verbose = 1..4 | ForEach-Object {
                Invoke-QgRequest /api/machines -Client $client -Verbose 4>&1
            } | Where-Object { $_ -is [System.Management.Automation.VerboseRecord] }
            ($verbose.Message -join "`n") | Should -Match 'quotagate .*(quota|429)'
        } finally {
            Disconnect-QgDefender -Client $client
            Stop-QgSimulator -Simulator $slow
            Connect-QgDefender -Simulator $script:Sim | Out-Null
        }
    }

    It 'writes the library''s warnings to the warning stream without -Verbose, and its debug records to debug' {
        # Every simulator 429 states its limit; adopting a lower one is a warning.
        $slow = Start-QgSimulator -Machines 5 -Limit @{ default = '2/1s' }
        try {
            $client = Connect-QgDefender -Simulator $slow -PassThru
            $records = 1..4 | ForEach-Object {
                Invoke-QgRequest /api/machines -Client $client -Debug 3>&1 5>&1
            }
            $warnings = $records | Where-Object { $_ -is [System.Management.Automation.WarningRecord] }
            ($warnings.Message -join "`n") | Should -Match 'quotagate warn: the server allows'
            $debug = $records | Where-Object { $_ -is [System.Management.Automation.DebugRecord] }
            ($debug.Message -join "`n") | Should -Match 'quotagate debug: '
            $leftover = Get-QgLibrary -Verbose -Debug 3>&1 4>&1 5>&1 |
                Where-Object { $_ -is [System.Management.Automation.InformationalRecord] }
            $leftover | Should -BeNullOrEmpty -Because 'each cmdlet writes its own records before it ends'
        } finally {
            Disconnect-QgDefender -Client $client
            Stop-QgSimulator -Simulator $slow
            Connect-QgDefender -Simulator $script:Sim | Out-Null
        }
    }

    It 'shows progress and the log while a call waits for its quota' {
        # Progress cannot be redirected: read it from a runspace's streams.
        $ps = [powershell]::Create()
        try {
            $null = $ps.AddScript({
                    param($Manifest)
                    Import-Module $Manifest
                    $sim = Start-QgSimulator -Machines 1 -Limit @{ default = '1/3s' }
                    $client = Connect-QgDefender -Simulator $sim -PassThru
                    1..2 | ForEach-Object { Invoke-QgRequest /api/machines -Client $client } | Out-Null
                    Disconnect-QgDefender -Client $client
                    Stop-QgSimulator -Simulator $sim
                }).AddArgument($script:ModuleManifest)
            $null = $ps.Invoke()
            $ps.HadErrors | Should -BeFalse
            $waits = $ps.Streams.Progress | Where-Object { $_.Activity -eq 'GET /api/machines' -and $_.StatusDescription -like 'Waiting for*' }
            $waits | Should -Not -BeNullOrEmpty
            ($ps.Streams.Warning.Message -join "`n") | Should -Match 'quotagate warn: '
        } finally {
            $ps.Dispose()
        }
    }

    It 'requires a connection' {
        Disconnect-QgDefender
        try {
            { Invoke-QgRequest /api/machines } | Should -Throw '*Connect-QgDefender*'
        } finally {
            Connect-QgDefender -Simulator $script:Sim | Out-Null
        }
    }
}

Describe 'Invoke-QgHunting' {
    BeforeAll {
        Connect-QgDefender -Simulator $script:Sim | Out-Null
    }

    It 'writes the rows as objects' {
        $rows = Invoke-QgHunting -Query 'DeviceInfo | take 5'
        $rows.Count | Should -Be 5
        $rows[0].DeviceId | Should -Not -BeNullOrEmpty
        $rows[0].DeviceName | Should -Not -BeNullOrEmpty
    }

    It 'runs queries from the pipeline' {
        $rows = 'DeviceInfo | take 2', 'DeviceInfo | take 3' | Invoke-QgHunting
        $rows.Count | Should -Be 5
    }

    It 'reports the service''s error for a bad query' {
        $err = { Invoke-QgHunting -Query ' ' -ErrorAction Stop } | Should -Throw -PassThru
        $err.Exception.HttpStatus | Should -Be 400
        $err.CategoryInfo.Category | Should -Be 'InvalidArgument'
    }

    It 'writes the rows as hashtables with -AsHashtable' {
        $rows = Invoke-QgHunting -Query 'DeviceInfo | take 2' -AsHashtable
        $rows.Count | Should -Be 2
        $rows[0] | Should -BeOfType ([System.Collections.IDictionary])
        $rows[0]['DeviceId'] | Should -Not -BeNullOrEmpty
    }

    It 'keeps keys that differ only by case with -AsHashtable' {
        $row = InModuleScope QuotaGate { ConvertFrom-QgJson '{"Name":"upper","name":"lower"}' -AsHashtable }
        $row['Name'] | Should -Be 'upper'
        $row['name'] | Should -Be 'lower'
        { InModuleScope QuotaGate { ConvertFrom-QgJson '{"Name":"upper","name":"lower"}' } } | Should -Throw
    }

    It 'goes on with the next query after a failed one' {
        $rows = ' ', 'DeviceInfo | take 2' | Invoke-QgHunting -ErrorVariable failures -ErrorAction SilentlyContinue
        $rows.Count | Should -Be 2
        $failures.Count | Should -Be 1
        $failures[0].FullyQualifiedErrorId | Should -BeLike 'QuotaGate.Http400*'
    }
}

Describe 'Runspaces' {
    It 'keeps the log of each runspace to itself, and Remove-Module in one silences no other' {
        $other = [powershell]::Create()
        try {
            $null = $other.AddScript({
                    param($Manifest)
                    Import-Module $Manifest
                    $sim = Start-QgSimulator -Machines 1 -Limit @{ default = '1/1s' }
                    $client = Connect-QgDefender -Simulator $sim -PassThru
                    1..2 | ForEach-Object { Invoke-QgRequest /api/machines -Client $client } | Out-Null
                    Disconnect-QgDefender -Client $client
                    Stop-QgSimulator -Simulator $sim
                    Remove-Module QuotaGate
                }).AddArgument($script:ModuleManifest)
            $null = $other.Invoke()
            ($other.Streams.Warning.Message -join "`n") | Should -Match 'quotagate warn: ' -Because 'the other runspace writes its own records'
        } finally {
            $other.Dispose()
        }
        $leaked = Get-QgLibrary -Verbose -Debug 3>&1 4>&1 5>&1 |
            Where-Object { $_ -is [System.Management.Automation.InformationalRecord] }
        $leaked | Should -BeNullOrEmpty -Because 'another runspace''s records are not written here'

        $slow = Start-QgSimulator -Machines 1 -Limit @{ default = '1/1s' }
        try {
            $client = Connect-QgDefender -Simulator $slow -PassThru
            $warnings = 1..2 | ForEach-Object { Invoke-QgRequest /api/machines -Client $client 3>&1 } |
                Where-Object { $_ -is [System.Management.Automation.WarningRecord] }
            $warnings | Should -Not -BeNullOrEmpty -Because 'the log goes on after another runspace removed the module'
        } finally {
            Disconnect-QgDefender -Client $client
            Stop-QgSimulator -Simulator $slow
        }
    }

    It 'compiles the interop once when runspaces import the module at once' {
        $pwsh = (Get-Process -Id $PID).Path
        $script = "1..4 | ForEach-Object -ThrottleLimit 4 -Parallel { Import-Module '$script:ModuleManifest'; [QuotaGate.Interop.Native].Assembly.FullName } | Sort-Object -Unique"
        $assemblies = & $pwsh -NoProfile -NonInteractive -Command $script
        @($assemblies).Count | Should -Be 1
    }
}

Describe 'New-QgLimiter' {
    It 'takes one calls,seconds pair' {
        $limiter = New-QgLimiter -Rate 100, 60
        $limiter.Rates.Count | Should -Be 1
        $limiter.Rates[0].Calls | Should -Be 100
        $limiter.Rates[0].WindowMs | Should -Be 60000
    }

    It 'takes several pairs and strings' {
        $pairs = New-QgLimiter -Rate (100, 60), (1500, 3600)
        $pairs.Rates.WindowMs | Should -Be @(60000, 3600000)
        $strings = New-QgLimiter -Rate '45/1m', '1500/1h', '10/500ms'
        $strings.Rates.WindowMs | Should -Be @(60000, 3600000, 500)
    }

    It 'widens windows by the margin' {
        $limiter = New-QgLimiter -Rate 10, 1 -MarginMs 250
        (Get-QgStatistics -Limiter $limiter).Windows[0].WindowMs | Should -Be 1250
    }

    It 'rejects what is not a rate' {
        { New-QgLimiter -Rate 1, 2, 3 } | Should -Throw '*not a rate*'
        { New-QgLimiter -Rate 'fast' } | Should -Throw '*not a rate*'
    }

    It 'rejects a zero rate with the library''s message' {
        $err = { New-QgLimiter -Rate 0, 60 } | Should -Throw -PassThru
        $err.Exception.Code | Should -Be ([QuotaGate.Interop.ResultCode]::InvalidArgument)
        $err.CategoryInfo.Category | Should -Be 'InvalidArgument'
    }

    It 'shares buckets with every limiter on the same -Store' {
        $path = Join-Path ([System.IO.Path]::GetTempPath()) "qg-pester-$PID.q"
        Remove-Item $path -ErrorAction SilentlyContinue
        $url = ([System.Uri]$path).AbsoluteUri
        try {
            $a = New-QgLimiter -Rate 2, 60 -Store $url
            $b = New-QgLimiter -Rate 2, 60 -Store $url
            Test-QgLimiter $a 'k' | Should -BeTrue
            Test-QgLimiter $b 'k' | Should -BeTrue
            Test-QgLimiter $a 'k' | Should -BeFalse
            (Get-QgStatistics -Limiter $b -Key 'k').Windows[0].Used | Should -Be 2
            $a.Dispose(); $b.Dispose()
        } finally {
            Remove-Item $path -ErrorAction SilentlyContinue
        }
    }

    It 'rejects a bad -Store URL with the library''s message' {
        $err = { New-QgLimiter -Rate 1, 60 -Store 'ftp://x/y' } | Should -Throw -PassThru
        $err.Exception.Code | Should -Be ([QuotaGate.Interop.ResultCode]::InvalidArgument)
        $err.Exception.Message | Should -BeLike '*file://, redis://, rediss://, redis+cluster:// or rediss+cluster://*'
    }
}

Describe 'Invoke-QgRequest -Deadline' {
    It 'fails with a timeout at once when the quota cannot admit the call in time' {
        $sim = Start-QgSimulator -Machines 5
        try {
            Connect-QgDefender -Simulator $sim -Rate (1, 60)
            $null = Invoke-QgRequest '/api/machines'
            $watch = [System.Diagnostics.Stopwatch]::StartNew()
            $err = { Invoke-QgRequest '/api/machines' -Deadline 0.5 -ErrorAction Stop } | Should -Throw -PassThru
            $watch.ElapsedMilliseconds | Should -BeLessThan 1500
            $err.Exception.Code | Should -Be ([QuotaGate.Interop.ResultCode]::Timeout)
        } finally {
            Disconnect-QgDefender
            Stop-QgSimulator -Simulator $sim
        }
    }
}

Describe 'Invoke-QgLimited' {
    It 'counts the call from admission until the block returns, then from its end' {
        $limiter = New-QgLimiter -Rate '2/300ms'
        $inside = Invoke-QgLimited -Limiter $limiter -Key 'k' {
            (Get-QgStatistics -Limiter $limiter -Key 'k').InFlight
            Test-QgLimiter -Limiter $limiter -Key 'k'
            Test-QgLimiter -Limiter $limiter -Key 'k'
            Start-Sleep -Milliseconds 350
        }
        $inside | Should -Be @(1, $true, $false)
        $stats = Get-QgStatistics -Limiter $limiter -Key 'k'
        $stats.InFlight | Should -Be 0
        $stats.Windows[0].Used | Should -Be 1
    }

    It 'runs the block once per pipeline object, each under a hold of its own' {
        $limiter = New-QgLimiter -Rate '10/1s'
        $out = 1..3 | Invoke-QgLimited -Limiter $limiter -Key 'k' { $_ * 2 }
        $out | Should -Be @(2, 4, 6)
        (Get-QgStatistics -Limiter $limiter -Key 'k').AdmittedCalls | Should -Be 3
    }

    It 'releases the hold when the block throws' {
        $limiter = New-QgLimiter -Rate '5/1s'
        { Invoke-QgLimited -Limiter $limiter -Key 'k' { throw 'the call failed' } } | Should -Throw 'the call failed'
        (Get-QgStatistics -Limiter $limiter -Key 'k').InFlight | Should -Be 0
    }

    It 'fails at once when the deadline cannot be met, without running the block' {
        $limiter = New-QgLimiter -Rate 1, 60
        Wait-QgLimiter -Limiter $limiter -Key 'k'
        $script:ran = $false
        $err = { Invoke-QgLimited -Limiter $limiter -Key 'k' -TimeoutSec 0.5 { $script:ran = $true } } | Should -Throw -PassThru
        $script:ran | Should -BeFalse
        $err.Exception.Code | Should -Be ([QuotaGate.Interop.ResultCode]::Timeout)
    }

    It 'keeps Invoke-RestMethod calls to a jittery server clear of 429s' {
        $sim = Start-QgSimulator -Machines 5 -Limit @{ default = '5/1s' } -InboundJitterMs 60
        try {
            $limiter = New-QgLimiter -Rate '5/1s'
            $headers = @{ Authorization = "Bearer $($sim.IssueToken($sim.ClientId))" }
            $codes = 1..20 | Invoke-QgLimited -Limiter $limiter -Key 'machines' {
                try {
                    $null = Invoke-RestMethod -Uri "$($sim.Url)/api/machines?`$top=1" -Headers $headers
                    200
                } catch {
                    [int]$_.Exception.Response.StatusCode
                }
            }
            $codes | Where-Object { $_ -eq 429 } | Should -BeNullOrEmpty
            $codes.Count | Should -Be 20
        } finally {
            Stop-QgSimulator -Simulator $sim
        }
    }
}

Describe 'Test-QgLimiter' {
    It 'admits up to the rate, then returns $false with the wait in the verbose stream' {
        $limiter = New-QgLimiter -Rate 2, 60
        Test-QgLimiter -Limiter $limiter -Key 'k' | Should -BeTrue
        Test-QgLimiter -Limiter $limiter -Key 'k' | Should -BeTrue
        $output = Test-QgLimiter -Limiter $limiter -Key 'k' -Verbose 4>&1
        $output | Where-Object { $_ -is [bool] } | Should -BeFalse
        ($output | Where-Object { $_ -is [System.Management.Automation.VerboseRecord] }).Message | Should -BeLike '*ms*'
        Test-QgLimiter -Limiter $limiter -Key 'other' | Should -BeTrue
    }

    It 'names UTF-8 keys exactly' {
        $limiter = New-QgLimiter -Rate 1, 60
        Test-QgLimiter $limiter 'Grüße-🔑' | Should -BeTrue
        Test-QgLimiter $limiter 'Grüße-🔒' | Should -BeTrue
        Test-QgLimiter $limiter 'Grüße-🔑' | Should -BeFalse
    }

    It 'fails on a zero cost with the library''s message' {
        $limiter = New-QgLimiter -Rate 1, 60
        { Test-QgLimiter $limiter 'k' -Cost 0 } | Should -Throw
    }
}

Describe 'Wait-QgLimiter' {
    It 'waits for the window' {
        $limiter = New-QgLimiter -Rate '2/500ms'
        $watch = [System.Diagnostics.Stopwatch]::StartNew()
        1..3 | ForEach-Object { Wait-QgLimiter -Limiter $limiter -Key 'k' }
        $watch.ElapsedMilliseconds | Should -BeGreaterOrEqual 400
    }

    It 'passes pipeline objects on with -PassThru' {
        $limiter = New-QgLimiter -Rate '10/1s'
        $out = 1..3 | Wait-QgLimiter -Limiter $limiter -Key 'k' -PassThru
        $out | Should -Be @(1, 2, 3)
        (Get-QgStatistics -Limiter $limiter -Key 'k').AdmittedCalls | Should -Be 3
    }

    It 'fails at once when the deadline cannot be met' {
        $limiter = New-QgLimiter -Rate 1, 60
        Wait-QgLimiter -Limiter $limiter -Key 'k'
        $watch = [System.Diagnostics.Stopwatch]::StartNew()
        $err = { Wait-QgLimiter -Limiter $limiter -Key 'k' -TimeoutSec 0.5 } | Should -Throw -PassThru
        $watch.ElapsedMilliseconds | Should -BeLessThan 400
        $err.Exception.Code | Should -Be ([QuotaGate.Interop.ResultCode]::Timeout)
        $err.CategoryInfo.Category | Should -Be 'OperationTimeout'
    }

    It 'stops promptly when the pipeline is stopped (Ctrl+C)' {
        $ps = [powershell]::Create()
        try {
            $null = $ps.AddScript({
                    param($Manifest)
                    Import-Module $Manifest
                    $limiter = New-QgLimiter -Rate 1, 3600
                    Wait-QgLimiter -Limiter $limiter
                    Wait-QgLimiter -Limiter $limiter
                }).AddArgument($script:ModuleManifest)
            $async = $ps.BeginInvoke()
            Start-Sleep -Milliseconds 1500
            $ps.InvocationStateInfo.State | Should -Be 'Running'
            $watch = [System.Diagnostics.Stopwatch]::StartNew()
            $ps.Stop()
            $watch.ElapsedMilliseconds | Should -BeLessThan 1000
            $ps.InvocationStateInfo.State | Should -Be 'Stopped'
            $null = $async
        } finally {
            $ps.Dispose()
        }
    }

    It 'fails on a closed limiter with the library''s message' {
        $limiter = New-QgLimiter -Rate 1, 60
        $limiter.Close()
        $err = { Wait-QgLimiter -Limiter $limiter } | Should -Throw -PassThru
        $err.Exception.Code | Should -Be ([QuotaGate.Interop.ResultCode]::Closed)
        $err.Exception.Message | Should -BeLike '*closed*'
    }
}

Describe 'Suspend-QgLimiter' {
    It 'pauses the bucket' {
        $limiter = New-QgLimiter -Rate 100, 1
        Suspend-QgLimiter -Limiter $limiter -Key 'k' -Seconds 0.5
        Test-QgLimiter -Limiter $limiter -Key 'k' | Should -BeFalse
        Test-QgLimiter -Limiter $limiter -Key 'other' | Should -BeTrue
        $stats = Get-QgStatistics -Limiter $limiter -Key 'k'
        $stats.Pauses | Should -Be 1
        $stats.PausedForMs | Should -BeGreaterThan 0
    }

    It 'changes nothing with -WhatIf' {
        $limiter = New-QgLimiter -Rate 100, 1
        Suspend-QgLimiter -Limiter $limiter -Key 'k' -Seconds 5 -WhatIf
        Test-QgLimiter -Limiter $limiter -Key 'k' | Should -BeTrue
    }
}

Describe 'Get-QgStatistics' {
    It 'reads a limiter''s bucket' {
        $limiter = New-QgLimiter -Rate (3, 60), (100, 3600)
        Test-QgLimiter $limiter 'k' | Out-Null
        $stats = Get-QgStatistics -Limiter $limiter -Key 'k'
        $stats | Should -BeOfType ([QuotaGate.Interop.BucketStatistics])
        $stats.AdmittedCalls | Should -Be 1
        $stats.Windows.Count | Should -Be 2
        $stats.Windows[0].Used | Should -Be 1
        $stats.Windows[0].Calls | Should -Be 3
    }

    It 'reads the default client''s counters' {
        Connect-QgDefender -Simulator $script:Sim | Out-Null
        Invoke-QgRequest /api/machines -Query @{ '$top' = 1 } | Out-Null
        $stats = Get-QgStatistics
        $stats.Requests | Should -BeGreaterThan 0
        $stats.PSObject.Properties.Name | Should -Contain 'Buckets'
    }

    It 'reads a simulator''s counters' {
        (Get-QgStatistics -Simulator $script:Sim).Requests | Should -BeGreaterThan 0
    }

    It 'names every field of every statistics object in PascalCase, as the limiter''s' {
        Connect-QgDefender -Simulator $script:Sim | Out-Null
        Invoke-QgRequest /api/machines -Query @{ '$top' = 1 } | Out-Null
        $client = Get-QgStatistics
        $sim = Get-QgStatistics -Simulator $script:Sim
        $bucket = @($client.Buckets.Values)[0]
        $names = @($client.PSObject.Properties.Name) + @($sim.PSObject.Properties.Name) +
            @($bucket.PSObject.Properties.Name) + @($bucket.Windows[0].PSObject.Properties.Name)
        foreach ($name in $names) {
            $name | Should -MatchExactly '^[A-Z][A-Za-z0-9]*$'
        }
        $client.TokenRequests | Should -BeGreaterThan 0
        $bucket.Windows[0].WindowMs | Should -BeGreaterThan 0
        # The keys of data maps (bucket keys, statuses) are kept as they are.
        $sim.ByStatus['200'] | Should -BeGreaterThan 0
    }
}

Describe 'Start-QgSimulator and Stop-QgSimulator' {
    It 'starts a simulator with its own limits and stops it from the pipeline' {
        $sim = Start-QgSimulator -Machines 3 -Limit @{ default = (50, 60); hunting = '2/1m' } -TokenLifetimeSec 60 -RetryAfterStyle Milliseconds
        $sim | Should -BeOfType ([QuotaGate.Interop.Simulator])
        $sim.Url | Should -BeLike 'http://127.0.0.1:*'
        $client = Connect-QgDefender -Simulator $sim -MaxAttempts 1 -PassThru
        try {
            (Invoke-QgRequest /api/machines -Client $client -All).Count | Should -Be 3
            $sim | Stop-QgSimulator
            $sim.Handle.IsClosed | Should -BeTrue
            $err = { Invoke-QgRequest /api/machines -Client $client -ErrorAction Stop } | Should -Throw -PassThru
            $err.Exception | Should -BeOfType ([QuotaGate.Interop.QuotaGateException])
        } finally {
            Disconnect-QgDefender -Client $client
            Connect-QgDefender -Simulator $script:Sim | Out-Null
        }
    }

    It 'checks fractional values against fractional bounds, without rounding them first' {
        { Start-QgSimulator -ErrorRate 1.4 -WhatIf } | Should -Throw -ExceptionType ([System.Management.Automation.ParameterBindingException])
        { Start-QgSimulator -ResetRate 1.2 -WhatIf } | Should -Throw -ExceptionType ([System.Management.Automation.ParameterBindingException])
        { Start-QgSimulator -ErrorRate 0.4 -TokenLifetimeSec 0.4 -WhatIf } | Should -Not -Throw
        $limiter = New-QgLimiter -Rate 1, 60
        { Suspend-QgLimiter -Limiter $limiter -Seconds 31536000.4 } | Should -Throw -ExceptionType ([System.Management.Automation.ParameterBindingException])
    }

    It 'starts nothing with -WhatIf' {
        Start-QgSimulator -WhatIf | Should -BeNullOrEmpty
    }

    It 'delays every request on its way in with -InboundJitterMs, and refuses more than 10 s' {
        $sim = Start-QgSimulator -Machines 3 -InboundJitterMs 50
        $client = Connect-QgDefender -Simulator $sim -PassThru
        try {
            1..3 | ForEach-Object { Invoke-QgRequest /api/machines -Client $client | Out-Null }
            $delays = @((ConvertFrom-Json $sim.LogJson()) | ForEach-Object { $_.inbound_delay_ms })
            $delays.Count | Should -Be 4 # the token request waits too
            $delays | ForEach-Object { $_ | Should -BeLessOrEqual 50 }
            @($delays | Sort-Object -Unique).Count | Should -Be 4
        } finally {
            Disconnect-QgDefender -Client $client
            $sim | Stop-QgSimulator
            Connect-QgDefender -Simulator $script:Sim | Out-Null
        }
        { Start-QgSimulator -InboundJitterMs 10001 } | Should -Throw '*inbound_jitter*'
        { Start-QgSimulator -InboundJitterMs -1 } | Should -Throw
    }
}
